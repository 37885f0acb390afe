"""A run directory bound to the config of its results.

Every run-level stage (distill, evaluate) records in its completion marker ``stages/<stage>.json`` the spec
that determines it (config values and the keys of the artifacts it used) and the content digests of those
artifacts; a stage in progress records the same in ``<work dir>/spec.json``. A re-run compares them before
doing anything: equal → the stage is skipped or resumed; different → :class:`~fdistill.errors.RunDirError`
naming the differing keys (a run dir never returns results of another config under a new label), or,
with ``pipeline.on_run_dir_conflict=archive``, the old contents move to ``.replaced/<UTC time>/`` and the
run starts fresh. A stage that a run skipped (``enabled=false``) leaves a record that conflicts with
nothing, and never replaces the record of a finished one: train now, evaluate later. A record that cannot be
read is an error naming it and the fix. One process at a time may run in a run dir (a lock file, released when
it exits; a refused run names the process that holds it).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fdistill.errors import CorruptFileError, RunDirError
from fdistill.files import REPLACED_DIR, atomic_write_text, read_json_file, write_json_atomic
from fdistill.locks import describe_holder, try_lock
from fdistill.pipeline.cache import config_hash

LOCK_FILE = ".fdistill.lock"
#: ``outputs/runs/<run_name>/latest``: the last single run of that name
LATEST_LINK = "latest"
STAGES_DIR = "stages"
SPEC_FILE = "spec.json"
CONFLICT_POLICIES = ("error", "archive")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values)."""
    if not isinstance(value, Mapping):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def differences(stored: Mapping, current: Mapping) -> list[str]:
    """``key: stored → current`` for every flattened key whose values differ."""
    old, new = flatten(json.loads(json.dumps(stored, default=str))), flatten(json.loads(json.dumps(current, default=str)))
    return [f"{key}: {old.get(key, '<absent>')!r} → {new.get(key, '<absent>')!r}"
            for key in sorted(set(old) | set(new)) if old.get(key, "<absent>") != new.get(key, "<absent>")]


class RunDirectory:
    """The stage records of one run dir (see the module docstring)."""

    def __init__(self, path: Path, on_conflict: str = "error") -> None:
        if on_conflict not in CONFLICT_POLICIES:
            raise ValueError(f"on_conflict={on_conflict!r}; expected one of {CONFLICT_POLICIES}")
        self.path, self.on_conflict = Path(path), on_conflict

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run dir's lock for the block; another process holding it is an error, not a wait."""
        self.path.mkdir(parents=True, exist_ok=True)
        with try_lock(self.path / LOCK_FILE) as free:
            if not free:
                raise RunDirError(f"another fdistill process ({describe_holder(self.path / LOCK_FILE)}) is running in "
                                  f"{self.path}; wait for it to finish (two runs in one run dir would train twice and "
                                  "duplicate every log row), or give this one another hydra.run.dir")
            yield

    def _marker(self, stage: str) -> Path:
        return self.path / STAGES_DIR / f"{stage}.json"

    def _records(self, stage: str, work_dir: Path | None) -> list[tuple[Path, dict]]:
        records = []
        for path in (self._marker(stage), work_dir / SPEC_FILE if work_dir is not None else None):
            if path is not None and path.is_file():
                records.append((path, self._read(path, stage)))
        return records

    def _read(self, path: Path, stage: str) -> dict:
        fix = (f"delete it and re-run (the {stage} stage is then redone; a stage with a checkpoint resumes from it), "
               "or set pipeline.on_run_dir_conflict=archive to start this run dir afresh")
        try:
            record = read_json_file(path, f"the {stage} record", fix)
        except CorruptFileError as error:
            raise RunDirError(str(error)) from None
        if not isinstance(record, dict):
            raise RunDirError(f"the {stage} record {path} is not a JSON object; {fix}")
        return record

    def conflicts(self, stage: str, spec: dict, work_dir: Path | None = None,
                  inputs: Mapping[str, str] | None = None) -> list[str]:
        """Differences between `spec` (and, when given, the input contents) and what the run dir recorded."""
        found = []
        for path, record in self._records(stage, work_dir):
            if record.get("skipped"):  # a stage this run dir skipped holds no results: enabling it is no conflict
                continue
            if "spec" not in record:
                found.append(f"{path} records no spec (made by an older fdistill)")
                continue
            found += [f"{stage}: {line}" for line in differences(record["spec"], spec)]
            if inputs is not None and record.get("inputs", inputs) != inputs:
                found += [f"{stage}: content of input artifact {line}"
                          for line in differences(record.get("inputs", {}), inputs)]
        return found

    def check(self, planned: Mapping[str, tuple[dict, Path | None]]) -> None:
        """Compare every planned ``stage → (spec, work dir)`` with the run dir before any work starts."""
        found = [line for stage, (spec, work_dir) in planned.items() for line in self.conflicts(stage, spec, work_dir)]
        self._resolve(list(dict.fromkeys(found)))

    def _resolve(self, found: list[str]) -> None:
        if not found:
            return
        if self.on_conflict == "archive":
            self.archive()
            return
        shown = "\n  ".join(found[:20]) + (f"\n  ... and {len(found) - 20} more" if len(found) > 20 else "")
        raise RunDirError(
            f"run dir {self.path} holds results of another config:\n  {shown}\nIts results are not reused under the "
            "new config. Give this run another hydra.run.dir, delete that dir, or set "
            "pipeline.on_run_dir_conflict=archive to move its contents to "
            f"{self.path / REPLACED_DIR}/<time> and start fresh")

    def archive(self) -> Path:
        """Move everything except the lock and the open log file to ``.replaced/<UTC time>/``."""
        target = self.path / REPLACED_DIR / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target.mkdir(parents=True, exist_ok=False)
        for entry in self.path.iterdir():
            if entry.name in (LOCK_FILE, REPLACED_DIR) or entry.suffix == ".log":
                continue
            shutil.move(str(entry), target / entry.name)
        return target

    def is_complete(self, stage: str, spec: dict, inputs: Mapping[str, str], work_dir: Path | None = None) -> bool:
        """True when the stage finished under this spec and inputs; a mismatch is resolved (error or archive)."""
        self._resolve(list(dict.fromkeys(self.conflicts(stage, spec, work_dir, inputs))))
        marker = self._marker(stage)
        return marker.is_file() and not self._read(marker, stage).get("skipped", False)

    def record(self, stage: str) -> dict | None:
        """The completion record of `stage` (None when there is none)."""
        marker = self._marker(stage)
        return self._read(marker, stage) if marker.is_file() else None

    def mark_skipped(self, stage: str, info: Mapping[str, Any]) -> None:
        """Record that this run skipped `stage`, unless a finished one is recorded (its results stay bound)."""
        existing = self.record(stage)
        if existing is None or existing.get("skipped"):
            write_json_atomic(self._marker(stage), {**info, "skipped": True})

    def begin(self, stage: str, spec: dict, inputs: Mapping[str, str], work_dir: Path) -> None:
        """Record the spec of a stage that is about to run (a resumed run compares it)."""
        write_json_atomic(work_dir / SPEC_FILE, {"spec": spec, "spec_sha256": config_hash(spec, 64),
                                                 "inputs": dict(inputs)})

    def complete(self, stage: str, spec: dict, inputs: Mapping[str, str], info: Mapping[str, Any]) -> None:
        """Write the completion marker (atomically, last)."""
        write_json_atomic(self._marker(stage), {**info, "spec": spec, "spec_sha256": config_hash(spec, 64),
                                                "inputs": dict(inputs)})

    def link_latest(self) -> None:
        """``<parent>/latest`` → this run dir (relative; replaced atomically)."""
        link = self.path.parent / LATEST_LINK
        temporary = self.path.parent / f".{LATEST_LINK}.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(self.path.name, target_is_directory=True)
        os.replace(temporary, link)

    def write_job_files(self, config_yaml: str, overrides: list[str]) -> None:
        """Hydra's ``.hydra/config.yaml`` and ``.hydra/overrides.yaml`` of this run (reporting reads the latter),
        written only after the run dir was found to hold this config's results."""
        import yaml

        for name, text in (("config.yaml", config_yaml), ("overrides.yaml", yaml.safe_dump(list(overrides)))):
            atomic_write_text(self.path / ".hydra" / name, text)
