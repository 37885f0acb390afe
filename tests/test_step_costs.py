"""Where a step's time goes (log.csv columns, the stage summary), the fused lm-head path chosen by size
(`fused_lm_head: auto`), and run dirs a person can find (readable names, `latest`, "already complete")."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import pytest
import torch
from pipeline_cli import PYTHON, REPO, cli_env
from test_reliability import TINY, run

from fdistill.config import run_dir_slug
from fdistill.divergences import get_divergence
from fdistill.models import SeqCollator, build_word_tokenizer
from fdistill.training.objectives import TokenLoss


# ------------------------------------------------------------------ fused_lm_head: auto
def _pair(tmp_path: Path):
    from parallel_worker import WORDS, batch_of, tiny_llama

    tokenizer = build_word_tokenizer(WORDS, tmp_path / "tok")
    batch = batch_of(SeqCollator(tokenizer, False, 16, 8), range(6))
    return tiny_llama(tokenizer, 0), tiny_llama(tokenizer, 1), batch


@pytest.mark.parametrize(("threshold_mib", "fused"), [(0.0, True), (1024.0, False)])
def test_auto_fuses_above_the_threshold_and_materialises_below_it(tmp_path, caplog, threshold_mib, fused):
    student, teacher, batch = _pair(tmp_path)
    div = get_divergence("jsd", beta=0.3)
    loss = TokenLoss(teacher, fused="auto", fused_min_bytes=int(threshold_mib * 2**20), stage="distill")
    with caplog.at_level(logging.INFO, logger="fdistill"):
        value, _, _ = loss.divergence(div, "both", student, batch, "token", ce_weight=0.5)
        loss.divergence(div, "both", student, batch, "token", ce_weight=0.5)
    said = [record.getMessage() for record in caplog.records if "lm head" in record.getMessage()]
    assert len(said) == 1  # once per stage
    assert said[0].startswith("[distill] lm head: " + ("fused" if fused else "materialised logits"))
    assert "fused_lm_head=auto" in said[0] and "positions x" in said[0]
    forced, _, _ = TokenLoss(teacher, fused=fused).divergence(div, "both", student, batch, "token", ce_weight=0.5)
    other, _, _ = TokenLoss(teacher, fused=not fused).divergence(div, "both", student, batch, "token", ce_weight=0.5)
    assert float(value.detach()) == float(forced.detach())  # the same path, to the bit
    torch.testing.assert_close(value, other, rtol=1e-5, atol=1e-6)  # and both exact


def test_auto_switches_when_the_batch_grows_and_says_so(tmp_path, caplog):
    student, teacher, batch = _pair(tmp_path)
    small = {key: value[:1] for key, value in batch.items()}
    threshold = (small["labels"].numel() + 1) * student.config.vocab_size * 4 * 3  # between the two batch sizes
    loss = TokenLoss(teacher, fused="auto", fused_min_bytes=threshold, stage="distill")
    div = get_divergence("kl")
    with caplog.at_level(logging.INFO, logger="fdistill"):
        for step_batch in (small, small, batch, batch):
            loss.divergence(div, "both", student, step_batch, "token")
    said = [record.getMessage() for record in caplog.records if "lm head" in record.getMessage()]
    assert [message.split(" (")[0] for message in said] == ["[distill] lm head: materialised logits",
                                                           "[distill] lm head: fused, the logits never exist"]


def test_fused_lm_head_accepts_auto_true_false_only():
    from test_parallel import _validate

    from fdistill.errors import ConfigError

    assert _validate([]).pipeline.fused_lm_head == "auto"
    assert str(_validate(["pipeline.fused_lm_head=false"]).pipeline.fused_lm_head).lower() == "false"
    with pytest.raises(ConfigError, match="pipeline.fused_lm_head"):
        _validate(["pipeline.fused_lm_head=sometimes"])


# ------------------------------------------------------------------ where the time goes
def test_log_csv_says_where_each_window_went_and_the_stage_sums_it_up(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="fdistill"):
        run(tmp_path, ["divergence=tvd", "pipeline.distill.max_steps=4", "pipeline.distill.log_every=2"])
    rows = list(csv.DictReader((tmp_path / "run" / "distill" / "log.csv").open()))
    assert [int(row["step"]) for row in rows] == [2, 4]
    for row in rows:
        time.strptime(row["wall_time"], "%Y-%m-%dT%H:%M:%SZ")
        assert float(row["step_seconds"]) > 0 and float(row["target_tokens_per_second"]) > 0
        shares = [float(row[f"share_{name}"]) for name in ("generation", "teacher_forward", "forward_backward",
                                                          "optimizer")]
        assert all(0 <= share <= 1 for share in shares) and sum(shares) <= 1 + 1e-9
        assert float(row["share_generation"]) > 0  # TVD's student half samples on-policy every step
        assert float(row["share_teacher_forward"]) > 0
    summary = [record.getMessage() for record in caplog.records if record.getMessage().startswith("distill: 4 steps")]
    assert len(summary) == 1 and "s/step" in summary[0] and "generation" in summary[0]
    assert "target tok/s; checkpoints" in summary[0]
    stage = __import__("json").loads((tmp_path / "run" / "stages" / "distill.json").read_text())
    assert stage["steps"]["steps"] == 4 and stage["steps"]["seconds_per_step"] > 0


# ------------------------------------------------------------------ run dirs a person can find
def test_run_dir_names_are_readable_pairs_then_a_short_hash():
    assert run_dir_slug("") == "default"
    slug = run_dir_slug("dataset.params.num_train=200,divergence=tvd,pipeline.distill.lam=0.5")
    assert slug.startswith("num_train=200,divergence=tvd,lam=0.5-") and len(slug.rsplit("-", 1)[1]) == 8
    # a key shared by two overrides keeps enough of its path to tell them apart
    assert run_dir_slug("a.lr=1,b.lr=2").startswith("a.lr=1,b.lr=2-")
    assert run_dir_slug("dataset.metrics=[bleu,rouge1],seed=3").startswith("metrics=[bleu,rouge1],seed=3-")
    long = ",".join(f"pipeline.stage{index}.max_steps={index}" for index in range(30))
    assert len(run_dir_slug(long)) <= 120 and run_dir_slug(long) != run_dir_slug(long + ",seed=1")
    assert run_dir_slug("divergence=kl") != run_dir_slug("divergence=rkl")


def _cli(tmp_path: Path, *args: str):
    import subprocess

    return subprocess.run([str(PYTHON), "run.py", *TINY, "pipeline.evaluate.analyses=[]",
                           f"paths.output_dir={tmp_path}/out", f"paths.cache_dir={tmp_path}/cache", *args], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=600)


def test_a_run_says_where_it_is_links_latest_and_an_identical_rerun_says_it_is_complete(tmp_path):
    first = _cli(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = [path for path in (tmp_path / "out" / "runs").glob("*/*") if path.name != "latest"]
    assert len(runs) == 1
    run_dir = runs[0]
    assert f"run dir: {run_dir}" in first.stdout
    latest = run_dir.parent / "latest"
    assert latest.is_symlink() and latest.resolve() == run_dir.resolve()
    again = _cli(tmp_path)
    assert again.returncode == 0
    assert f"already complete: {run_dir} (metrics.json); to evaluate again" in again.stdout
    assert "distill: " not in again.stdout  # nothing trained again
