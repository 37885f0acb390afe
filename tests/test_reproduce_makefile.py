"""The Makefile's paper targets, without running them: `make help` lists them, and each dry run launches
a Hydra multirun of an existing conf/sweep file and aggregates the same multirun dir. Every sweep file
composes into a valid config with its sweep axes. (tests/test_reproduce_targets.py runs them, slow.)"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fdistill.config import register_configs, validate_config
from tests.pipeline_cli import REPO

PAPER_TARGETS = ["fdistill-table2", "fdistill-table3", "fdistill-table4", "fdistill-figure2", "gkd-grid",
                 "akl-table1", "akl-table6", "reproduce-synthetic", "synthetic-report", "gkd-figure4", "gkd-figure5",
                 "gkd-figure6", "synthetic-figures", "real-dart", "real-dart-report"]
SWEEPS = sorted(path.stem for path in (REPO / "conf" / "sweep").glob("*.yaml"))


def make_dry_run(*arguments: str) -> list[str]:
    result = subprocess.run(["make", "--no-print-directory", "-n", *arguments], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_help_lists_every_paper_target():
    listed = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True,
                            timeout=60).stdout
    names = {line.split()[0] for line in re.sub(r"\x1b\[[0-9;]*m", "", listed).splitlines() if line.strip()}
    missing = [target for target in PAPER_TARGETS if target not in names]
    assert not missing, f"`make help` does not list {missing}"


@pytest.mark.parametrize("target", PAPER_TARGETS[:7])
def test_target_runs_a_sweep_then_aggregates_it(target):
    lines = make_dry_run(target, "DATASET=synthetic", "PAIR=tiny_bart", "PIPELINE=default")
    runs = [shlex.split(line) for line in lines if " run.py -m " in line]
    reports = [shlex.split(line) for line in lines if " -m fdistill.reporting " in line]
    assert runs and reports, f"{target}: expected run.py -m and fdistill.reporting in {lines}"
    for run in runs:
        settings = dict(token.split("=", 1) for token in run if "=" in token)
        assert settings["+sweep"] in SWEEPS
        assert settings["pair"] == "tiny_bart" and settings["dataset"] == "synthetic"
        report_dir = reports[0][reports[0].index("--multirun-dir") + 1]
        assert report_dir.endswith(f"/multirun/{settings['sweep_name']}")


def test_paper_pairs_by_default():
    assert "pair=bart_dart" in " ".join(make_dry_run("fdistill-table2"))
    assert "pair=t5_xsum" in " ".join(make_dry_run("gkd-grid"))
    assert "pair=gpt2_dolly" in " ".join(make_dry_run("akl-table6"))


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_config_composes(sweep, tmp_path):
    """The sweep file composes with the default config, and every job of its sweep validates."""
    axes = OmegaConf.load(REPO / "conf" / "sweep" / f"{sweep}.yaml").hydra.sweeper.params
    assert len(str(axes.seed).split(",")) == 3, f"{sweep}: seeds must be a sweep axis"
    first_job = [f"{key}={str(values).split(',')[0]}" for key, values in axes.items()]
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        validate_config(compose("config", overrides=[f"+sweep={sweep}", f"paths.root={tmp_path}", *first_job]))


def test_real_dart_runs_the_real_pair_and_reports_beside_the_paper():
    script = "\n".join(make_dry_run("real-dart", "REAL_RESULTS=/tmp/real", "REAL_TAG=_x")).replace("\\\n", " ")
    run = shlex.split(next(line for line in script.splitlines() if " run.py -m " in line).split("; ", 1)[1])
    settings = dict(token.split("=", 1) for token in run if "=" in token and not token.startswith("$"))
    assert (settings["+sweep"], settings["+experiment"], settings["seed"]) == ("real_dart", "real_dart", "0")
    assert settings["sweep_name"] == "real_dart_smollm2_x"
    assert "OMP_NUM_THREADS=$OMP_NUM_THREADS" in script  # the thread count is written beside the wall time
    report = " ".join(make_dry_run("real-dart-report", "REAL_RESULTS=/tmp/real", "REAL_TAG=_x"))
    assert "--out /tmp/real/table2_dart_x" in report and "--stage-times" in report
    assert "--paper-csv results/paper/fdistill_table2.csv" in report and "fdistill_table3.csv" in report
