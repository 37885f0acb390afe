"""Short runs of the toy reproductions (AKL Figs. 2-3, GKD Fig. 2): the quantified claims' direction."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fdistill.divergences import get_divergence

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """The toys use tiny tensors: one thread avoids oversubscribing a shared CPU (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def akl():
    return load_script("toy_akl_head_tail")


@pytest.fixture(scope="module")
def gkd():
    return load_script("toy_gkd_mode_seeking")


def test_toys_rely_on_teacher_first_kl_convention():
    """The toys read kl as KL(p||q) with p = teacher (second argument); check it in float64."""
    student, teacher = torch.randn(2, 7, dtype=torch.float64).unbind(0)
    log_p, log_q = teacher.log_softmax(-1), student.log_softmax(-1)
    expected = (log_p.exp() * (log_p - log_q)).sum()
    assert get_divergence("kl").per_token(student, teacher).item() == pytest.approx(expected.item(), rel=1e-10)
    assert get_divergence("rkl").per_token(student, teacher).item() == pytest.approx(
        (log_q.exp() * (log_q - log_p)).sum().item(), rel=1e-10)


def test_head_mask_covers_half_the_mass(akl):
    probs = torch.tensor([0.05, 0.4, 0.3, 0.25], dtype=torch.float64)
    assert akl.head_mask(probs, 0.5).tolist() == [False, True, True, False]


def test_akl_short_run_rkl_leans_to_the_tail(akl):
    curves, verdicts = akl.run(shapes=("unimodal",), inits=("uniform",), epochs=30, early_epochs=15)
    row = verdicts.iloc[0]
    assert row["rkl_tail_first"] and row["rkl_leans_tail_more"]
    final = curves[curves["epoch"] == 30]
    assert (final["total_variation"] < curves[curves["epoch"] == 0]["total_variation"].max() / 2).all()


def test_gkd_short_run_fkl_covers_rkl_and_jsd09_seek(gkd):
    behaviours = {}
    for loss_name in ("FKL", "RKL", "JSD(0.9)"):
        fits = gkd.fit(loss_name, steps=150, inits=((-2.5, 1.0), (0.0, 2.0), (2.5, 2.0)))
        best = fits.loc[fits["final_loss"].idxmin()]
        behaviours[loss_name] = (best["behaviour"], best["student_std"])
    assert behaviours["FKL"][0] == "covers both"
    assert behaviours["RKL"][0] == "seeks one" and behaviours["JSD(0.9)"][0] == "seeks one"
    assert behaviours["RKL"][1] < behaviours["FKL"][1] / 2  # one mode's width vs the whole mixture's


def test_toy_report_states_the_command_and_writes_all_outputs(akl, tmp_path):
    assert akl.main(["--out", str(tmp_path), "--epochs", "4", "--early-epochs", "2", "--shapes", "unimodal",
                     "--inits", "uniform"]) == 0
    report = (tmp_path / "akl_head_tail.md").read_text()
    assert "Command: `python scripts/toy_akl_head_tail.py --out" in report and "## Summary" in report
    assert {path.name for path in tmp_path.iterdir()} >= {"akl_head_tail.md", "akl_head_tail.csv",
                                                          "akl_head_tail.png", "akl_head_tail.pdf"}
