"""Every paper target of the Makefile end to end on tiny pairs and the synthetic task: the Hydra multirun
(conf/sweep/*.yaml) with two seeds, then the aggregation into tables (and figures / the speedup table).
The real datasets and pairs are not reachable offline, so DATASET=synthetic and a tiny PAIR stand in."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from tests.pipeline_cli import REPO, TINY_OVERRIDES, cli_env

pytestmark = pytest.mark.slow

TINY_SWEEP_OVERRIDES = [
    *TINY_OVERRIDES,
    "dataset.params.num_validation=8",
    "pipeline.distill.max_steps=2",
    "pipeline.teacher_sampling.decoding.max_new_tokens=16",
    "pipeline.distill.student_sampling.max_new_tokens=16",
    "pipeline.evaluate.decoding.max_new_tokens=16",
]
SEEDS = ("0", "1")


@pytest.fixture(scope="module")
def sweep_dirs(tmp_path_factory) -> dict[str, Path]:
    """One artifact cache for the module: the teacher and pre-distilled students are trained once."""
    root = tmp_path_factory.mktemp("reproduce")
    return {"cache": root / "cache", "outputs": root / "outputs", "results": root / "results"}


def run_make(target: str, dirs: dict[str, Path], **variables: str) -> None:
    settings = {"DATASET": "synthetic", "PIPELINE": "default", "SEEDS": ",".join(SEEDS),
                "OUTPUTS": str(dirs["outputs"]), "RESULTS": str(dirs["results"]),
                "OVERRIDES": " ".join(TINY_SWEEP_OVERRIDES), **variables}
    command = ["make", "--no-print-directory", target, *(f"{key}={value}" for key, value in settings.items())]
    env = dict(cli_env(), FDISTILL_CACHE=str(dirs["cache"]))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"


def read_table(path: Path) -> list[dict[str, str]]:
    assert path.is_file(), f"{path} was not written"
    with path.open(encoding="utf-8") as stream:
        return list(csv.DictReader(line for line in stream if not line.startswith("#")))


def methods_with_all_seeds(rows: list[dict[str, str]]) -> set[str]:
    """Methods whose every metric was averaged over all seeds (the ``n`` column of our rows; rows with n = 0
    are the paper's metrics that our runs do not measure)."""
    seeds_per_method: dict[str, set[int]] = {}
    for row in rows:
        if row.get("n") and int(float(row["n"])) > 0:
            seeds_per_method.setdefault(row["method"], set()).add(int(float(row["n"])))
    return {method for method, counts in seeds_per_method.items() if counts == {len(SEEDS)}}


@pytest.mark.parametrize(("target", "pair", "stem", "expected_methods", "extra"), [
    ("fdistill-table2", "tiny_bart", "fdistill/table2_synthetic",
     {"mle", "predistill", "seqkd", "engine", "kl", "rkl", "js", "tvd"}, {}),
    ("fdistill-table3", "tiny_bart", "fdistill/table3_synthetic", {"kl", "rkl", "js", "tvd"}, {}),
    ("fdistill-figure2", "tiny_bart", "fdistill/figure2_synthetic", set(), {"LAYERS": "1,2"}),
    ("gkd-grid", "tiny_t5", "gkd/grid_synthetic", set(), {"GKD_METRIC": "bleu"}),
    ("akl-table6", "tiny_gpt2", "akl/table6_synthetic", set(), {}),
])
def test_target_runs_and_aggregates(sweep_dirs, target, pair, stem, expected_methods, extra):
    run_make(target, sweep_dirs, PAIR=pair, **extra)
    rows = read_table(sweep_dirs["results"] / f"{stem}.csv")
    complete = methods_with_all_seeds(rows)
    assert expected_methods <= complete, f"{target}: methods averaged over {SEEDS}: {sorted(complete)}"
    assert complete, f"{target}: no method has results for every seed"
    for suffix in (".md", ".tex"):
        assert (sweep_dirs["results"] / f"{stem}{suffix}").is_file()


def test_figure_targets_write_figures(sweep_dirs):
    """Runs after the parametrised cases in file order; the sweeps above have written their figures."""
    for figure in ("fdistill/figure2_synthetic_student-size", "gkd/grid_synthetic_lambda-grid"):
        assert (sweep_dirs["results"] / f"{figure}.png").is_file(), figure


def test_akl_table1_covers_both_sweeps(sweep_dirs):
    run_make("akl-table1", sweep_dirs, PAIR="tiny_gpt2")
    complete = methods_with_all_seeds(read_table(sweep_dirs["results"] / "akl/table1_synthetic.csv"))
    single_sweep = {"mle", "seqkd", "kl", "rkl", "skl", "srkl", "akl", "akl_r"}
    assert single_sweep <= {method.split(" ")[0] for method in complete}
    assert sum(method.startswith("fkl_rkl") for method in complete) == 3, sorted(complete)


def test_fdistill_table4_reports_speedup(sweep_dirs):
    run_make("fdistill-table4", sweep_dirs, PAIR="tiny_bart")
    rows = read_table(sweep_dirs["results"] / "fdistill/table4_synthetic_speedup.csv")
    assert {row["divergence"] for row in rows} == {"js", "tvd"}
    for row in rows:
        assert float(row["speedup"]) > 0 and row["seeds"] == str(len(SEEDS))
