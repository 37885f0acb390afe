"""The papers' directional claims ("JS and TVD beat KL and RKL", "KL has the lower R_cvg") as data, checked
on the paper's own numbers and on ours, with a verdict on whether our run reproduces the ordering.

A claim names the runs it compares by their overrides (``{"divergence": ("js", "tvd")}``) and the metrics
it is read on. Ours holds when every "better" run beats every "worse" run on the metric (direction from
:func:`fdistill.reporting.aggregate.higher_is_better`), separately within each group of the other varying
overrides (e.g. per student size); it is "clear" when the smallest gap exceeds the largest seed std of each
side, "within seed noise" otherwise. The paper side is read from ``results/paper`` rows with the same method
labels; a claim the paper states without numbers carries its words (``paper_text``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from fdistill.reporting.aggregate import higher_is_better

R_LLH, R_CVG = "risk/likelihood_risk_per_token", "risk/coverage_risk_per_token"
QUALITY = ("bleu", "meteor", "ter", "bertscore", "moverscore", "bleurt", "rouge1", "rouge2", "rougeL", "chrf",
           "bleu1", "bleu2", "synthetic_sample/validity_rate", "synthetic_sample/mode_tv")
DIVERGENCE = "divergence"
DATA_FRACTION, ALPHA = "pipeline.distill.data_fraction", "pipeline.distill.rl.alpha"
#: what GKD + RL's reward reads as: the synthetic task's exact validity, the training reward, GKD's entailment
REWARDS = ("synthetic_sample/validity_rate", "rl/reward", "entailment")
FDISTILL_DIVERGENCES = ("kl", "rkl", "js", "tvd")


@dataclass(frozen=True)
class Claim:
    text: str
    better: Mapping[str, tuple[str, ...]]
    worse: Mapping[str, tuple[str, ...]]
    metrics: tuple[str, ...]
    source: str
    paper_text: str = ""  # what the paper states where it gives no number for the claim
    notes: tuple[str, ...] = field(default_factory=tuple)


def _div(*names: str) -> dict[str, tuple[str, ...]]:
    return {DIVERGENCE: names}


CLAIMS: dict[str, list[Claim]] = {
    "fdistill_table2": [
        Claim("JS and TVD beat KL and RKL", _div("js", "tvd"), _div("kl", "rkl"), QUALITY, "f-DISTILL Table 2"),
        Claim("TVD beats the other divergences", _div("tvd"), _div("kl", "rkl", "js"), QUALITY, "f-DISTILL Table 2"),
        Claim("KL, RKL, JS and TVD beat SeqKD", _div(*FDISTILL_DIVERGENCES), _div("seqkd"), QUALITY,
              "f-DISTILL Table 2"),
        Claim("KL, RKL, JS and TVD improve on the pre-distilled student", _div(*FDISTILL_DIVERGENCES),
              _div("predistill"), QUALITY, "f-DISTILL Table 2"),
        Claim("Pre-distillation beats MLE training of the student", _div("predistill"), _div("mle"), QUALITY,
              "f-DISTILL Table 2"),
        Claim("LLMR (teacher-induced reward) beats SeqKD, KL, RKL and JS", _div("llmr"),
              _div("seqkd", "kl", "rkl", "js"), QUALITY, "KD tutorial Table 1",
              paper_text="LLMR above SeqKD, KL, RKL and JS on DailyDialog, OpenSubtitles and CNN/DailyMail "
                         "(T0-3B → T5-base), e.g. DailyDialog BLEU2 7.00 vs JS 6.60 vs SeqKD 6.19"),
    ],
    "fdistill_table3": [
        Claim("KL (mass-covering) has a lower coverage risk than RKL", _div("kl"), _div("rkl"), (R_CVG,),
              "f-DISTILL Table 3"),
        Claim("RKL (mode-seeking) has a lower likelihood risk than KL", _div("rkl"), _div("kl"), (R_LLH,),
              "f-DISTILL Table 3"),
        Claim("JS has a lower likelihood risk than KL", _div("js"), _div("kl"), (R_LLH,), "f-DISTILL Table 3"),
        Claim("JS has a lower coverage risk than RKL", _div("js"), _div("rkl"), (R_CVG,), "f-DISTILL Table 3"),
        Claim("TVD has a lower likelihood risk than KL", _div("tvd"), _div("kl"), (R_LLH,), "f-DISTILL Table 3"),
        Claim("TVD has a lower coverage risk than RKL", _div("tvd"), _div("rkl"), (R_CVG,), "f-DISTILL Table 3"),
    ],
    "fdistill_figure2": [
        Claim("JS and TVD beat KL and RKL at every student size", _div("js", "tvd"), _div("kl", "rkl"), QUALITY,
              "f-DISTILL Figure 2", paper_text="JS/TVD beat KL/RKL at every size (Figure 2; values not given)"),
    ],
    "gkd_grid": [
        Claim("on-policy (λ=1) beats supervised (λ=0) KD", {"pipeline.distill.lam": ("1.0",)},
              {"pipeline.distill.lam": ("0.0",)}, QUALITY, "GKD Figs. 3, 7, A.13",
              paper_text="on-policy GKD best; on-policy and mixed > supervised (Fig. A.13, XSum greedy)"),
        Claim("mixed (λ=0.5) beats supervised (λ=0) KD", {"pipeline.distill.lam": ("0.5",)},
              {"pipeline.distill.lam": ("0.0",)}, QUALITY, "GKD Fig. A.13",
              paper_text="on-policy and mixed > supervised (Fig. A.13, XSum greedy)"),
    ],
    "gkd_figure4": [
        Claim("On-policy GKD beats supervised KD and ImitKD at every data fraction", _div("gkd_onpolicy"),
              _div("word_kd", "imitkd"), QUALITY, "GKD Fig. 4",
              paper_text="on-policy GKD beats supervised KD and ImitKD at every fraction (Fig. 4, XSum, T5-small)"),
        Claim("On-policy GKD on 5% of the data beats supervised KD and ImitKD on all of it",
              {DIVERGENCE: ("gkd_onpolicy",), DATA_FRACTION: ("0.05",)},
              {DIVERGENCE: ("word_kd", "imitkd"), DATA_FRACTION: ("1.0",)}, QUALITY, "GKD Fig. 4",
              paper_text="on-policy GKD on 5% of the data beats supervised KD and ImitKD on all of it (Fig. 4)"),
    ],
    "gkd_figure6": [
        Claim("The RL term raises the reward (α = 0 over α = 1)", {ALPHA: ("0.0",)}, {ALPHA: ("1.0",)}, REWARDS,
              "GKD Fig. 6", paper_text="smaller α (more weight on the reward) raises factual consistency (Fig. 6, XSum)"),
        Claim("…at a cost in distillation quality (α = 1 over α = 0)", {ALPHA: ("1.0",)}, {ALPHA: ("0.0",)},
              (R_CVG, "rouge2"), "GKD Fig. 6",
              paper_text="the reward is traded against ROUGE-2: smaller α lowers it (Fig. 6, XSum)"),
    ],
    "akl_table1": [
        Claim("AKL beats FKL+RKL", _div("akl"), {DIVERGENCE: ("fkl_rkl",), "divergence.params.weight": ("0.5",)},
              ("rougeL", "rouge2", "bertscore", *QUALITY), "AKL Table 1"),
        Claim("AKL beats every baseline", _div("akl"), _div("mle", "seqkd", "kl", "rkl", "skl", "srkl"),
              ("rougeL", "rouge2", "bertscore", *QUALITY), "AKL Table 1"),
        Claim("AKL beats AKL-r (weights swapped)", _div("akl"), _div("akl_r"), ("rougeL", "rouge2", *QUALITY),
              "AKL Figure 4", paper_text="AKL-r is worse than AKL and FKL+RKL on all three datasets (Figure 4)"),
    ],
    "akl_table6": [
        Claim("AKL at every μ beats FKL+RKL", _div("akl"),
              {DIVERGENCE: ("fkl_rkl",), "divergence.params.weight": ("0.5",)}, ("rougeL", *QUALITY), "AKL Table 6"),
    ],
}


def _selected(frame: pd.DataFrame, selector: Mapping[str, tuple[str, ...]]) -> pd.Series | None:
    """Rows matching every key of the selector; None when a key is not an override of these runs."""
    if any(key not in frame.columns for key in selector):
        return None
    mask = pd.Series(True, index=frame.index)
    for key, values in selector.items():
        mask &= frame[key].astype(str).isin(values)
    return mask


def _label(selector: Mapping[str, tuple[str, ...]], value: str, group: Mapping[str, str]) -> str:
    """The method label a run of `selector` with divergence `value` carries in a table (paper rows use it)."""
    params = {**{key: values[0] for key, values in selector.items() if key != DIVERGENCE}, **group}
    inner = ", ".join(f"{key}={val}" for key, val in sorted(params.items()))
    return f"{value} ({inner})" if inner else value


def _compare(better: list[tuple[str, float, float]], worse: list[tuple[str, float, float]], higher: bool
             ) -> tuple[bool, float, float]:
    """(holds, smallest gap, noise = largest std of each side) for 'every better beats every worse'."""
    sign = 1.0 if higher else -1.0
    gap = min(sign * b for _, b, _ in better) - max(sign * w for _, w, _ in worse)
    noise = max((s for _, _, s in better), default=0.0) + max((s for _, _, s in worse), default=0.0)
    return gap > 0, gap, noise


def _numbers(entries: list[tuple[str, float, float]], digits: int) -> str:
    return ", ".join(f"{name} {value:.{digits}f}" + (f"±{std:.{digits}f}" if std == std and std > 0 else "")
                     for name, value, std in entries)


def _ours_side(rows: pd.DataFrame) -> list[tuple[str, float, float]]:
    return [(row["method"], float(row["mean"]), 0.0 if math.isnan(row["std"]) else float(row["std"]))
            for _, row in rows.iterrows() if row["n"] > 0 and not math.isnan(row["mean"])]


def evaluate_claims(ours: pd.DataFrame, paper: pd.DataFrame | None, claims: Sequence[Claim],
                    lower_is_better: Sequence[str] = (), digits: int = 3,
                    metrics: Sequence[str] | None = None, paper_metrics: Mapping[str, str] | None = None
                    ) -> pd.DataFrame:
    """One row per (claim, metric, group): the paper's numbers and verdict, ours, and whether ours
    reproduces the paper's ordering. `ours` is the aggregated frame (override columns included).

    `metrics` restricts the claims' metrics; `paper_metrics` reads the paper side of one of our metrics on
    another metric (a different setting: e.g. our synthetic validity against the paper's DART BLEU)."""
    records = []
    for claim in claims:
        for metric in dict.fromkeys(claim.metrics):
            if metrics is not None and metric not in metrics:
                continue
            higher = higher_is_better(metric, lower_is_better)
            paper_name = (paper_metrics or {}).get(metric, metric)
            ours_metric = ours[ours["metric"] == metric]
            paper_metric = paper[paper["metric"] == paper_name] if paper is not None else None
            if ours_metric.empty and (paper_metric is None or paper_metric.empty):
                continue
            paper_higher = higher_is_better(paper_name, lower_is_better)
            present = _selected(ours_metric, claim.better)
            if not ours_metric.empty and present is not None and not present.any():
                continue  # the claim's method is not in this sweep (e.g. LLMR in a table without it)
            for group, better, worse in _groups(ours_metric, claim):
                if not (_complete(better, claim.better) and _complete(worse, claim.worse)):
                    better = worse = better.iloc[0:0]  # a named run is missing: no verdict on a partial set
                paper_entry = _paper_side(paper_metric, claim, group, paper_higher, digits)
                if paper_name != metric and paper_entry["holds"] in ("yes", "no"):
                    paper_entry["text"] = f"{paper_name}: {paper_entry['text']}"
                ours_entry = _verdict(_ours_side(better), _ours_side(worse), higher, digits,
                                      seeds=int(min(better["n"].min(), worse["n"].min())) if len(better) else 0,
                                      constant=_constant(ours_metric))
                records.append({"claim": claim.text, "source": claim.source, "metric": metric,
                                "group": ", ".join(f"{k}={v}" for k, v in group.items()) or "–",
                                "paper": paper_entry["text"], "paper_holds": paper_entry["holds"],
                                "ours": ours_entry["text"], "ours_verdict": ours_entry["verdict"],
                                "reproduces": _reproduces(paper_entry, ours_entry)})
            if ours_metric.empty:
                paper_entry = _paper_side(paper_metric, claim, {}, paper_higher, digits)
                if paper_entry["text"] != "–":
                    records.append({"claim": claim.text, "source": claim.source, "metric": metric, "group": "–",
                                    "paper": paper_entry["text"], "paper_holds": paper_entry["holds"],
                                    "ours": "not measured", "ours_verdict": "–", "reproduces": "n/a (not measured)"})
    return pd.DataFrame.from_records(records, columns=["claim", "source", "metric", "group", "paper", "paper_holds",
                                                       "ours", "ours_verdict", "reproduces"])


def _complete(rows: pd.DataFrame, selector: Mapping[str, tuple[str, ...]]) -> bool:
    """Every value the selector names is among the rows (with a result)."""
    done = rows[rows["n"] > 0]
    return all(set(values) <= set(done[key].astype(str)) for key, values in selector.items())


def _constant(rows: pd.DataFrame) -> bool:
    values = rows.loc[rows["n"] > 0, "mean"].dropna()
    return len(values) > 1 and values.max() - values.min() <= 1e-12 * max(1.0, abs(values.max()))


def _groups(rows: pd.DataFrame, claim: Claim):
    """(group, better rows, worse rows) within each combination of the other varying overrides; runs that
    lack a grouping override (e.g. a baseline without the swept parameter) take part in every group."""
    better_mask, worse_mask = _selected(rows, claim.better), _selected(rows, claim.worse)
    if rows.empty or better_mask is None or worse_mask is None:
        return
    keys = set(claim.better) | set(claim.worse)
    config = [column for column in rows.columns if column not in
              {"method", "metric", "mean", "std", "n", "unavailable", "paper_value", "paper_std", "paper_printed",
               "paper_mark", "paper_source", "difference", "higher_is_better", "mark_ours", "mark_paper"}]
    grouping = [column for column in config if column not in keys
                and rows.loc[better_mask | worse_mask, column].dropna().astype(str).nunique() > 1]
    if not grouping:
        yield {}, rows[better_mask], rows[worse_mask]
        return
    chosen = rows[better_mask | worse_mask]
    for values, _ in chosen.dropna(subset=grouping).groupby(grouping, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        group = dict(zip(grouping, map(str, values), strict=True))
        inside = pd.Series(True, index=rows.index)
        for column, value in group.items():
            inside &= rows[column].isna() | (rows[column].astype(str) == value)
        yield group, rows[better_mask & inside], rows[worse_mask & inside]


def _paper_side(paper_metric: pd.DataFrame | None, claim: Claim, group: Mapping[str, str], higher: bool,
                digits: int) -> dict:
    if paper_metric is None or paper_metric.empty or DIVERGENCE not in claim.better or DIVERGENCE not in claim.worse:
        return {"text": claim.paper_text or "–", "holds": "stated" if claim.paper_text else "–"}
    values = dict(zip(paper_metric["method"], zip(paper_metric["value"], paper_metric["std"].fillna(0.0),
                                                  strict=True), strict=True))

    def side(selector):
        found = []
        for name in selector[DIVERGENCE]:  # the run's label in this group, or its label without the group
            label = next((label for label in (_label(selector, name, group), _label(selector, name, {}))
                          if label in values), None)
            if label is not None:
                found.append((label, float(values[label][0]), float(values[label][1])))
        return found

    better, worse = side(claim.better), side(claim.worse)
    if len(better) < len(claim.better[DIVERGENCE]) or len(worse) < len(claim.worse[DIVERGENCE]):
        return {"text": claim.paper_text or "–", "holds": "stated" if claim.paper_text else "–"}
    holds, _, _ = _compare(better, worse, higher)
    return {"text": f"{_numbers(better, 2)} vs {_numbers(worse, 2)}", "holds": "yes" if holds else "no"}


def _verdict(better, worse, higher: bool, digits: int, seeds: int, constant: bool) -> dict:
    if not better or not worse:
        return {"text": "not run", "verdict": "–"}
    text = f"{_numbers(better, digits)} vs {_numbers(worse, digits)}"
    if constant:
        return {"text": text, "verdict": "n/a (constant across methods)"}
    holds, gap, noise = _compare(better, worse, higher)
    if not holds:
        return {"text": text, "verdict": "does not hold"}
    if seeds < 2:
        return {"text": text, "verdict": "holds (one seed)"}
    return {"text": text, "verdict": "holds (clear)" if gap > noise else "holds (within seed noise)"}


def _reproduces(paper: dict, ours: dict) -> str:
    verdict = ours["verdict"]
    if verdict in ("–",) or verdict.startswith("n/a"):
        return "n/a"
    holds = verdict.startswith("holds")
    if paper["holds"] == "no":
        return "– (the paper's own numbers do not show it)"
    if paper["holds"] == "–":
        return "yes" if holds else "no"  # a claim of the paper's text without numbers here
    return ("yes" + verdict[len("holds"):]) if holds else "no"


def claims_markdown(verdicts: pd.DataFrame) -> list[str]:
    """A Markdown section with one row per verdict."""
    if verdicts.empty:
        return []
    lines = ["## The papers' claims on these runs", "",
             "Ours holds when every named run beats every compared run; 'clear' when the smallest gap exceeds the "
             "largest seed std of each side. Paper numbers as printed.", "",
             "| claim | metric | group | paper | paper holds | ours | ours | reproduces |",
             "|---|---|---|---|---|---|---|---|"]
    for _, row in verdicts.iterrows():
        lines.append(f"| {row['claim']} ({row['source']}) | {row['metric']} | {row['group']} | {row['paper']} | "
                     f"{row['paper_holds']} | {row['ours']} | {row['ours_verdict']} | {row['reproduces']} |")
    return lines + [""]
