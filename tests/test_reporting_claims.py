"""Claim verdicts: the paper's own numbers, ours, grouping by the other swept overrides, seed noise, constant
columns, and the provenance warnings a table carries."""

from __future__ import annotations

import pandas as pd

from fdistill.reporting.claims import CLAIMS, Claim, evaluate_claims
from fdistill.reporting.collect import JobResult
from fdistill.reporting.provenance import dirty_tree_warning, project_relative, project_root, setting_warning


def aggregated(rows: list[tuple]) -> pd.DataFrame:
    """(method label, divergence, metric, mean, std, n, extra overrides) → the aggregate frame layout."""
    records = []
    for method, divergence, metric, mean, std, n, extra in rows:
        records.append({"method": method, "metric": metric, "mean": mean, "std": std, "n": n, "unavailable": "",
                        "divergence": divergence, **extra})
    return pd.DataFrame.from_records(records)


def paper(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame.from_records([{"method": m, "metric": metric, "value": v, "std": float("nan")}
                                      for m, metric, v in rows])


CLAIM = Claim("JS beats KL", {"divergence": ("js",)}, {"divergence": ("kl",)}, ("bleu", "ter"), "test")


def test_clear_noise_and_failure_verdicts():
    ours = aggregated([("js", "js", "bleu", 40.0, 1.0, 3, {}), ("kl", "kl", "bleu", 30.0, 1.0, 3, {}),
                       ("js", "js", "ter", 50.0, 5.0, 3, {}), ("kl", "kl", "ter", 52.0, 5.0, 3, {})])
    verdicts = evaluate_claims(ours, paper([("js", "bleu", 47.0), ("kl", "bleu", 46.0), ("js", "ter", 47.0),
                                            ("kl", "ter", 46.0)]), [CLAIM]).set_index("metric")
    assert verdicts.loc["bleu", "ours_verdict"] == "holds (clear)" and verdicts.loc["bleu", "reproduces"] == "yes (clear)"
    assert verdicts.loc["bleu", "paper"] == "js 47.00 vs kl 46.00"
    # TER is lower-is-better: js 50 < kl 52 holds within noise; the paper has js worse on TER
    assert verdicts.loc["ter", "ours_verdict"] == "holds (within seed noise)"
    assert verdicts.loc["ter", "paper_holds"] == "no"
    assert verdicts.loc["ter", "reproduces"].startswith("– (the paper's own numbers do not show it)")


def test_a_failed_ordering_is_not_reproduced_and_one_seed_is_said():
    ours = aggregated([("js", "js", "bleu", 30.0, float("nan"), 1, {}), ("kl", "kl", "bleu", 40.0, float("nan"), 1, {})])
    row = evaluate_claims(ours, paper([("js", "bleu", 47.0), ("kl", "bleu", 46.0)]), [CLAIM]).iloc[0]
    assert (row["ours_verdict"], row["reproduces"]) == ("does not hold", "no")
    ours.loc[ours["method"] == "js", "mean"] = 50.0
    assert evaluate_claims(ours, None, [CLAIM]).iloc[0]["ours_verdict"] == "holds (one seed)"


def test_claims_are_checked_per_group_of_the_other_swept_overrides():
    claim = CLAIMS["gkd_grid"][0]  # λ = 1 beats λ = 0, per β
    rows = []
    for beta, (on, off) in {"0.1": (0.9, 0.8), "0.9": (0.7, 0.75)}.items():
        for lam, value in (("1.0", on), ("0.0", off)):
            rows.append((f"beta={beta}, lam={lam}", "jsd", "synthetic_sample/validity_rate", value, 0.001, 3,
                         {"divergence.params.beta": beta, "pipeline.distill.lam": lam}))
    verdicts = evaluate_claims(aggregated(rows), None, [claim]).set_index("group")
    assert verdicts.loc["divergence.params.beta=0.1", "ours_verdict"] == "holds (clear)"
    assert verdicts.loc["divergence.params.beta=0.9", "ours_verdict"] == "does not hold"
    assert verdicts.loc["divergence.params.beta=0.1", "paper"].startswith("on-policy GKD best")


def test_a_baseline_without_the_swept_parameter_joins_every_group():
    claim = CLAIMS["akl_table6"][0]
    rows = [(f"akl (divergence.params.mu={mu})", "akl", "rougeL", value, 0.0, 2, {"divergence.params.mu": mu})
            for mu, value in (("0.45", 0.25), ("0.5", 0.20))]
    rows.append(("fkl_rkl (divergence.params.weight=0.5)", "fkl_rkl", "rougeL", 0.22, 0.0, 2,
                 {"divergence.params.weight": "0.5"}))
    published = paper([("akl (divergence.params.mu=0.45)", "rougeL", 24.45),
                       ("akl (divergence.params.mu=0.5)", "rougeL", 24.40),
                       ("fkl_rkl (divergence.params.weight=0.5)", "rougeL", 24.08)])
    verdicts = evaluate_claims(aggregated(rows), published, [claim]).set_index("group")
    assert verdicts.loc["divergence.params.mu=0.45", "ours_verdict"] == "holds (clear)"
    assert verdicts.loc["divergence.params.mu=0.5", "ours_verdict"] == "does not hold"
    assert verdicts.loc["divergence.params.mu=0.45", "paper"] == (
        "akl (divergence.params.mu=0.45) 24.45 vs fkl_rkl (divergence.params.weight=0.5) 24.08")


def test_a_constant_column_gets_no_verdict_and_another_paper_metric_can_stand_in():
    ours = aggregated([("js", "js", "bleu", 100.0, 0.0, 3, {}), ("kl", "kl", "bleu", 100.0, 0.0, 3, {}),
                       ("js", "js", "synthetic_sample/validity_rate", 0.97, 0.01, 3, {}),
                       ("kl", "kl", "synthetic_sample/validity_rate", 0.94, 0.01, 3, {})])
    claim = Claim("JS beats KL", {"divergence": ("js",)}, {"divergence": ("kl",)},
                  ("bleu", "synthetic_sample/validity_rate"), "test")
    verdicts = evaluate_claims(ours, paper([("js", "bleu", 47.0), ("kl", "bleu", 46.0)]), [claim],
                               paper_metrics={"synthetic_sample/validity_rate": "bleu"}).set_index("metric")
    assert verdicts.loc["bleu", "ours_verdict"] == "n/a (constant across methods)"
    assert verdicts.loc["synthetic_sample/validity_rate", "paper"] == "bleu: js 47.00 vs kl 46.00"
    assert verdicts.loc["synthetic_sample/validity_rate", "reproduces"] == "yes (clear)"


def test_setting_and_dirty_warnings_and_relative_paths():
    job = JobResult(project_root() / "outputs", {"dataset": "synthetic", "pair": "tiny_bart"})
    warning = setting_warning([job], "dart", "bart_dart", ["120 steps on CPU"])
    assert "dataset synthetic (paper: dart); pair tiny_bart (paper: bart_dart); 120 steps on CPU" in warning
    assert setting_warning([JobResult(job.job_dir, {"dataset": "dart", "pair": "bart_dart"})], "dart",
                           "bart_dart") is None
    assert dirty_tree_warning("abc-dirty").startswith("Made from a working tree with uncommitted changes")
    assert dirty_tree_warning("abc") is None
    assert project_relative(f"--multirun-dir {project_root()}/outputs/multirun/x") == "--multirun-dir outputs/multirun/x"


def test_the_commit_is_dirty_for_code_changes_but_not_for_generated_results(tmp_path):
    import subprocess

    from fdistill.reporting.provenance import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "results" / "table.md").write_text("| 1 |\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert len(clean) == 40 and not clean.endswith("-dirty")
    (tmp_path / "results" / "table.md").write_text("| 2 |\n")        # a report rewriting a committed table
    assert git_commit(tmp_path / "results") == clean
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_commit(tmp_path) == clean + "-dirty"


def test_gkd_rl_and_data_fraction_claims_and_claims_about_methods_a_sweep_lacks():
    alpha = "pipeline.distill.rl.alpha"
    rows = [(f"alpha={a}", "rkl", metric, value, 0.01, 3, {alpha: a})
            for a, (validity, coverage) in {"0.0": (0.99, 0.30), "1.0": (0.90, 0.15)}.items()
            for metric, value in (("synthetic_sample/validity_rate", validity), ("risk/coverage_risk_per_token", coverage))]
    verdicts = evaluate_claims(aggregated(rows), None, CLAIMS["gkd_figure6"]).set_index("claim")
    assert verdicts.loc["The RL term raises the reward (α = 0 over α = 1)", "ours_verdict"] == "holds (clear)"
    trade = verdicts.loc["…at a cost in distillation quality (α = 1 over α = 0)"]
    assert (trade["metric"], trade["ours_verdict"], trade["reproduces"]) == ("risk/coverage_risk_per_token",
                                                                             "holds (clear)", "yes (clear)")
    fraction = "pipeline.distill.data_fraction"
    rows = [(f"{d}, {fraction}={f}", d, "bleu", value, 0.1, 3, {fraction: f})
            for d, values in {"gkd_onpolicy": (30.0, 35.0), "word_kd": (20.0, 28.0), "imitkd": (22.0, 29.0)}.items()
            for f, value in zip(("0.05", "1.0"), values, strict=True)]
    verdicts = evaluate_claims(aggregated(rows), None, CLAIMS["gkd_figure4"]).set_index("claim")
    assert verdicts.loc["On-policy GKD on 5% of the data beats supervised KD and ImitKD on all of it",
                        "ours_verdict"] == "holds (clear)"
    assert set(verdicts.loc["On-policy GKD beats supervised KD and ImitKD at every data fraction", "group"]) == {
        f"{fraction}=0.05", f"{fraction}=1.0"}
    # a Table 2 sweep without LLMR has no LLMR row; with it, the KD tutorial's claim is checked
    table2 = [(d, d, "bleu", v, 0.1, 3, {}) for d, v in {"seqkd": 10, "kl": 11, "rkl": 12, "js": 13}.items()]
    assert "LLMR" not in " ".join(evaluate_claims(aggregated(table2), None, CLAIMS["fdistill_table2"])["claim"])
    with_llmr = evaluate_claims(aggregated([*table2, ("llmr", "llmr", "bleu", 14.0, 0.1, 3, {})]), None,
                                CLAIMS["fdistill_table2"]).set_index("claim")
    row = with_llmr.loc["LLMR (teacher-induced reward) beats SeqKD, KL, RKL and JS"]
    assert row["ours_verdict"] == "holds (clear)" and row["paper_holds"] == "stated"
