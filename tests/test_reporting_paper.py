"""The committed paper CSVs: fdistill's names, a source for every value, every value (and ±) printed in the
shared file it names, and the transcription script reproduces them byte for byte."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fdistill.config import register_configs
from fdistill.data import available_datasets
from fdistill.evaluation import available_metrics
from fdistill.reporting import load_paper_csv
from fdistill.reporting.paper_names import METHODS

REPO = Path(__file__).resolve().parents[1]
PAPER_CSVS = sorted((REPO / "results" / "paper").glob("*.csv"))
SHARED_PAPERS = REPO.parent / "shared" / "papers"


def test_every_paper_table_has_its_csv():
    names = {path.stem for path in PAPER_CSVS}
    expected = {*(f"fdistill_table{n}" for n in (2, 3, 4, 5, 6)), *(f"akl_table{n}" for n in (1, 2, 4, 5, 6, 7, 8)),
                "gkd_stated_results", *(f"gkd_tablea{n}" for n in (1, 2, 3, 4)), "kd_tutorial_ensembles",
                "kd_tutorial_ensemble_distillation"}
    assert names == expected


@pytest.mark.parametrize("path", PAPER_CSVS, ids=lambda path: path.name)
def test_paper_csv_values_have_a_source_and_fdistill_names(path):
    frame = load_paper_csv(path)
    assert not frame.empty and frame["value"].notna().all()
    assert frame["source"].str.match(r"shared/papers/\w+\.md, (Table [\w.]+|Stated results|"
                                     r"Zero-shot translation ensembles|Distillation from the ensemble)$").all()
    assert set(frame["mark"]) <= {"", "best", "second"}
    ours = set(available_metrics()) | {"risk/likelihood_risk_per_token", "risk/coverage_risk_per_token",
                                       "teacher_dist"}
    for metric in set(frame["metric"]) & {"bleu", "rougeL", "bertscore", "ter", "meteor", "chrf"}:
        assert metric in ours
    known_methods = {label for labels in METHODS.values() for label in labels.values()}
    divergence_rows = frame[~frame["method"].isin({"teacher", "dataset", "gkd", "sft_student"})]
    assert set(divergence_rows["method"]) <= known_methods, set(divergence_rows["method"]) - known_methods
    paper_datasets = set(frame["dataset"]) & {"dart", "xsum", "wmt16_en_ro", "commonsense_dialogue", "dolly"}
    assert paper_datasets <= set(available_datasets())


def test_paper_method_labels_are_fdistill_configs():
    register_configs()
    configs = {path.stem for path in (REPO / "conf" / "divergence").glob("*.yaml")}
    for labels in METHODS.values():
        for label in labels.values():
            assert label == "teacher" or label.split(" ", 1)[0] in configs, label


def _numbers_in(text: str) -> set[float]:
    return {float(token.replace(",", "")) for token in re.findall(r"\d[\d,]*(?:\.\d+)?(?:e-?\d+)?", text)}


@pytest.mark.parametrize("path", PAPER_CSVS, ids=lambda path: path.name)
def test_every_value_is_printed_in_its_source(path):
    if not SHARED_PAPERS.is_dir():
        pytest.skip(f"{SHARED_PAPERS} not found: the papers' tables are only beside developer/CI checkouts")
    frame = load_paper_csv(path)
    for source, rows in frame.groupby("source"):
        printed = _numbers_in((REPO.parent / source.split(",")[0]).read_text(encoding="utf-8"))
        for column in ("value", "std"):
            missing = [value for value in rows[column].dropna() if float(value) not in printed]
            assert not missing, f"{path.name}: {column} {missing} not printed in {source}"


def test_the_transcription_reproduces_the_committed_csvs(tmp_path):
    if not SHARED_PAPERS.is_dir():
        pytest.skip(f"{SHARED_PAPERS} not found: the papers' tables are only beside developer/CI checkouts")
    subprocess.run([sys.executable, "scripts/transcribe_papers.py", "--papers", str(SHARED_PAPERS), "--out",
                    str(tmp_path)], cwd=REPO, check=True, capture_output=True)
    for path in PAPER_CSVS:
        assert (tmp_path / path.name).read_text() == path.read_text(), f"{path.name} differs from a fresh transcription"


def test_a_non_number_is_rejected(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("paper,table,dataset,pair,method,metric,value,std,mark,source\nP,T1,d,p,m,bleu,about 40,,,s\n")
    with pytest.raises(ValueError, match="non-number"):
        load_paper_csv(path)


def test_headline_numbers_as_printed():
    """Spot checks against the papers' text (f-DISTILL Tables 2-4, AKL Table 1)."""
    table2 = load_paper_csv(REPO / "results/paper/fdistill_table2.csv", dataset="dart")
    assert table2.set_index(["method", "metric"]).loc[("tvd", "bleu"), "value"] == 46.95
    table3 = load_paper_csv(REPO / "results/paper/fdistill_table3.csv", dataset="dart")
    risks = table3.set_index(["method", "metric"])["value"]
    assert (risks["kl", "risk/coverage_risk_per_token"], risks["rkl", "risk/coverage_risk_per_token"]) == (0.49, 0.59)
    table4 = load_paper_csv(REPO / "results/paper/fdistill_table4.csv")
    speedup = table4[table4["metric"] == "speedup"].set_index("method")["value"]
    assert speedup["js (pipeline.distill.teacher_sampling=offline)"] == 2.25
    akl = load_paper_csv(REPO / "results/paper/akl_table1.csv", dataset="dolly", pair="gpt2_dolly")
    row = akl.set_index("method").loc["akl"]
    assert (row["value"], row["std"], row["mark"], row["value_ours"]) == (23.88, 0.46, "best", pytest.approx(0.2388))
