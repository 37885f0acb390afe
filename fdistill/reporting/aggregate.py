"""Seed aggregation (mean ± std over seeds, n) and best/second-best marks with a per-metric direction."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import pandas as pd

from fdistill.reporting.collect import JobResult

# Metrics where smaller is better: TER (f-DISTILL Table 2), likelihood/coverage risks R_llh/R_cvg
# (f-DISTILL Table 3; fdistill.evaluation names them *_risk_*), exposure-bias KLs and ExError, losses,
# perplexities, wall time (f-DISTILL Table 4), total variation to the true modes, Self-BLEU (GKD Fig. 5).
LOWER_IS_BETTER = ("ter", "r_llh", "r_cvg", "rllh", "rcvg", "risk", "kl", "loss", "ppl", "perplexity", "time",
                   "seconds", "error", "exerror", "ece", "tv", "self_bleu", "selfbleu")
BEST, SECOND = "best", "second"
AGGREGATE_COLUMNS = ["method", "metric", "mean", "std", "n", "unavailable"]


def normalize_name(name: str) -> str:
    """Lower-case, non-alphanumerics to ``_``: ``"ROUGE-L"`` and ``"rouge_l"`` both become ``"rouge_l"``."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def matching_key(name: str) -> str:
    """Key used to join our names with the papers' (``"ROUGE-L"`` == ``"rougeL"`` == ``"rouge_l"``)."""
    return normalize_name(name).replace("_", "")


def higher_is_better(metric: str, lower_is_better: Iterable[str] = ()) -> bool:
    """Direction of ``metric``: False when any name token matches a lower-is-better pattern."""
    padded = f"_{normalize_name(metric)}_"
    patterns = [*LOWER_IS_BETTER, *(normalize_name(extra) for extra in lower_is_better)]
    return not any(f"_{pattern}_" in padded for pattern in patterns)


def method_labels(jobs: Sequence[JobResult], seed_key: str, method_key: str | None) -> tuple[list[str], dict]:
    """One label per job from its non-seed overrides that vary across jobs; also the constant overrides.

    With ``method_key`` (e.g. ``divergence``) the label starts with that override's value and the other
    varying overrides follow in parentheses: ``"js (pipeline.distill.lam=0.5)"``; an override a job does not
    set is left out (``"kl"`` beside ``"fkl_rkl (divergence.params.weight=0.5)"``).
    """
    keys = sorted({key for job in jobs for key in job.overrides if key != seed_key})
    if method_key is not None and method_key not in keys:
        raise ValueError(f"method key {method_key!r} is not among the overrides {keys}; pick one of them")
    varying = [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]
    constant = {key: jobs[0].overrides[key] for key in keys if key not in varying and key in jobs[0].overrides}
    labels = []
    for job in jobs:
        others = [f"{key}={job.overrides[key]}" for key in varying if key != method_key and key in job.overrides]
        if method_key is None:
            labels.append(", ".join(others) or "default")
        else:
            head = job.overrides.get(method_key, "∅")
            labels.append(f"{head} ({', '.join(others)})" if others else head)
    return labels, constant


def aggregate_over_seeds(jobs: Sequence[JobResult], seed_key: str = "seed",
                         method_key: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Mean ± sample std (ddof=1) and n over seeds for every (method, metric).

    Returns a long frame with :data:`AGGREGATE_COLUMNS` plus one column per non-seed override, and the
    overrides shared by all jobs. ``unavailable`` holds the reasons when no seed produced a number.
    """
    if not jobs:
        raise ValueError("no finished jobs to aggregate (every job lacks metrics.json?)")
    labels, constant = method_labels(jobs, seed_key, method_key)
    records = []
    for label, job in zip(labels, jobs, strict=True):
        config = {key: value for key, value in job.overrides.items() if key != seed_key}
        records += [{"method": label, "metric": name, "value": value, "reason": None, **config}
                    for name, value in job.metrics.items()]
        records += [{"method": label, "metric": name, "value": float("nan"), "reason": reason, **config}
                    for name, reason in job.unavailable.items()]
    long = pd.DataFrame.from_records(records)
    config_columns = [column for column in long.columns if column not in {"method", "metric", "value", "reason"}]
    rows = []
    for (method, metric), group in long.groupby(["method", "metric"], sort=False):
        values = group["value"].dropna()
        reasons = sorted(set(group["reason"].dropna()))
        rows.append({
            "method": method, "metric": metric, "mean": values.mean() if len(values) else float("nan"),
            "std": values.std(ddof=1) if len(values) > 1 else float("nan"), "n": len(values),
            "unavailable": "; ".join(reasons) if not len(values) else "",
            **group.iloc[0][config_columns].to_dict(),
        })
    return pd.DataFrame(rows, columns=AGGREGATE_COLUMNS + config_columns), constant


def rank_marks(values: pd.Series, higher_better: bool) -> pd.Series:
    """``"best"`` / ``"second"`` / ``""`` per entry (ties share a mark; NaN never marked), as the papers bold/underline."""
    distinct = sorted(values.dropna().unique(), reverse=higher_better)
    marks = {value: mark for value, mark in zip(distinct[:2], (BEST, SECOND), strict=False)}
    return values.map(lambda value: marks.get(value, "")).astype(str)
