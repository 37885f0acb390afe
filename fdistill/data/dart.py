"""DART v1.1.1 data-to-text (Nan et al., 2021; f-DISTILL Sec. 3.1 and Table 6).

One example per triple set, with every annotation kept as a reference (multi-reference BLEU etc.);
:func:`fdistill.data.training_pairs` gives one training pair per reference. Triples are linearised
as in the f-DISTILL case study: ``(subject, relation, object), (subject, relation, object)``.

Local layout (``data_dir``): the official release files ``dart-v1.1.1-full-{train,dev,test}.json``,
each a JSON list of ``{tripleset, subtree_was_extended (optional), annotations: [{source, text}]}``.
Hub: ``Yale-LILY/dart`` (the former canonical ``dart``), same fields with ``annotations`` stored
column-wise (``{source: [...], text: [...]}``); both forms are accepted.
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


@register
class DartAdapter(DatasetAdapter):
    name = "dart"
    hub_id = "Yale-LILY/dart"
    local_files = {
        "train": "dart-v1.1.1-full-train.json",
        "validation": "dart-v1.1.1-full-dev.json",
        "test": "dart-v1.1.1-full-test.json",
    }

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
