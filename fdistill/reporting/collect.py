"""Walk Hydra multirun directories and read each job's overrides and ``metrics.json``.

A Hydra job directory holds ``.hydra/overrides.yaml`` (a YAML list such as ``["divergence=js", "seed=1"]``)
and, written by the evaluation stage, ``metrics.json`` of the form
``{"metrics": {name: number | "unavailable: <reason>"}, "metadata": {...}}``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fdistill.files import REPLACED_DIR

LOGGER = logging.getLogger(__name__)
OVERRIDES_RELPATH = Path(".hydra") / "overrides.yaml"
METRICS_FILENAME = "metrics.json"
UNAVAILABLE_PREFIX = "unavailable"


@dataclass
class JobResult:
    """One Hydra job: its overrides (``key -> value`` as written), numeric metrics and unavailable ones."""

    job_dir: Path
    overrides: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


def parse_overrides(entries: list[str]) -> dict[str, str]:
    """Turn Hydra override strings into ``{key: value}``; ``+``/``++``/``~`` prefixes are dropped from keys."""
    parsed = {}
    for entry in entries:
        if not isinstance(entry, str) or "=" not in entry:
            raise ValueError(f"override {entry!r} is not of the form key=value")
        key, value = entry.split("=", 1)
        parsed[key.lstrip("+~")] = value
    return parsed


def split_metrics(raw: dict) -> tuple[dict[str, float], dict[str, str]]:
    """Separate numeric metrics from ``"unavailable: <reason>"`` entries (and other non-numbers, NaN)."""
    numeric, unavailable = {}, {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            text = str(value)
            unavailable[name] = text.split(":", 1)[1].strip() if text.startswith(UNAVAILABLE_PREFIX) else (
                f"non-numeric value {text!r}"
            )
        elif math.isnan(value):
            unavailable[name] = "NaN"
        else:
            numeric[name] = float(value)
    return numeric, unavailable


def read_metrics_file(path: Path) -> tuple[dict, dict]:
    """Return ``(metrics, metadata)`` from a metrics.json; a flat ``{name: value}`` file is accepted too."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    if isinstance(payload.get("metrics"), dict):
        metadata = payload.get("metadata")
        return payload["metrics"], metadata if isinstance(metadata, dict) else {}
    return payload, {}


def find_metrics_file(job_dir: Path) -> Path | None:
    """``job_dir/metrics.json``, else the shallowest metrics.json below the job directory."""
    direct = job_dir / METRICS_FILENAME
    if direct.is_file():
        return direct
    nested = sorted(job_dir.rglob(METRICS_FILENAME), key=lambda path: (len(path.parts), str(path)))
    return nested[0] if nested else None


def natural_key(path: Path) -> list:
    """Sort key where digit runs compare as numbers: Hydra job ``2`` before job ``10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def collect_jobs(multirun_dir: str | Path) -> tuple[list[JobResult], list[Path]]:
    """Read every job below ``multirun_dir`` in sweep order; returns ``(jobs with metrics, job dirs without
    metrics.json)``."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"multirun directory {root} does not exist; pass the folder Hydra wrote (-m)")
    jobs, missing = [], []
    for overrides_file in sorted(root.rglob(str(OVERRIDES_RELPATH)), key=natural_key):
        job_dir = overrides_file.parent.parent
        if REPLACED_DIR in job_dir.relative_to(root).parts:  # results a run replaced (pipeline.on_run_dir_conflict)
            continue
        entries = yaml.safe_load(overrides_file.read_text(encoding="utf-8")) or []
        metrics_file = find_metrics_file(job_dir)
        if metrics_file is None:
            LOGGER.warning("no %s in %s: job skipped (not finished?)", METRICS_FILENAME, job_dir)
            missing.append(job_dir)
            continue
        raw_metrics, metadata = read_metrics_file(metrics_file)
        numeric, unavailable = split_metrics(raw_metrics)
        jobs.append(JobResult(job_dir, parse_overrides(entries), numeric, unavailable, metadata))
    if not jobs and not missing:
        raise FileNotFoundError(f"no {OVERRIDES_RELPATH} found below {root}: is it a Hydra multirun directory?")
    return jobs, missing
