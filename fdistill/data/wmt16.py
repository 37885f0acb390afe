"""WMT16 English -> Romanian translation (Bojar et al., 2016; f-DISTILL Sec. 3.1).

The training split is subsampled to ``train_size`` pairs (default 100K, as in f-DISTILL) with a fixed
``seed``; the kept pairs stay in file order. Validation and test are the full newsdev/newstest sets.

Local layout (``data_dir``): the line-aligned ``{train,val,test}.{source,target}`` files of the
transformers seq2seq examples (English ``.source``, Romanian ``.target``, one sentence per line).
Hub: ``wmt/wmt16`` (the former canonical ``wmt16``), config ``ro-en``, fields ``translation.en`` /
``translation.ro``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from fdistill.data.base import (
    DataError,
    DatasetAdapter,
    Example,
    existing_file,
    read_lines,
    register,
    require_field,
)

SOURCE_LANGUAGE, TARGET_LANGUAGE = "en", "ro"


@register
class Wmt16EnRoAdapter(DatasetAdapter):
    name = "wmt16_en_ro"
    hub_id = "wmt/wmt16"
    hub_config = "ro-en"
    local_files = {"train": "train", "validation": "val", "test": "test"}  # + .source / .target
    defaults = {"train_size": 100_000, "seed": 42}

    def read_local(self, split: str) -> tuple[list[dict[str, Any]], str]:
        stem = self.local_files[split]
        source_path = existing_file(self.data_dir, f"{stem}.source", self.name)
        target_path = existing_file(self.data_dir, f"{stem}.target", self.name)
        sources, targets = read_lines(source_path), read_lines(target_path)
        if len(sources) != len(targets):
            raise DataError(f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}; "
                            f"the .source/.target files must be line-aligned")
        rows = [{"translation": {SOURCE_LANGUAGE: source, TARGET_LANGUAGE: target}} for source, target in zip(sources, targets, strict=True)]
        return rows, f"{self.data_dir / stem}.{{source,target}}"

    def select_rows(self, split: str, num_rows: int) -> Sequence[int]:
        """Train: a seeded subsample of ``train_size`` pairs (all pairs when there are fewer)."""
        train_size = self.params["train_size"]
        if split != "train" or train_size is None or num_rows <= train_size:
            return range(num_rows)
        return sorted(random.Random(self.params["seed"]).sample(range(num_rows), train_size))

    def convert(self, row: Any, index: int, where: str, split: str) -> Iterator[Example]:
        translation = require_field(row, "translation", dict, where)
        source = require_field(translation, SOURCE_LANGUAGE, str, f"{where} field 'translation'")
        target = require_field(translation, TARGET_LANGUAGE, str, f"{where} field 'translation'")
        if not source.strip() or not target.strip():
            raise DataError(f"{where}: empty {'source' if not source.strip() else 'target'} sentence")
        yield Example(id=f"wmt16_en_ro-{split}-{index}", source=source, references=(target,), meta={"row": index})
