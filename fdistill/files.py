"""Atomic file writes shared by every package: a temp file in the target folder, then os.replace, so a
reader (or a resumed run) never sees a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

#: inside a run dir, where `pipeline.on_run_dir_conflict=archive` moves results of another config (written by
#: fdistill.pipeline.rundir, skipped by fdistill.reporting)
REPLACED_DIR = ".replaced"


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """JSON (indented, sorted keys) written atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))
