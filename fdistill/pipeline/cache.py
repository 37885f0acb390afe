"""Content-addressed artifact cache shared by runs and sweeps.

An artifact (fine-tuned teacher, initialised or pre-distilled student, offline teacher samples) is
stored under ``<cache_dir>/<kind>/<key>`` where ``key`` hashes the config that determines it. It is
built in ``<key>.partial`` (which may hold resumable checkpoints), then published by writing
``artifact.json`` and renaming the directory, all under a file lock: concurrent jobs of a multirun
wait for the one building it instead of building it twice, and a partial or stale directory is never
returned (``artifact.json`` must exist and carry the same key and spec).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from fdistill.files import write_json_atomic

MANIFEST = "artifact.json"


def config_hash(spec: Any, length: int = 16) -> str:
    """Stable hash of a JSON-serialisable spec (key order does not matter)."""
    blob = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Artifact:
    kind: str
    key: str
    path: Path
    spec: dict


class ArtifactCache:
    """Build-once, lock-guarded directory cache keyed by config hashes."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def _paths(self, kind: str, key: str) -> tuple[Path, Path, Path]:
        base = self.root / kind
        return base / key, base / f"{key}.partial", base / f"{key}.lock"

    def lookup(self, kind: str, spec: dict) -> Artifact | None:
        """The published artifact for `spec`, or None (partial or mismatching dirs are ignored)."""
        key = config_hash(spec)
        final, _, _ = self._paths(kind, key)
        manifest = final / MANIFEST
        if not manifest.is_file():
            return None
        stored = json.loads(manifest.read_text())
        if stored.get("key") != key or stored.get("spec") != json.loads(json.dumps(spec, default=str)):
            raise RuntimeError(
                f"artifact {final} does not match its key (stale or hand-edited cache entry); delete the directory "
                "and re-run"
            )
        return Artifact(kind, key, final, spec)

    def get_or_build(self, kind: str, spec: dict, build: Callable[[Path], None], accelerator=None) -> Artifact:
        """Return the artifact for `spec`, building it with `build(work_dir)` if needed.

        `build` writes into `work_dir` (``<key>.partial``), which survives a crash so the builder can
        resume from checkpoints it left there; on success the directory is published atomically.
        With an `accelerate.Accelerator` of several processes, only the main process takes the file
        lock and publishes, while every process runs `build` (e.g. a DDP training stage).
        """
        key = config_hash(spec)
        final, partial, lock_path = self._paths(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        # No lookup before the lock: with several processes, one could find an artifact that another
        # job publishes a moment later while the others miss it, and they would no longer meet at the
        # same barriers. Under the main process's lock every process sees the same cache state.
        is_main = accelerator is None or accelerator.is_main_process
        barrier = accelerator.wait_for_everyone if accelerator is not None else (lambda: None)
        lock = FileLock(str(lock_path)) if is_main else nullcontext()
        with lock:
            barrier()  # the main process holds the lock now: nobody else publishes this key meanwhile
            found = self.lookup(kind, spec)
            if found is None:
                if is_main:
                    if final.exists():  # a directory without a valid manifest: never used, rebuilt
                        shutil.rmtree(final)
                    partial.mkdir(parents=True, exist_ok=True)
                    write_json_atomic(partial / "spec.json", {"key": key, "spec": spec})
                barrier()
                build(partial)
                barrier()
                if is_main:
                    write_json_atomic(partial / MANIFEST, {"key": key, "spec": spec})
                    os.replace(partial, final)
            barrier()
        return Artifact(kind, key, final, spec)


def write_stage_marker(run_dir: Path, stage: str, info: dict) -> None:
    """Mark a run-level stage finished: ``<run_dir>/stages/<stage>.json``, written atomically last."""
    write_json_atomic(run_dir / "stages" / f"{stage}.json", info)


def read_stage_marker(run_dir: Path, stage: str) -> dict | None:
    path = run_dir / "stages" / f"{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else None
