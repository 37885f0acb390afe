"""Published numbers stored in ``results/paper/*.csv`` and their join with our aggregated results.

CSV columns: ``paper,table,dataset,method,metric,value,source`` (lines starting with ``#`` are comments).
``value`` is a number or ``not transcribed`` when no readable source was found for it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from fdistill.reporting.aggregate import matching_key

PAPER_COLUMNS = ["paper", "table", "dataset", "method", "metric", "value", "source"]
NOT_TRANSCRIBED = "not transcribed"


def load_paper_csv(path: str | Path, dataset: str | None = None) -> pd.DataFrame:
    """Read a paper CSV (``value`` → float, NaN where not transcribed), optionally one dataset only."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    frame = pd.read_csv(io.StringIO("\n".join(lines)), dtype=str, keep_default_na=False)
    missing = [column for column in PAPER_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {PAPER_COLUMNS}")
    frame["value"] = pd.to_numeric(frame["value"].where(frame["value"] != NOT_TRANSCRIBED), errors="raise")
    if dataset is not None:
        known = sorted(frame["dataset"].unique())
        frame = frame[frame["dataset"].map(matching_key) == matching_key(dataset)]
        if frame.empty:
            raise ValueError(f"{path}: no rows for dataset {dataset!r}; it has {known}")
    return frame.reset_index(drop=True)


def join_paper(aggregated: pd.DataFrame, paper: pd.DataFrame | None,
               aliases: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Outer-join our (method, metric) rows with the paper's on case/punctuation-insensitive names.

    ``aliases`` maps our method labels to the paper's (e.g. ``{"sft": "MLE"}``). Paper-only rows keep the
    paper's names; the result has ``paper_value`` and ``paper_source`` columns.
    """
    ours = aggregated.copy()
    renamed = ours["method"].map(lambda label: (aliases or {}).get(label, label))
    ours["_method_key"], ours["_metric_key"] = renamed.map(matching_key), ours["metric"].map(matching_key)
    if paper is None or paper.empty:
        return ours.drop(columns=["_method_key", "_metric_key"]).assign(paper_value=float("nan"), paper_source="")
    theirs = pd.DataFrame({
        "_method_key": paper["method"].map(matching_key), "_metric_key": paper["metric"].map(matching_key),
        "paper_method": paper["method"], "paper_metric": paper["metric"], "paper_value": paper["value"],
        "paper_source": paper["paper"] + " " + paper["table"] + " (" + paper["source"] + ")",
    })
    duplicated = theirs.duplicated(["_method_key", "_metric_key"])
    if duplicated.any():
        raise ValueError(f"paper rows repeat (method, metric): {theirs[duplicated][['paper_method', 'paper_metric']]}"
                         "; filter them with a dataset")
    joined = ours.merge(theirs, on=["_method_key", "_metric_key"], how="outer", sort=False)
    joined["method"] = joined["method"].fillna(joined["paper_method"])
    our_metric_names = dict(zip(ours["_metric_key"], ours["metric"], strict=True))
    joined["metric"] = joined["_metric_key"].map(our_metric_names).fillna(joined["paper_metric"])
    joined["n"] = joined["n"].fillna(0).astype(int)
    joined["unavailable"] = joined["unavailable"].fillna("")
    joined["paper_source"] = joined["paper_source"].fillna("")
    return joined.drop(columns=["_method_key", "_metric_key", "paper_method", "paper_metric"])
