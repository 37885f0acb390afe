"""Helpers for the runner tests that start `run.py` as a subprocess: a tiny config, a one-thread
environment (the test machine is small and shared) and the deterministic run-dir lookup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = Path(sys.executable)
TORCHRUN = PYTHON.parent / "torchrun"

# Every stage runs, each for a few steps on a small synthetic split (tens of seconds on one core).
TINY_OVERRIDES = [
    "dataset.params.num_train=200",
    "dataset.params.num_test=30",
    "pipeline.teacher_sft.max_steps=20",
    "pipeline.teacher_sft.batch_size=8",
    "pipeline.predistill.max_steps=10",
    "pipeline.predistill.batch_size=8",
    "pipeline.distill.batch_size=8",
    "pipeline.teacher_sampling.batch_size=200",
    "pipeline.evaluate.analysis_limit=10",
]


def cli_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HYDRA_FULL_ERROR="1", PYTHONUNBUFFERED="1")
    env.pop("FDISTILL_CACHE", None)
    return env


def path_overrides(output_dir: Path, cache_dir: Path) -> list[str]:
    """Output and cache dirs are excluded from the run-dir name, so runs differing only there share a slug."""
    return [f"paths.output_dir={output_dir}", f"paths.cache_dir={cache_dir}"]


def run_cli(args: list[str], *, launcher: list[str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `run.py args` (optionally under a launcher such as torchrun) to completion; output captured."""
    command = [*(launcher or [str(PYTHON)]), "run.py", *args]
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def single_run_dir(output_dir: Path) -> Path:
    """The one run dir (``<output_dir>/runs/<run_name>/<slug>``) a single command created."""
    found = sorted(output_dir.glob("runs/*/*"))
    assert len(found) == 1, f"expected one run dir under {output_dir}, found {found}"
    return found[0]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
