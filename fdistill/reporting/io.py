"""Atomic writes for tables and figures (temp file in the target folder + os.replace)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fdistill.files import atomic_temp_file, atomic_write_text

__all__ = ["atomic_write_text", "save_figure"]

FIGURE_FORMATS = ("png", "pdf")


def save_figure(figure, out_stem: str | os.PathLike, formats: Iterable[str] = FIGURE_FORMATS) -> list[Path]:
    """Save a matplotlib figure as ``<out_stem>.<fmt>`` for each format, atomically; returns the paths."""
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = stem.with_name(f"{stem.name}.{fmt}")
        handle, temp_name = atomic_temp_file(target)
        os.close(handle)
        try:
            # No creation date in PDFs: re-running a deterministic script gives identical bytes.
            metadata = {"CreationDate": None} if fmt == "pdf" else None
            figure.savefig(temp_name, format=fmt, bbox_inches="tight", dpi=150, metadata=metadata)
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        written.append(target)
    return written
