"""Commonsense-Dialogues response generation (Zhou et al., 2021; f-DISTILL Sec. 3.1, Table 6).

One example per turn: the input is the social context followed by the previous turns (the first
turn is generated from the context alone), the reference is the turn itself. This gives Table 6's
51,831 / 6,619 / 6,610 examples. Turns are joined with ``turn_separator`` (default a newline;
f-DISTILL's DialoGPT runs joined them with the tokenizer's ``<|endoftext|>``, which the models
package may pass here).

Local layout (``data_dir``): the official ``{train,valid,test}.json``, each a JSON object
``dialogue_id -> {context, speaker, turns}``. Hub: there is no canonical Hugging Face copy, so the
hub path downloads the same official files from github.com/alexa/Commonsense-Dialogues (through
the ``datasets`` download cache) and parses them like local files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fdistill.data.base import DataError, DatasetAdapter, Example, read_json, register, require_field

RELEASE_URL = "https://raw.githubusercontent.com/{repository}/main/data/{file_name}"


@register
class CommonsenseDialogueAdapter(DatasetAdapter):
    name = "commonsense_dialogue"
    hub_id = "alexa/Commonsense-Dialogues"  # a GitHub repository, see read_hub
    local_files = {"train": "train.json", "validation": "valid.json", "test": "test.json"}
    defaults = {"turn_separator": "\n"}

    def read_hub(self, split: str) -> tuple[list[tuple[str, Any]], str]:
        """Download the official release file from GitHub (no Hugging Face copy exists)."""
        from datasets import DownloadManager

        url = RELEASE_URL.format(repository=self.hub_id, file_name=self.local_files[split])
        return self.parse_file(Path(DownloadManager().download(url))), url

    def parse_file(self, path: Path) -> list[tuple[str, Any]]:
        data = read_json(path)
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object dialogue_id -> {{context, speaker, turns}}, "
                            f"got {type(data).__name__}")
        return list(data.items())

    def convert(self, row: Any, index: int, where: str, split: str) -> Iterator[Example]:
        dialogue_id, dialogue = row
        where = f"{where} (dialogue {dialogue_id!r})"
        context = require_field(dialogue, "context", str, where)
        speaker = require_field(dialogue, "speaker", str, where)
        turns = require_field(dialogue, "turns", list, where)
        if not turns or not all(isinstance(turn, str) for turn in turns):
            raise DataError(f"{where}: field 'turns' must be a non-empty list of strings, got {turns!r:.120}")
        separator = self.params["turn_separator"]
        for turn_index, turn in enumerate(turns):
            yield Example(
                id=f"cd-{dialogue_id}-{turn_index}",
                source=separator.join([context, *turns[:turn_index]]),
                references=(turn,),
                meta={"dialogue_id": dialogue_id, "turn_index": turn_index, "speaker": speaker, "context": context},
            )
