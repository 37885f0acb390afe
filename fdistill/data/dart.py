"""DART v1.1.1 data-to-text (Nan et al., 2021; f-DISTILL Sec. 3.1 and Table 6).

One example per triple set, with every annotation kept as a reference (multi-reference BLEU etc.);
:func:`fdistill.data.training_pairs` gives one training pair per reference. Triples are linearised
as in the f-DISTILL case study: ``(subject, relation, object), (subject, relation, object)``.

Local layout (``data_dir``): the official release files ``dart-v1.1.1-full-{train,dev,test}.json``,
each a JSON list of ``{tripleset, subtree_was_extended (optional), annotations: [{source, text}]}``.
Hub: ``Yale-LILY/dart`` (the former canonical ``dart``), same fields with ``annotations`` stored
column-wise (``{source: [...], text: [...]}``); both forms are accepted.

``resplit_dev`` (parameter; off by default): make all three splits from the dev file alone, for machines
that hold only the dev split (``../shared/data/dart`` has 2,768 dev inputs). A seeded permutation of the
distinct triple sets gives ``test`` inputs first, then ``validation``, the rest is ``train``: disjoint by
content (a triple set that occurs several times in the file, and all its references, stay in one split),
the same on every machine for the same seed and sizes (sizes count distinct triple sets).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fdistill.data.base import DataError, DatasetAdapter, Example, read_json, register, require_field


def linearise_triples(triples: Sequence[Sequence[str]]) -> str:
    """``[(s, r, o), ...]`` -> ``"(s, r, o), (s, r, o)"`` (f-DISTILL case study format)."""
    return ", ".join(f"({subject}, {relation}, {obj})" for subject, relation, obj in triples)


def _annotation_columns(annotations: Any, where: str) -> tuple[list[str], list[str]]:
    """(sources, texts) from the release form (list of objects) or the hub form (dict of columns)."""
    if isinstance(annotations, Mapping):
        texts = require_field(annotations, "text", list, f"{where} field 'annotations'")
        sources = list(annotations.get("source") or [""] * len(texts))
    else:
        texts = [require_field(annotation, "text", str, f"{where} annotation {number}")
                 for number, annotation in enumerate(annotations)]
        sources = [annotation.get("source", "") for annotation in annotations]
    if not texts:
        raise DataError(f"{where}: field 'annotations' is empty; every triple set needs at least one reference text")
    if not all(isinstance(text, str) for text in texts):
        raise DataError(f"{where}: field 'annotations' has a non-string 'text'")
    return sources, texts


RESPLIT_KEYS = ("seed", "validation", "test")


@register
class DartAdapter(DatasetAdapter):
    name = "dart"
    hub_id = "Yale-LILY/dart"
    local_files = {
        "train": "dart-v1.1.1-full-train.json",
        "validation": "dart-v1.1.1-full-dev.json",
        "test": "dart-v1.1.1-full-test.json",
    }
    #: resplit_dev: null, or {seed, validation, test}: sizes (in inputs) of the splits cut from the dev file
    defaults = {"resplit_dev": None}

    def _resplit(self) -> dict | None:
        resplit = self.params["resplit_dev"]
        if resplit is None:
            return None
        resplit = dict(resplit)
        if sorted(resplit) != sorted(RESPLIT_KEYS) or not all(
                isinstance(resplit[key], int) and not isinstance(resplit[key], bool) and resplit[key] >= 0
                for key in RESPLIT_KEYS):
            raise DataError(f"dart: resplit_dev={resplit!r} must be {{seed, validation, test}} with non-negative "
                            "integers (validation/test: inputs cut from the dev file; the rest is train)")
        return resplit

    def read_rows(self, split: str):
        rows, origin = super().read_rows("validation" if self._resplit() is not None else split)
        self._rows = rows
        return rows, origin

    def select_rows(self, split: str, num_rows: int):
        resplit = self._resplit()
        if resplit is None:
            return range(num_rows)
        import json

        import numpy as np

        groups: dict[str, list[int]] = {}
        for index, row in enumerate(self._rows):
            groups.setdefault(json.dumps(row.get("tripleset") if isinstance(row, Mapping) else index), []).append(index)
        keys = list(groups)
        held_out = resplit["validation"] + resplit["test"]
        if held_out >= len(keys):
            raise DataError(f"dart: resplit_dev holds out {held_out} of the dev file's {len(keys)} distinct triple "
                            "sets; nothing would be left for train")
        order = np.random.default_rng(resplit["seed"]).permutation(len(keys))
        parts = {"test": order[: resplit["test"]], "validation": order[resplit["test"]:held_out],
                 "train": order[held_out:]}
        return sorted(index for position in parts[split] for index in groups[keys[int(position)]])

    def parse_file(self, path: Path) -> list[Any]:
        data = read_json(path)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of {{tripleset, annotations}} records, got {type(data).__name__}")
        return data

    def convert(self, row: Any, index: int, where: str, split: str) -> Iterator[Example]:
        tripleset = require_field(row, "tripleset", list, where)
        if not tripleset:
            raise DataError(f"{where}: field 'tripleset' is empty")
        for number, triple in enumerate(tripleset):
            if not (isinstance(triple, (list, tuple)) and len(triple) == 3 and all(isinstance(part, str) for part in triple)):
                raise DataError(f"{where}: field 'tripleset' entry {number} must be [subject, relation, object] strings, got {triple!r}")
        sources, texts = _annotation_columns(require_field(row, "annotations", (list, Mapping), where), where)
        yield Example(
            id=f"dart-{split}-{index}",
            source=linearise_triples(tripleset),
            references=tuple(texts),
            meta={
                "tripleset": [list(triple) for triple in tripleset],
                "annotation_sources": sources,
                "subtree_was_extended": row.get("subtree_was_extended"),
            },
        )
