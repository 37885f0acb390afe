"""Aggregation of a fake Hydra multirun dir: mean ± std over seeds, marks, paper join, written outputs."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from fdistill.reporting import (
    add_marks,
    aggregate_over_seeds,
    collect_jobs,
    higher_is_better,
    join_paper,
    load_paper_csv,
)
from fdistill.reporting.__main__ import main

# (divergence, seed) -> metrics; js is better on bleu (higher) and ter (lower).
FAKE_METRICS = {
    ("kl", 1): {"bleu": 30.0, "ter": 0.60, "bertscore": "unavailable: no encoder offline"},
    ("kl", 2): {"bleu": 32.0, "ter": 0.56, "bertscore": "unavailable: no encoder offline"},
    ("js", 1): {"bleu": 40.0, "ter": 0.50, "bertscore": 0.9},
    ("js", 2): {"bleu": 44.0, "ter": 0.40, "bertscore": 0.8},
}


def write_job(root, index, overrides, metrics):
    job = root / "2026-01-01" / "12-00-00" / str(index)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {entry}\n" for entry in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps({"metrics": metrics, "metadata": {"gpu": "FakeGPU 80GB"}}))


@pytest.fixture
def multirun(tmp_path):
    root = tmp_path / "multirun"
    for index, ((divergence, seed), metrics) in enumerate(FAKE_METRICS.items()):
        write_job(root, index, [f"divergence={divergence}", f"seed={seed}", "+experiment=dart"], metrics)
    write_job(root, 99, ["divergence=tvd", "seed=1", "+experiment=dart"], None)  # unfinished job
    return root


@pytest.fixture
def paper_csv(tmp_path):
    path = tmp_path / "paper.csv"
    path.write_text(
        "# source: test fixture\n"
        "paper,table,dataset,pair,method,metric,value,std,mark,source\n"
        "f-DISTILL,Table 2,dart,bart_dart,kl,bleu,46.0,,second,fixture\n"
        "f-DISTILL,Table 2,dart,bart_dart,js,bleu,47.0,0.5,best,fixture\n"
        "f-DISTILL,Table 2,dart,bart_dart,engine,bleu,45.0,,,fixture\n"
        "f-DISTILL,Table 2,dart,bart_dart,js,bertscore,81.9,,,fixture\n"
        "f-DISTILL,Table 2,xsum,bart_xsum,js,bleu,1.0,,,fixture\n"
    )
    return path


def frame_row(frame, method, metric):
    rows = frame[(frame["method"] == method) & (frame["metric"] == metric)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_mean_std_over_seeds_and_unavailable(multirun):
    jobs, missing = collect_jobs(multirun)
    assert len(jobs) == 4 and len(missing) == 1
    aggregated, fixed = aggregate_over_seeds(jobs, method_key="divergence")
    assert fixed == {"experiment": "dart"}
    js_bleu = frame_row(aggregated, "js", "bleu")
    assert js_bleu["mean"] == pytest.approx(42.0) and js_bleu["n"] == 2
    assert js_bleu["std"] == pytest.approx(math.sqrt(8.0))  # sample std of (40, 44)
    kl_bert = frame_row(aggregated, "kl", "bertscore")
    assert kl_bert["n"] == 0 and "no encoder offline" in kl_bert["unavailable"]


def test_marks_follow_metric_direction(multirun):
    aggregated, _ = aggregate_over_seeds(collect_jobs(multirun)[0], method_key="divergence")
    marked = add_marks(join_paper(aggregated, None))
    assert frame_row(marked, "js", "bleu")["mark_ours"] == "best"
    assert frame_row(marked, "kl", "bleu")["mark_ours"] == "second"
    assert frame_row(marked, "js", "ter")["mark_ours"] == "best"  # lower TER wins
    assert not higher_is_better("TER") and not higher_is_better("R_llh") and higher_is_better("METEOR")
    assert not higher_is_better("likelihood_risk_per_token") and not higher_is_better("ex_error_percent")
    assert higher_is_better("rougeL") and higher_is_better("bertscore_f1") and higher_is_better("mode_entropy")


def test_paper_join_on_fdistill_names_with_scale_and_difference(multirun, paper_csv):
    aggregated, _ = aggregate_over_seeds(collect_jobs(multirun)[0], method_key="divergence")
    paper = load_paper_csv(paper_csv, dataset="dart", pair="bart_dart")
    marked = add_marks(join_paper(aggregated, paper))
    js_bleu = frame_row(marked, "js", "bleu")
    assert js_bleu["paper_value"] == 47.0 and js_bleu["paper_std"] == 0.5 and js_bleu["mark_paper"] == "best"
    assert js_bleu["difference"] == pytest.approx(42.0 - 47.0)
    assert frame_row(marked, "js", "bertscore")["paper_value"] == pytest.approx(0.819)  # printed x100
    engine = frame_row(marked, "engine", "bleu")  # paper-only row
    assert engine["n"] == 0 and engine["paper_value"] == 45.0 and math.isnan(engine["difference"])
    assert math.isnan(frame_row(marked, "js", "ter")["paper_value"])
    with pytest.raises(ValueError, match="no rows for pair 'bart_xsum'"):
        load_paper_csv(paper_csv, dataset="dart", pair="bart_xsum")


def test_cli_writes_csv_md_tex_with_marks_and_provenance(multirun, paper_csv, tmp_path):
    out = tmp_path / "results" / "fdistill" / "table2"
    assert main(["--multirun-dir", str(multirun), "--table", "Table 2 (DART)", "--paper-csv", str(paper_csv),
                 "--paper-dataset", "dart", "--paper-pair", "bart_dart", "--method-key", "divergence",
                 "--claims", "fdistill_table2", "--out", str(out)]) == 0
    markdown = out.with_suffix(".md").read_text()
    assert "| js | **42.00 ± 2.83 (n=2)** | **47.00 ± 0.50** | -5.00 |" in markdown
    assert "<u>31.00 ± 1.41 (n=2)</u>" in markdown
    assert "FakeGPU 80GB" in markdown and "Git commit" in markdown and "--method-key divergence" in markdown
    assert "1 without metrics.json" in markdown
    assert "Different setting from the paper's: dataset ? (paper: dart)" in markdown  # runs that name no dataset
    claims = pd.read_csv(out.with_name("table2_claims.csv"), comment="#", keep_default_na=False)
    row = claims[(claims["claim"] == "JS and TVD beat KL and RKL") & (claims["metric"] == "bleu")].iloc[0]
    assert row["paper_holds"] == "–" and row["ours"] == "not run"  # no tvd anywhere: no verdict on a partial set
    row = claims[(claims["claim"] == "KL, RKL, JS and TVD beat SeqKD") & (claims["metric"] == "bleu")].iloc[0]
    assert row["reproduces"] == "n/a"
    latex = out.with_suffix(".tex").read_text()
    assert r"\textbf{42.00 $\pm$ 2.83 (n=2)}" in latex and r"\underline{31.00 $\pm$ 1.41 (n=2)}" in latex
    table = pd.read_csv(out.with_suffix(".csv"), comment="#")
    assert set(table["method"]) == {"js", "kl", "engine"}
    assert not list(out.parent.glob(".*.tmp"))


def test_cli_rejects_unknown_method_key(multirun, tmp_path):
    with pytest.raises(ValueError, match="method key 'loss'"):
        main(["--multirun-dir", str(multirun), "--table", "t", "--method-key", "loss", "--out", str(tmp_path / "t")])


def test_jobs_are_read_in_sweep_order(tmp_path):
    root = tmp_path / "multirun"
    for index in (10, 2, 1):
        write_job(root, index, [f"divergence=d{index}", "seed=0"], {"bleu": float(index)})
    jobs, _ = collect_jobs(root)
    assert [job.overrides["divergence"] for job in jobs] == ["d1", "d2", "d10"]


def test_results_a_run_replaced_are_not_collected(tmp_path):
    root = tmp_path / "multirun"
    write_job(root, 0, ["divergence=kl", "seed=0"], {"bleu": 1.0})
    write_job(root / "0" / ".replaced" / "20260101T000000Z", 0, ["divergence=tvd", "seed=0"], {"bleu": 2.0})
    jobs, _ = collect_jobs(root)
    assert [job.overrides["divergence"] for job in jobs] == ["kl"]


def test_stage_times_list_each_jobs_builds_distillation_and_evaluation(tmp_path):
    root = tmp_path / "multirun"
    timings = [{"build_gguf_seconds": 20.0, "build_teacher_seconds": 300.0, "teacher_sft_seconds": 290.0,
                "build_teacher_eval_seconds": 50.0, "distill_seconds": 100.0, "evaluate_seconds": 80.0},
               {"distill_seconds": 200.0, "evaluate_seconds": 30.0}]
    for index, (divergence, timing) in enumerate(zip(("kl", "js"), timings, strict=True)):
        job = root / str(index)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- divergence={divergence}\n- seed=0\n")
        (job / "metrics.json").write_text(json.dumps({"metrics": {"bleu": 1.0},
                                                      "metadata": {"timings_seconds": timing}}))
    out = tmp_path / "real" / "table2"
    assert main(["--multirun-dir", str(root), "--table", "Real", "--method-key", "divergence", "--stage-times",
                 "--out", str(out)]) == 0
    text = out.with_name("table2_stage_times.md").read_text()
    assert "| kl | build gguf | 20.0 |" in text and "| kl | build teacher_eval | 50.0 |" in text
    assert "| js | distill | 200.0 |" in text
    # the teacher's training loop is inside its build and teacher_eval inside evaluate: not counted twice
    assert "| kl | 500.0 |" in text and "| js | 230.0 |" in text and "| **all jobs** | **730.0** |" in text


def test_the_measured_teacher_row_is_in_the_table_and_required_rows_fail_when_absent(tmp_path, paper_csv):
    """A divergence=teacher job (the fine-tuned teacher evaluated on the same inputs) is a row of ours beside the
    paper's teacher row; with --require teacher a report without that job fails instead of showing the paper's."""
    paper_csv.write_text(paper_csv.read_text() + "f-DISTILL,Table 2,dart,bart_dart,teacher,bleu,48.0,,,fixture\n")
    root = tmp_path / "multirun"
    write_job(root, 0, ["divergence=teacher", "seed=0"], {"bleu": 22.5})
    write_job(root, 1, ["divergence=kl", "seed=0"], {"bleu": 15.0})
    out = tmp_path / "table"
    args = ["--multirun-dir", str(root), "--table", "T", "--out", str(out), "--method-key", "divergence",
            "--paper-csv", str(paper_csv), "--paper-dataset", "dart", "--paper-pair", "bart_dart", "--require", "teacher"]
    assert main(args) == 0
    table = pd.read_csv(f"{out}.csv", comment="#")
    teacher = table[(table["method"] == "teacher") & (table["metric"] == "bleu")].iloc[0]
    assert teacher["mean"] == 22.5 and teacher["paper_value"] == 48.0
    (root / "2026-01-01" / "12-00-00" / "0" / "metrics.json").unlink()
    with pytest.raises(SystemExit, match=r"required row\(s\) \['teacher'\]"):
        main(args)
