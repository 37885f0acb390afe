"""The normalised record type, the shared adapter base and the adapter registry.

Every dataset of the papers (f-DISTILL Table 6; GKD; AKL/MiniLLM for Dolly) becomes a list of
:class:`Example` records through one :class:`DatasetAdapter` subclass. An adapter reads either the
Hugging Face hub copy (``datasets.load_dataset``) or a local folder in the dataset's official
release layout (``data_dir``); both produce the same raw rows, so one ``convert`` method per dataset
turns rows into examples and validates their fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

from fdistill.errors import FdistillError

SPLITS = ("train", "validation", "test")

# The one place where split names of the releases map to ours (DART: dev, Commonsense-Dialogues:
# valid, the seq2seq .source/.target layout: val).
SPLIT_ALIASES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "dev": "validation",
    "val": "validation",
    "test": "test",
}


class DataError(FdistillError, ValueError):
    """A dataset cannot be loaded as asked: bad name, split, parameter, schema or an empty split."""


class MissingDataFileError(DataError, FileNotFoundError):
    """A file of the expected release layout is not in ``data_dir``."""


@dataclass(frozen=True)
class Example:
    """One model input with all its references.

    ``references`` holds every reference (DART has several per triple set; validation/test of the
    synthetic task hold all K verbalisations); training uses one pair per reference
    (:func:`training_pairs`). ``meta`` keeps raw fields for reporting and must stay JSON-serialisable.
    """

    id: str
    source: str
    references: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        references = tuple(self.references)
        if not references or not all(isinstance(ref, str) for ref in references):
            raise DataError(f"example {self.id!r}: references must be a non-empty list of strings, got {self.references!r}")
        if not isinstance(self.source, str):
            raise DataError(f"example {self.id!r}: source must be a string, got {type(self.source).__name__}")
        object.__setattr__(self, "references", references)


def training_pairs(examples: Sequence[Example]) -> list[tuple[str, str, str]]:
    """``(id, source, target)`` with one pair per reference (f-DISTILL: one example per reference for
    training); the example id repeats for multi-reference examples so pairs can be joined back."""
    return [(example.id, example.source, reference) for example in examples for reference in example.references]


def canonical_split(split: str) -> str:
    """Map ``train``/``validation``/``test`` and the release aliases (dev, valid, val) to our names."""
    try:
        return SPLIT_ALIASES[split]
    except (KeyError, TypeError):
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} (aliases: dev, valid, val)") from None


def require_field(row: Mapping[str, Any], name: str, expected_type: type | tuple[type, ...], where: str) -> Any:
    """``row[name]`` checked for presence and type; the error names the record and the field."""
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if name not in row:
        raise DataError(f"{where}: missing field {name!r} (fields present: {sorted(row)})")
    value = row[name]
    if not isinstance(value, expected_type):
        wanted = getattr(expected_type, "__name__", None) or " or ".join(t.__name__ for t in expected_type)
        raise DataError(f"{where}: field {name!r} must be {wanted}, got {type(value).__name__}: {value!r:.80}")
    return value


def existing_file(data_dir: Path, file_name: str, dataset: str) -> Path:
    """``data_dir / file_name``, or an error naming the file the release layout expects."""
    path = data_dir / file_name
    if not path.is_file():
        if data_dir.is_dir():
            present = sorted(entry.name for entry in data_dir.iterdir())
        else:
            present = "it is a file, not a folder" if data_dir.exists() else "folder does not exist"
        raise MissingDataFileError(
            f"{dataset}: expected {path} (official release layout); found in {data_dir}: {present}. "
            f"Point dataset.data_dir at the folder holding the release files."
        )
    return path


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 ({error})") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None


def read_jsonl(path: Path) -> list[Any]:
    rows = []
    for line_number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{line_number}: not a valid JSON line ({error})") from None
    return rows


def read_lines(path: Path) -> list[str]:
    """Lines without their newline (a final newline does not start an extra line)."""
    lines = read_text(path).split("\n")
    return lines[:-1] if lines[-1] == "" else lines


class DatasetAdapter:
    """Base of all adapters: split mapping, hub/local dispatch, ``limit`` and error reporting.

    Subclasses set ``name``, ``hub_id`` (``hub_config``, ``hub_splits``), ``local_files`` (split ->
    release file name), ``defaults`` (their own parameters) and implement ``parse_file`` (release
    file -> raw rows) and ``convert`` (one raw row -> examples, fields validated). ``select_rows``
    derives splits or subsamples (WMT16, Dolly).
    """

    name: ClassVar[str]
    hub_id: ClassVar[str | None] = None
    hub_config: ClassVar[str | None] = None
    hub_splits: ClassVar[dict[str, str]] = {split: split for split in SPLITS}
    local_files: ClassVar[dict[str, str]] = {}
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, data_dir: str | Path | None = None, *, limit: int | None = None,
                 hub_id: str | None = None, hub_config: str | None = None, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            accepted = ", ".join(["limit", "hub_id", "hub_config", *self.defaults])
            raise DataError(f"dataset {self.name!r}: unknown parameter(s) {unknown}; accepted: {accepted}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise DataError(f"dataset {self.name!r}: limit must be a non-negative integer or null, got {limit!r}")
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self.limit = limit
        self.hub_id = hub_id or type(self).hub_id
        self.hub_config = hub_config or type(self).hub_config
        self.params = {**self.defaults, **params}

    def load(self, split: str) -> list[Example]:
        """Normalised examples of one split: deterministic split/subsample first, then ``limit``."""
        split = canonical_split(split)
        rows, origin = self.read_rows(split)
        indices = self.select_rows(split, len(rows))
        examples = list(islice(self.iter_examples(rows, indices, origin, split), self.limit))
        if not examples and self.limit != 0:
            raise DataError(f"{origin}: split {split!r} of dataset {self.name!r} has no examples")
        return examples

    def iter_examples(self, rows: Sequence[Any], indices: Sequence[int], origin: str, split: str) -> Iterator[Example]:
        for index in indices:
            yield from self.convert(rows[index], index, f"{origin} record {index}", split)

    def select_rows(self, split: str, num_rows: int) -> Sequence[int]:
        """Indices of the rows that form ``split`` (all by default)."""
        return range(num_rows)

    def read_rows(self, split: str) -> tuple[Sequence[Any], str]:
        """Raw rows of ``split`` and where they came from (a file path or the hub id)."""
        return self.read_local(split) if self.data_dir is not None else self.read_hub(split)

    def read_local(self, split: str) -> tuple[Sequence[Any], str]:
        """Rows of ``split`` from the release file ``local_files[split]`` in ``self.data_dir``."""
        path = existing_file(self.data_dir, self.local_files[split], self.name)
        return self.parse_file(path), str(path)

    def parse_file(self, path: Path) -> Sequence[Any]:
        """Raw rows of one release file."""
        raise NotImplementedError

    def read_hub(self, split: str) -> tuple[Sequence[Any], str]:
        """Rows of ``split`` from the Hugging Face hub (needs network access; not run in tests)."""
        from datasets import load_dataset

        hub_split = self.hub_splits[split]
        origin = f"hub {self.hub_id}" + (f" ({self.hub_config})" if self.hub_config else "") + f" split {hub_split}"
        try:
            return load_dataset(self.hub_id, self.hub_config, split=hub_split), origin
        except Exception as error:
            raise DataError(f"{self.name}: could not load {origin} ({type(error).__name__}: {error}); without hub "
                            f"access set dataset.data_dir to a folder with the release files "
                            f"{sorted(set(self.local_files.values()))}") from error

    def convert(self, row: Any, index: int, where: str, split: str) -> Iterator[Example]:
        """Examples made from one raw row; ``where`` names the file/hub record for error messages."""
        raise NotImplementedError


ADAPTERS: dict[str, type[DatasetAdapter]] = {}


def register(adapter: type[DatasetAdapter]) -> type[DatasetAdapter]:
    """Class decorator: make ``adapter`` loadable as ``load_examples(adapter.name, ...)``."""
    ADAPTERS[adapter.name] = adapter
    return adapter


def available_datasets() -> list[str]:
    return sorted(ADAPTERS)


def load_examples(name: str, split: str, data_dir: str | Path | None = None, **overrides: Any) -> list[Example]:
    """Normalised records of one split of dataset ``name`` (see ``conf/dataset/<name>.yaml``).

    ``data_dir`` selects a local folder in the official release layout instead of the hub;
    ``overrides``: ``limit`` (first N examples after the deterministic split), ``hub_id``/``hub_config``
    (null = the adapter's default) and the adapter's own parameters (e.g. ``seed``; synthetic: ``num_modes``, ``mode_skew``, sizes).
    """
    if name not in ADAPTERS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    return ADAPTERS[name](data_dir, **overrides).load(split)


def load_from_config(dataset_config: Mapping[str, Any], split: str) -> list[Example]:
    """``load_examples`` driven by a ``conf/dataset/<name>.yaml`` node as a plain mapping (name,
    hub_id, hub_config, data_dir, limit per split, params; other keys are the runner's)."""
    split = canonical_split(split)
    limits = dataset_config.get("limit") or {}
    return load_examples(
        dataset_config["name"],
        split,
        data_dir=dataset_config.get("data_dir"),
        limit=limits.get(split),
        hub_id=dataset_config.get("hub_id"),
        hub_config=dataset_config.get("hub_config"),
        **dict(dataset_config.get("params") or {}),
    )
