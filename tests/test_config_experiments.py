"""Every experiment file composes into a complete, range-checked config; `--cfg job` prints it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fdistill.config import register_configs, validate_config

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
PAPER_EXPERIMENTS = ["cd_rkl", "dart_js", "dart_tvd", "dolly_akl", "wmt_js", "xsum_gkd_onpolicy_jsd09", "xsum_kl"]


def compose_experiment(name: str, tmp_path: Path):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"+experiment={name}", f"paths.root={tmp_path}"])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_validates(name, tmp_path):
    cfg = compose_experiment(name, tmp_path)
    validate_config(cfg)
    assert OmegaConf.missing_keys(cfg) == set()


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_paper_experiment_names_its_runs(name, tmp_path):
    typed = validate_config(compose_experiment(name, tmp_path))
    assert typed.run_name == name
    assert typed.dataset.name != "synthetic" and not typed.pair.name.startswith("tiny_")


def test_experiment_files_only_override():
    for path in (REPO / "conf" / "experiment").glob("*.yaml"):
        assert path.read_text().startswith("# @package _global_"), path


def test_gkd_experiment_sets_its_hyperparameters(tmp_path):
    typed = validate_config(compose_experiment("xsum_gkd_onpolicy_jsd09", tmp_path))
    assert typed.divergence.name == "jsd" and typed.divergence.params["beta"] == 0.9
    assert typed.pipeline.distill.regime == "gkd" and typed.pipeline.distill.lam == 1.0
    assert typed.pipeline.distill.optim.optimizer == "adafactor"
    assert (typed.dataset.max_source_length, typed.dataset.max_target_length) == (1024, 64)  # GKD Table A.1


def test_cfg_job_prints_complete_config():
    result = subprocess.run([sys.executable, "run.py", "+experiment=dart_tvd", "--cfg", "job"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.dataset.name == "dart" and printed.pair.name == "bart_dart" and printed.divergence.name == "tvd"
    assert printed.pipeline.predistill.epochs == 28 and printed.pipeline.distill.epochs == 12
    assert printed.pipeline.distill.batch_size == 8
