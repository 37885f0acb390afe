"""Run-directory artifacts: ``predictions.jsonl`` and ``metrics.json`` (atomic writes).

``predictions.jsonl``: one JSON object per line with ``id``, ``source``, ``prediction``, ``references``
(list of strings). ``metrics.json``: ``{"metrics": {flat name: value}, "metadata": {...}}`` where
values are numbers, or a string "unavailable: <reason>" for an optional metric that could not run;
metadata holds decoding settings, metric signatures, encoder names and value scales.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fdistill.errors import CorruptFileError
from fdistill.files import atomic_write_text, read_json_file

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
PREDICTION_FIELDS = ("id", "source", "prediction", "references")
REDO_EVALUATION = ("delete the run dir's stages/evaluate.json and re-run the same command to evaluate again "
                   "(the distilled student is kept)")


def write_predictions(run_dir: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write ``predictions.jsonl``; each record needs id, source, prediction, references (list)."""
    lines = []
    for record in records:
        missing = [name for name in PREDICTION_FIELDS if name not in record]
        if missing:
            raise ValueError(f"prediction record {record.get('id', '?')!r} lacks fields {missing}; "
                             f"each record needs {list(PREDICTION_FIELDS)}")
        if isinstance(record["references"], str):
            raise ValueError(f"record {record['id']!r}: references must be a list of strings, got a string")
        lines.append(json.dumps(record, ensure_ascii=False))
    path = Path(run_dir) / PREDICTIONS_FILE
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path


def read_predictions(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of ``<run_dir>/predictions.jsonl``."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {PREDICTIONS_FILE} in {run_dir}: run the evaluation stage first")
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, ValueError) as error:
        raise CorruptFileError(f"{path} cannot be read ({type(error).__name__}: {error}); {REDO_EVALUATION}") from None


def write_metrics(run_dir: str | Path, metrics: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Write ``<run_dir>/metrics.json`` as {"metrics": flat values, "metadata": ...}."""
    path = Path(run_dir) / METRICS_FILE
    atomic_write_text(path, json.dumps({"metrics": metrics, "metadata": metadata}, indent=2, sort_keys=True) + "\n")
    return path


def read_metrics(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, metadata) of ``<run_dir>/metrics.json``; empty dicts when it does not exist."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return {}, {}
    content = read_json_file(path, "metrics file", REDO_EVALUATION)
    if not isinstance(content, dict) or not {"metrics", "metadata"} <= set(content):
        raise CorruptFileError(f"{path} lacks its metrics/metadata sections; {REDO_EVALUATION}")
    return content["metrics"], content["metadata"]
