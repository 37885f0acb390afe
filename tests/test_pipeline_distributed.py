"""A tiny distillation in 2 CPU processes (torchrun + gloo): every stage runs under DDP (teacher SFT and
pre-distillation on both ranks, teacher sampling and evaluation on the main one) without deadlock, and
both processes end with the same student and the same GKD λ coin flips."""

from __future__ import annotations

import random

import pytest
from pipeline_cli import (
    CHECKPOINT_EVERY,
    KILL_AFTER,
    STAGE_STEPS,
    TINY_OVERRIDES,
    TORCHRUN,
    path_overrides,
    read_json,
    resume_step,
    run_cli,
    single_run_dir,
    start_and_kill,
)

from fdistill.training.loop import micro_step_seed

DISTILL_STEPS, LAMBDA, SEED = 8, 0.5, 0
TWO_PROCESSES = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2"]


@pytest.mark.slow
def test_two_processes_train_the_same_student(tmp_path):
    # GKD on teacher samples: exercises the main-only sampling stage and the per-step λ coin
    config = [*TINY_OVERRIDES, "pipeline.cpu=true", f"seed={SEED}", "divergence=jsd", "pipeline.distill.regime=gkd",
              f"pipeline.distill.lam={LAMBDA}", "pipeline.distill.fixed_data=teacher_samples",
              f"pipeline.distill.max_steps={DISTILL_STEPS}", "pipeline.distill.checkpoint_every=4"]
    run_cli([*config, *path_overrides(tmp_path / "out", tmp_path / "cache")],
            launcher=TWO_PROCESSES, timeout=900)

    run_dir = single_run_dir(tmp_path / "out")
    records = [read_json(run_dir / "distill" / f"process_{rank}.json") for rank in (0, 1)]
    assert [record["num_processes"] for record in records] == [2, 2]
    assert records[0]["param_sha256"] == records[1]["param_sha256"], "the processes hold different students"

    expected_coins = [step for step in range(DISTILL_STEPS)
                      if random.Random(micro_step_seed(SEED, step)).random() < LAMBDA]
    assert 0 < len(expected_coins) < DISTILL_STEPS  # both kinds of batch occur
    assert records[0]["on_policy_micro_steps"] == records[1]["on_policy_micro_steps"] == expected_coins

    assert "bleu" in read_json(run_dir / "metrics.json")["metrics"]
    samples = [path for path in (tmp_path / "cache" / "teacher_samples").iterdir() if path.suffix != ".lock"]
    assert len(samples) == 1 and not samples[0].name.endswith(".partial")


@pytest.mark.slow
def test_two_process_run_killed_mid_distillation_resumes_on_both_processes(tmp_path):
    args = [*TINY_OVERRIDES, "pipeline.cpu=true", "divergence=tvd", f"pipeline.distill.max_steps={STAGE_STEPS}",
            f"pipeline.distill.checkpoint_every={CHECKPOINT_EVERY}", "pipeline.evaluate.analyses=[]",
            *path_overrides(tmp_path / "out", tmp_path / "cache")]
    start_and_kill(args, tmp_path / "out", "runs/*/*/distill", tmp_path / "killed.log", launcher=TWO_PROCESSES)

    resumed = run_cli(args, launcher=TWO_PROCESSES, timeout=900)
    assert resume_step(resumed.stdout + resumed.stderr, "distill") >= KILL_AFTER
    run_dir = single_run_dir(tmp_path / "out")
    records = [read_json(run_dir / "distill" / f"process_{rank}.json") for rank in (0, 1)]
    assert records[0]["param_sha256"] == records[1]["param_sha256"]
    assert "bleu" in read_json(run_dir / "metrics.json")["metrics"]
