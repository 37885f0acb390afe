"""Pipeline stages and the artifact cache (see `runner.py`).

The names are imported on first use (PEP 562), so that ``python -m fdistill.pipeline.cache`` runs its module
without importing it twice (runpy warns when a package has imported the module it is asked to run)."""

from __future__ import annotations

__all__ = ["ArtifactCache", "config_hash", "run_pipeline"]


def __getattr__(name: str):
    if name in ("ArtifactCache", "config_hash"):
        from fdistill.pipeline import cache

        return getattr(cache, name)
    if name == "run_pipeline":
        from fdistill.pipeline.runner import run_pipeline

        return run_pipeline
    raise AttributeError(f"module 'fdistill.pipeline' has no attribute {name!r}")
