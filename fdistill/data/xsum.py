"""XSum extreme summarisation (Narayan et al., 2018; f-DISTILL Table 6: 204,045 / 11,332 / 11,334).

Local layout (``data_dir``): one JSON-lines file per split named like the hub splits,
``{train,validation,test}.jsonl``, each line ``{"document", "summary", "id"}`` -- what
``datasets.load_dataset("EdinburghNLP/xsum")[split].to_json(...)`` writes, and the schema of
``shared/data/xsum``. (The BBC-download layout with ``XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json`` is
not supported: convert it to JSON lines first.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fdistill.data.base import DatasetAdapter, Example, read_jsonl, register, require_field


@register
class XsumAdapter(DatasetAdapter):
    name = "xsum"
    hub_id = "EdinburghNLP/xsum"
    local_files = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}

    def parse_file(self, path: Path) -> list[Any]:
        return read_jsonl(path)

    def convert(self, row: Any, index: int, where: str, split: str) -> Iterator[Example]:
        document = require_field(row, "document", str, where)
        summary = require_field(row, "summary", str, where)
        bbc_id = require_field(row, "id", (str, int), where)
        yield Example(id=f"xsum-{bbc_id}", source=document, references=(summary,), meta={"bbc_id": str(bbc_id)})
