"""Helpers for the runner tests that start `run.py` as a subprocess: a tiny config, a one-thread
environment (the test machine is small and shared) and the deterministic run-dir lookup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    found = sorted(path for path in output_dir.glob("runs/*/*") if path.name != "latest")
    assert len(found) == 1, f"expected one run dir under {output_dir}, found {found}"
    return found[0]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# A stage of STAGE_STEPS steps checkpointing every CHECKPOINT_EVERY is killed once a checkpoint holds KILL_AFTER.
STAGE_STEPS, CHECKPOINT_EVERY, KILL_AFTER = 40, 5, 10
CHECKPOINT_STATE = "checkpoint/trainer_state.json"


def checkpoint_step(root: Path, work_dir_pattern: str) -> int:
    """Step of the checkpoint in the stage work dir matching `root`/`work_dir_pattern` (0: none yet)."""
    for state in root.glob(f"{work_dir_pattern}/{CHECKPOINT_STATE}"):
        try:
            return json.loads(state.read_text())["step"]
        except (OSError, ValueError):  # swapped away between glob and read
            return 0
    return 0


def _process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, parents first (Linux /proc). torchrun starts its workers in
    sessions of their own, so killing its process group would leave them running."""
    tree, index = [pid], 0
    while index < len(tree):
        for children in Path(f"/proc/{tree[index]}/task").glob("*/children"):
            try:
                tree += [int(child) for child in children.read_text().split()]
            except OSError:  # exited meanwhile
                pass
        index += 1
    return tree


def _kill_tree(pid: int) -> None:
    for member in _process_tree(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_and_kill(args: list[str], root: Path, work_dir_pattern: str, log: Path, *,
                   launcher: list[str] | None = None, timeout: float = 600) -> None:
    """Start run.py, wait until the stage checkpoint reaches KILL_AFTER steps, SIGKILL it and every process
    it started (as a scheduler ending a job would)."""
    with log.open("w") as output:
        process = subprocess.Popen([*(launcher or [str(PYTHON)]), "run.py", *args], cwd=REPO, env=cli_env(),
                                   stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while checkpoint_step(root, work_dir_pattern) < KILL_AFTER:
                assert process.poll() is None, f"run.py exited before the kill:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, "no checkpoint within the timeout"
                time.sleep(0.05)
        finally:
            _kill_tree(process.pid)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert KILL_AFTER <= checkpoint_step(root, work_dir_pattern) < STAGE_STEPS, "the stage finished before the kill"


def resume_step(output: str, stage: str) -> int:
    """N of the "[stage] resuming from step N/M" line a re-run prints."""
    marker = f"[{stage}] resuming from step "
    assert marker in output, f"the re-run did not resume {stage}:\n{output[-3000:]}"
    return int(output.split(marker, 1)[1].split("/", 1)[0])
