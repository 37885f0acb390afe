"""End to end: the whole pipeline (teacher SFT → student init → pre-distillation → teacher sampling →
distillation → evaluation) on the tiny pairs and the synthetic task, for every divergence, both
regimes and λ ∈ {0, 0.5, 1}. Shared artifacts live in one cache for the session, so only distillation
and evaluation run per case (as in a real sweep)."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from fdistill.config import register_configs
from fdistill.divergences import available_divergences
from fdistill.pipeline import run_pipeline

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
BASELINES = ["mle", "seqkd", "engine", "word_kd", "predistill"]
TINY = [
    "dataset.params.num_train=96", "dataset.params.num_validation=8", "dataset.params.num_test=12",
    "pipeline.teacher_sft.max_steps=6", "pipeline.teacher_sft.batch_size=8",
    "pipeline.predistill.max_steps=3", "pipeline.predistill.batch_size=8",
    "pipeline.distill.max_steps=2", "pipeline.distill.batch_size=4", "pipeline.distill.log_every=1",
    "pipeline.teacher_sampling.batch_size=32", "pipeline.evaluate.batch_size=12",
    "pipeline.evaluate.analysis_limit=6", "pipeline.teacher_sampling.decoding.max_new_tokens=16",
    "pipeline.distill.student_sampling.max_new_tokens=16", "pipeline.evaluate.decoding.max_new_tokens=16",
]


@pytest.fixture(scope="session")
def artifact_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fdistill_cache")


def run_case(tmp_path: Path, cache: Path, overrides: list[str]) -> tuple[dict, Path]:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.root={tmp_path}", f"paths.cache_dir={cache}", *TINY, *overrides])
    run_dir = tmp_path / "run"
    metrics = run_pipeline(cfg, run_dir)
    return metrics, run_dir


def assert_complete_run(metrics: dict, run_dir: Path, distilled: bool = True) -> None:
    stored = json.loads((run_dir / "metrics.json").read_text())
    assert set(stored["metrics"]) == set(metrics)
    for key in ("bleu", "validity_rate", "synthetic_sample/validity_rate", "risk/likelihood_risk_per_token",
                "risk/coverage_risk_per_token", "teacher_dist", "exposure/ex_error_percent"):
        assert key in stored["metrics"], key
        assert math.isfinite(stored["metrics"][key]), (key, stored["metrics"][key])
    predictions = (run_dir / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 12
    for stage in ("teacher_sft", "student_init", "predistill", "teacher_sampling", "distill", "evaluate"):
        assert (run_dir / "stages" / f"{stage}.json").is_file(), stage
    if distilled:
        rows = list(csv.DictReader((run_dir / "distill" / "log.csv").open()))
        assert [int(r["step"]) for r in rows] == [1, 2]
        assert all(math.isfinite(float(r["loss"])) for r in rows)
        assert (run_dir / "student" / "model.safetensors").is_file()


FAST_CASES = [
    ("tiny_bart", ["divergence=tvd"]),
    ("tiny_gpt2", ["divergence=js", "divergence.params.mixture=prefix"]),
    ("tiny_bart", ["divergence=jsd", "divergence.params.beta=0.9", "pipeline.distill.regime=gkd",
                   "pipeline.distill.lam=0.5"]),
    ("tiny_t5", ["divergence=rkl"]),
]


@pytest.mark.parametrize(("pair", "overrides"), FAST_CASES, ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_pipeline_runs_end_to_end(tmp_path, artifact_cache, pair, overrides):
    metrics, run_dir = run_case(tmp_path, artifact_cache, [f"pair={pair}", *overrides])
    assert_complete_run(metrics, run_dir)


def test_rerun_skips_finished_stages(tmp_path, artifact_cache, caplog):
    caplog.set_level(logging.INFO, logger="fdistill")
    run_case(tmp_path, artifact_cache, ["pair=tiny_bart", "divergence=kl"])
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())
    caplog.clear()
    run_case(tmp_path, artifact_cache, ["pair=tiny_bart", "divergence=kl"])
    assert "[distill] already complete" in caplog.text and "[evaluate] already complete" in caplog.text
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == first


@pytest.mark.slow
@pytest.mark.parametrize("pair", ["tiny_bart", "tiny_gpt2"])
@pytest.mark.parametrize("divergence", sorted(available_divergences()) + BASELINES)
def test_every_divergence_fdistill_regime(tmp_path, artifact_cache, pair, divergence):
    metrics, run_dir = run_case(tmp_path, artifact_cache, [f"pair={pair}", f"divergence={divergence}"])
    assert_complete_run(metrics, run_dir, distilled=divergence != "predistill")


@pytest.mark.slow
@pytest.mark.parametrize("pair", ["tiny_bart", "tiny_gpt2"])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("divergence", ["kl", "rkl", "jsd"])
def test_gkd_lambda_grid(tmp_path, artifact_cache, pair, lam, divergence):
    metrics, run_dir = run_case(tmp_path, artifact_cache, [
        f"pair={pair}", f"divergence={divergence}", "pipeline.distill.regime=gkd", f"pipeline.distill.lam={lam}"])
    assert_complete_run(metrics, run_dir)
    on_policy = [float(r["on_policy"]) for r in csv.DictReader((run_dir / "distill" / "log.csv").open())]
    if lam in (0.0, 1.0):
        assert on_policy == [lam, lam]


def test_evaluation_only_settings_reuse_the_shared_artifacts(tmp_path, artifact_cache):
    """Artifacts are keyed by the training pairs' content: a test-side setting retrains nothing."""
    run_case(tmp_path / "all_refs", artifact_cache, ["pair=tiny_bart", "divergence=kl"])
    cached = {kind: sorted(p.name for p in (artifact_cache / kind).iterdir())
              for kind in ("teacher", "student_init", "predistill", "teacher_samples")}
    metrics, run_dir = run_case(tmp_path / "one_ref", artifact_cache,
                                ["pair=tiny_bart", "divergence=kl", "dataset.params.eval_references=sampled"])
    assert {kind: sorted(p.name for p in (artifact_cache / kind).iterdir()) for kind in cached} == cached
    first = json.loads((run_dir / "predictions.jsonl").read_text().splitlines()[0])
    assert len(first["references"]) == 1 and "bleu" in metrics
