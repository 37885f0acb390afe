"""Published numbers stored in ``results/paper/*.csv`` and their join with our aggregated results.

CSV columns: ``paper,table,dataset,pair,method,metric,value,std,mark,source`` (lines starting with ``#`` are
comments), written by ``scripts/transcribe_papers.py``: values as printed, names already fdistill's
(``fdistill.reporting.paper_names``), so the join is exact. ``source`` names the shared file and table.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fdistill.reporting.paper_names import metric_scale

PAPER_COLUMNS = ["paper", "table", "dataset", "pair", "method", "metric", "value", "std", "mark", "source"]
MARKS = ("", "best", "second")


def _read(path: Path) -> pd.DataFrame:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    frame = pd.read_csv(io.StringIO("\n".join(lines)), dtype=str, keep_default_na=False)
    missing = [column for column in PAPER_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {PAPER_COLUMNS}")
    for column in ("value", "std"):
        try:
            frame[column] = pd.to_numeric(frame[column].where(frame[column] != ""), errors="raise")
        except ValueError as error:
            raise ValueError(f"{path}: column {column!r} holds a non-number ({error}); every value is a number "
                             "as printed in the paper") from None
    if frame["value"].isna().any():
        raise ValueError(f"{path}: rows without a value: {frame[frame['value'].isna()].index.tolist()}")
    bad_marks = sorted(set(frame["mark"]) - set(MARKS))
    if bad_marks:
        raise ValueError(f"{path}: marks {bad_marks}; expected one of {MARKS}")
    return frame


def load_paper_csv(paths: str | Path | Sequence[str | Path], dataset: str | None = None,
                   pair: str | None = None) -> pd.DataFrame:
    """Read paper CSVs (optionally one dataset / pair only) and add ``value_ours`` / ``std_ours``: the value
    in fdistill's scale (``paper_names.SCALES``)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    frame = pd.concat([_read(Path(path)) for path in paths], ignore_index=True)
    for column, value in (("dataset", dataset), ("pair", pair)):
        if value is not None:
            known = sorted(frame[column].unique())
            frame = frame[frame[column] == value]
            if frame.empty:
                raise ValueError(f"{paths}: no rows for {column} {value!r}; they have {known}")
    scales = frame["metric"].map(metric_scale)
    frame = frame.assign(value_ours=frame["value"] / scales, std_ours=frame["std"] / scales)
    return frame.reset_index(drop=True)


def join_paper(aggregated: pd.DataFrame, paper: pd.DataFrame | None) -> pd.DataFrame:
    """Outer-join our (method, metric) rows with the paper's on exact names.

    Adds ``paper_value`` / ``paper_std`` (in fdistill's scale), ``paper_printed`` (as printed), ``paper_mark``,
    ``paper_source`` and ``difference`` = ours − paper (NaN where either is missing)."""
    ours = aggregated.copy()
    if paper is None or paper.empty:
        return ours.assign(paper_value=float("nan"), paper_std=float("nan"), paper_printed=float("nan"),
                           paper_mark="", paper_source="", difference=float("nan"))
    theirs = pd.DataFrame({
        "method": paper["method"], "metric": paper["metric"], "paper_value": paper["value_ours"],
        "paper_std": paper["std_ours"], "paper_printed": paper["value"], "paper_mark": paper["mark"],
        "paper_source": paper["paper"] + " " + paper["table"] + " (" + paper["source"] + ")",
    })
    duplicated = theirs.duplicated(["method", "metric"])
    if duplicated.any():
        raise ValueError(f"paper rows repeat (method, metric): {theirs[duplicated][['method', 'metric']].values.tolist()}"
                         "; filter them with a dataset and pair (--paper-dataset, --paper-pair)")
    joined = ours.merge(theirs, on=["method", "metric"], how="outer", sort=False)
    joined["n"] = joined["n"].fillna(0).astype(int)
    joined["unavailable"] = joined["unavailable"].fillna("")
    joined["paper_source"] = joined["paper_source"].fillna("")
    joined["paper_mark"] = joined["paper_mark"].fillna("")
    joined["difference"] = joined["mean"] - joined["paper_value"]
    return joined


SAMPLING_KEY = "pipeline.distill.teacher_sampling"


def paper_offline_speedups(paper_csv: str | Path) -> dict[str, float]:
    """f-DISTILL Table 4's speed-up of offline over online teacher sampling per divergence (rows
    ``<divergence> (pipeline.distill.teacher_sampling=offline)``, metric ``speedup``)."""
    paper = load_paper_csv(paper_csv)
    rows = paper[(paper["metric"] == "speedup") & paper["method"].str.endswith(f"({SAMPLING_KEY}=offline)")]
    return {method.split(" ", 1)[0]: float(value) for method, value in zip(rows["method"], rows["value"], strict=True)}
