"""Pipeline stages and the artifact cache (see `runner.py`)."""

from fdistill.pipeline.cache import ArtifactCache, config_hash
from fdistill.pipeline.runner import run_pipeline

__all__ = ["ArtifactCache", "config_hash", "run_pipeline"]
