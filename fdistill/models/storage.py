"""Atomic directory writes: build into a temporary sibling directory, then rename it into place, so a
reader never sees a half-written tokenizer or checkpoint (an interrupted run leaves only a `.tmp` dir)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fdistill.files import apply_umask


@contextmanager
def staged_directory(target: str | os.PathLike, *, replace: bool) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; when the block succeeds, rename it to `target`.

    replace=True: an existing `target` is replaced. replace=False: if `target` exists by then (another
    process finished first), the staged copy is discarded and the existing one kept.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield staging
        apply_umask(staging)  # mkdtemp's 0700 and safetensors' 0600: others sharing the cache could not read them
        if replace and target.exists():
            shutil.rmtree(target)
        try:
            os.rename(staging, target)
        except OSError:
            if replace or not target.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
