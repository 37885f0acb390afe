"""databricks-dolly-15k instruction following (AKL, DistiLLM; split as in MiniLLM).

The release is one file; it is split with a fixed ``seed`` into ``num_test`` (500) test,
``num_validation`` (500) validation and the rest (~14K) train examples, each split kept in file
order. Prompts use the MiniLLM (Alpaca-style) template, with the ``### Input:`` section only when
the record has a non-blank ``context``; the ``response`` is the single reference.

Local layout (``data_dir``): the official ``databricks-dolly-15k.jsonl`` (``instruction``,
``context``, ``response``, ``category``). Hub: ``databricks/databricks-dolly-15k`` (one ``train`` split).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fdistill.data.base import SPLITS, DataError, DatasetAdapter, Example, read_jsonl, register, require_field

# MiniLLM tools/process_data_dolly.py templates (microsoft/LMOps), non-chat models.
PROMPT_WITHOUT_CONTEXT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_CONTEXT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
)
RELEASE_FILE = "databricks-dolly-15k.jsonl"


def dolly_prompt(instruction: str, context: str) -> str:
    """The MiniLLM prompt for one record (context section only when the context is non-blank)."""
    if context.strip():
        return PROMPT_WITH_CONTEXT.format(instruction=instruction, context=context)
    return PROMPT_WITHOUT_CONTEXT.format(instruction=instruction)


@register
class DollyAdapter(DatasetAdapter):
    name = "dolly"
    hub_id = "databricks/databricks-dolly-15k"
    hub_splits = {split: "train" for split in SPLITS}
    local_files = {split: RELEASE_FILE for split in SPLITS}
    defaults = {"seed": 42, "num_validation": 500, "num_test": 500}

    def parse_file(self, path: Path) -> list[Any]:
        return read_jsonl(path)

    def select_rows(self, split: str, num_rows: int) -> Sequence[int]:
        """Seeded shuffle of the whole release: test first, then validation, the rest is train."""
        num_test, num_validation = self.params["num_test"], self.params["num_validation"]
        if num_rows <= num_test + num_validation:
            raise DataError(f"dolly: the release has {num_rows} records, too few for {num_test} test + "
                            f"{num_validation} validation + a non-empty train split; lower num_test/num_validation")
        order = list(range(num_rows))
        random.Random(self.params["seed"]).shuffle(order)
        bounds = {"test": (0, num_test), "validation": (num_test, num_test + num_validation),
                  "train": (num_test + num_validation, num_rows)}
        start, stop = bounds[split]
        return sorted(order[start:stop])

    def convert(self, row: Any, index: int, where: str, split: str) -> Iterator[Example]:
        instruction = require_field(row, "instruction", str, where)
        context = require_field(row, "context", str, where)
        response = require_field(row, "response", str, where)
        category = require_field(row, "category", str, where)
        yield Example(
            id=f"dolly-{index}",
            source=dolly_prompt(instruction, context),
            references=(response,),
            meta={"category": category, "instruction": instruction, "context": context},
        )
