"""Resumability: a run killed at any point continues from its last checkpoint (optimizer, scheduler,
RNG, data position) without redoing finished stages, and ends where an uninterrupted run ends.

The loop-level tests run in-process in seconds; the end-to-end test SIGKILLs `run.py` (slow)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from pipeline_cli import (
    CHECKPOINT_EVERY,
    KILL_AFTER,
    STAGE_STEPS,
    TINY_OVERRIDES,
    path_overrides,
    read_json,
    resume_step,
    run_cli,
    single_run_dir,
    start_and_kill,
)

from fdistill.config import OptimConfig, PipelineConfig, TrainStageConfig
from fdistill.parallel import Parallel
from fdistill.training.loop import CHECKPOINT, STATE_FILE, parameter_digest, train
from fdistill.training.optim import linear_warmup_cooldown


class CrashAt(Exception):
    """Raised by the loss function to simulate a process dying in the middle of a stage."""


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights in every "process"
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))


def _loss_fn(crash_at: int | None = None):
    """Regression on fixed data; micro-step m reads row m (a pure function of the step, like StepSampler)."""
    generator = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(64, 4, generator=generator), torch.randn(64, 1, generator=generator)

    def loss_fn(model, micro_step: int):
        if micro_step == crash_at:
            raise CrashAt(micro_step)
        row = slice(micro_step % 64, micro_step % 64 + 1)
        return ((model(inputs[row]) - targets[row]) ** 2).mean(), {}

    return loss_fn


def _stage(max_steps: int, grad_accum: int = 1) -> TrainStageConfig:
    # warmup and cooldown make the learning rate depend on the scheduler state
    return TrainStageConfig(max_steps=max_steps, batch_size=1, grad_accum=grad_accum, checkpoint_every=3, log_every=1,
                            optim=OptimConfig(lr=0.05, warmup_ratio=0.3, cooldown_ratio=0.5))


def _run_stages(work_dir: Path, crash_at: int | None) -> torch.nn.Module:
    """A new "process": a first stage (as teacher SFT would be), then the stage under test."""
    accelerator = Accelerator(cpu=True)
    train(parallel=_parallel(accelerator), model=_tiny_model(), loss_fn=_loss_fn(), stage=_stage(4), total_steps=4,
          work_dir=work_dir / "first", desc="first")
    accelerator.free_memory()
    return _run_second_stage(accelerator, work_dir, crash_at)


def _parallel(accelerator: Accelerator) -> Parallel:
    return Parallel(accelerator, PipelineConfig())


def _run_second_stage(accelerator: Accelerator, work_dir: Path, crash_at: int | None) -> torch.nn.Module:
    return train(parallel=_parallel(accelerator), model=_tiny_model(), loss_fn=_loss_fn(crash_at), stage=_stage(10),
                 total_steps=10, work_dir=work_dir / "second", desc="second").model


def test_resumed_stage_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fdistill")
    reference = parameter_digest(_run_stages(tmp_path / "straight", crash_at=None))

    with pytest.raises(CrashAt):
        _run_stages(tmp_path / "killed", crash_at=7)  # checkpoints at steps 3 and 6; step 7 dies
    assert read_json(tmp_path / "killed" / "second" / CHECKPOINT / STATE_FILE)["step"] == 6
    torch.manual_seed(12345)  # a restarted process has another RNG state: the checkpoint must restore it
    # the restarted process takes the first stage from the cache: only the second stage is trained
    resumed = _run_second_stage(Accelerator(cpu=True), tmp_path / "killed", crash_at=None)

    assert "[second] resuming from step 6/10" in caplog.text
    assert parameter_digest(resumed) == reference
    with (tmp_path / "killed" / "second" / "log.csv").open() as handle:  # step 7, logged before the crash, once
        assert [int(row["step"]) for row in csv.DictReader(handle)] == list(range(1, 11))


def test_gradient_accumulation_steps_the_scheduler_once_per_optimizer_step(tmp_path):
    accelerator = Accelerator(cpu=True)
    stage = _stage(4, grad_accum=3)
    train(parallel=_parallel(accelerator), model=_tiny_model(), loss_fn=_loss_fn(), stage=stage, total_steps=4,
          work_dir=tmp_path,
          desc="accumulate")
    with (tmp_path / "log.csv").open() as handle:
        logged = [float(row["lr"]) for row in csv.DictReader(handle)]
    factor = linear_warmup_cooldown(4, stage.optim.warmup_ratio, stage.optim.cooldown_ratio)
    # after optimizer step s the scheduler has stepped s times (not 3·s: one step per 3 micro-steps)
    assert logged == pytest.approx([stage.optim.lr * factor(step) for step in range(1, 5)])
    assert read_json(tmp_path / CHECKPOINT / STATE_FILE)["scheduler"]["last_epoch"] == 4


def test_a_checkpoint_left_by_a_crash_between_swap_and_cleanup_does_not_block_the_next_save(tmp_path):
    def run(total_steps: int) -> None:  # each call is a new process training the same stage
        accelerator = Accelerator(cpu=True)
        train(parallel=_parallel(accelerator), model=_tiny_model(), loss_fn=_loss_fn(),
              stage=_stage(total_steps), total_steps=total_steps, work_dir=tmp_path, desc="stage")

    run(3)
    # a crash after the new `checkpoint` was published and before the old one (set aside) was deleted
    (tmp_path / f"{CHECKPOINT}.old").mkdir()
    (tmp_path / f"{CHECKPOINT}.old" / STATE_FILE).write_text(json.dumps({"step": 0}))
    run(6)
    assert read_json(tmp_path / CHECKPOINT / STATE_FILE)["step"] == 6
    assert not (tmp_path / f"{CHECKPOINT}.old").exists()


# ---------------------------------------------------------------------------------------------- end to end


def _cache_snapshot(cache_dir: Path) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every cached file; lock files are touched by every lookup and left out."""
    return {str(path.relative_to(cache_dir)): (path.stat().st_mtime_ns, path.stat().st_size)
            for path in cache_dir.rglob("*") if path.is_file() and path.suffix != ".lock"}


@pytest.mark.slow
def test_sigkilled_run_resumes_without_redoing_stages_and_matches_an_uninterrupted_run(tmp_path):
    cache_dir = tmp_path / "cache"
    config = [*TINY_OVERRIDES, f"pipeline.distill.max_steps={STAGE_STEPS}",
              f"pipeline.distill.checkpoint_every={CHECKPOINT_EVERY}", "divergence=tvd"]  # teacher + student samples
    killed_args = [*config, *path_overrides(tmp_path / "killed", cache_dir)]

    start_and_kill(killed_args, tmp_path / "killed", "runs/*/*/distill", tmp_path / "killed.log")
    run_dir = single_run_dir(tmp_path / "killed")
    assert not (run_dir / "metrics.json").exists()
    cached_before = _cache_snapshot(cache_dir)
    assert {path.split("/")[0] for path in cached_before} >= {"tiny", "teacher", "student_init", "predistill",
                                                               "teacher_samples"}

    resumed = run_cli(killed_args)  # the same command
    output = resumed.stdout + resumed.stderr
    assert f"/{STAGE_STEPS} ({run_dir / 'distill' / CHECKPOINT})" in output
    assert resume_step(output, "distill") >= KILL_AFTER
    for stage_progress in ("teacher_sft:", "predistill:", "teacher sampling:"):
        assert stage_progress not in output, f"the resumed run redid a finished stage ({stage_progress})"
    assert _cache_snapshot(cache_dir) == cached_before, "the resumed run rewrote a cached artifact"
    metrics = read_json(run_dir / "metrics.json")["metrics"]
    assert "bleu" in metrics and (run_dir / "stages" / "evaluate.json").is_file()

    # the same config without interruption (another output dir, same run-dir name, same cache)
    run_cli([*config, *path_overrides(tmp_path / "straight", cache_dir)])
    straight_dir = single_run_dir(tmp_path / "straight")
    assert straight_dir.name == run_dir.name
    assert read_json(run_dir / "distill" / "process_0.json")["param_sha256"] == \
        read_json(straight_dir / "distill" / "process_0.json")["param_sha256"]
    assert read_json(straight_dir / "metrics.json")["metrics"] == metrics


@pytest.mark.slow
def test_run_killed_during_teacher_fine_tuning_resumes_the_cached_build(tmp_path):
    """A shared-artifact stage resumes in its `.partial` cache dir and is then published as usual."""
    cache_dir = tmp_path / "cache"
    args = [*TINY_OVERRIDES, f"pipeline.teacher_sft.max_steps={STAGE_STEPS}",
            f"pipeline.teacher_sft.checkpoint_every={CHECKPOINT_EVERY}", "pipeline.distill.max_steps=2",
            "divergence=kl", "pipeline.evaluate.analyses=[]", *path_overrides(tmp_path / "out", cache_dir)]
    start_and_kill(args, cache_dir, "teacher/*.partial", tmp_path / "killed.log")
    assert not list(cache_dir.glob("teacher/*/artifact.json"))

    resumed = run_cli(args)
    assert resume_step(resumed.stdout + resumed.stderr, "teacher_sft") >= KILL_AFTER
    (teacher,) = cache_dir.glob("teacher/*/artifact.json")
    assert not list(cache_dir.glob("teacher/*.partial"))
    with (teacher.parent / "log.csv").open() as handle:  # every step logged once across the two processes
        assert [int(row["step"]) for row in csv.DictReader(handle)] == list(range(20, STAGE_STEPS + 1, 20))
    assert "bleu" in read_json(single_run_dir(tmp_path / "out") / "metrics.json")["metrics"]
