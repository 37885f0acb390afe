"""Shared test fixtures: location of ../shared data (tests skip with a reason when it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
SHARED_DATA = SHARED_DIR / "data"


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when the folder is not beside the checkout."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA}: real release files are only on developer/CI machines")
    return SHARED_DATA
