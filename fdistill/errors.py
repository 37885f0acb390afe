"""The errors fdistill explains itself. `run.py` prints their message alone and exits with code 2; any
other exception is unexpected and keeps its traceback."""

from __future__ import annotations


class FdistillError(Exception):
    """Base class: the message names what is wrong and how to fix it; no traceback is needed."""


class ConfigError(FdistillError, ValueError):
    """A configuration that cannot run; raised before any expensive work."""


class ArtifactError(FdistillError, RuntimeError):
    """A cached artifact is corrupt, stale or cannot be written."""


class RunDirError(FdistillError, RuntimeError):
    """A run directory holds results of another config, or another process is running in it."""


class TrainingDivergedError(FdistillError, RuntimeError):
    """A training stage produced a non-finite loss/gradient or a loss far above its start."""


class StorageError(FdistillError, OSError):
    """An output or cache location that cannot be written (not a directory, read-only, disk full)."""


class CorruptFileError(FdistillError, RuntimeError):
    """A file fdistill wrote (a checkpoint, a stage record, a log) is damaged; the message names it and the fix."""


class CheckpointError(CorruptFileError):
    """A training checkpoint does not verify against its manifest."""
