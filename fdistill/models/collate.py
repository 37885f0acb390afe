"""Batches for both architectures with one label convention, so training code is architecture-agnostic.

A training pair is (source ids, target ids); target ids end with eos. In every batch `labels[b, t]` is
target token t of row b (−100 on padding), and `token_logits(model, batch)[b, t]` is the distribution
that predicts it.

encoder-decoder (BART, T5): `input_ids` = source ids (with the tokenizer's special tokens), right padded.
    The batch holds no `decoder_input_ids`: `token_logits` shifts the labels right with the model's own
    `decoder_start_token_id` (as `model(**batch)` does in transformers), so one batch serves any model
    of the pair.
decoder-only (GPT-2, DialoGPT, Llama): with ``prompt_format="plain"`` the prompt is [instruction +] source
    + [separator], where the separator is the tokenizer's sep token or, if it has none, eos (DialoGPT's
    turn separator); with ``"chat"`` it is the tokenizer's chat template around one user turn holding
    [instruction +] source, ending with the assistant's turn opening (an instruct model's own format;
    the target then ends with its end-of-turn eos). Each row is left-padded prompt | right-padded target,
    so the targets of all rows start at the same column and `labels` is exactly the target part; prompt
    and padding never carry labels. `position_ids` count real tokens only, as in generation from
    left-padded prompts.

Truncation (GKD Table A.1: e.g. XSum input 1024, output 64): sources keep their first tokens (decoder-only:
`max_source_length` includes the separator); text targets keep their first `max_target_length - 1`
tokens plus eos; id targets (samples) are cut to `max_target_length`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def _as_id_lists(rows: Sequence[Sequence[int]]) -> list[list[int]]:
    return [[int(token) for token in row] for row in rows]


def _pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(row) for row in rows)
    padded = [[value] * (width - len(row)) + row if left else row + [value] * (width - len(row)) for row in rows]
    return torch.tensor(padded, dtype=torch.long)


def _mask(rows: list[list[int]], left: bool = False) -> torch.Tensor:
    return _pad([[1] * len(row) for row in rows], 0, left=left)


PROMPT_FORMATS = ("plain", "chat")
_PLACEHOLDER = "\x00fdistill-source\x00"


class SeqCollator:
    """Tokenise, truncate and pad (source, target) pairs for `tokenizer`'s model (see module docstring)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        is_encoder_decoder: bool,
        max_source_length: int,
        max_target_length: int,
        prompt_format: str = "plain",
        instruction: str | None = None,
    ):
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("SeqCollator needs a tokenizer with pad and eos tokens; load it with load_tokenizer")
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format={prompt_format!r}; expected one of {PROMPT_FORMATS}")
        if prompt_format == "chat" and (is_encoder_decoder or not getattr(tokenizer, "chat_template", None)):
            raise ValueError("prompt_format='chat' needs a decoder-only model whose tokenizer has a chat template; "
                             "use prompt_format='plain'")
        minimum_source = 1 if is_encoder_decoder else 2
        if max_source_length < minimum_source or max_target_length < 1:
            raise ValueError(
                f"max_source_length={max_source_length} / max_target_length={max_target_length} too small: "
                f"need ≥ {minimum_source} and ≥ 1"
            )
        self.tokenizer = tokenizer
        self.is_encoder_decoder = is_encoder_decoder
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        self.separator_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else self.eos_id
        self.prompt_format, self.instruction = prompt_format, instruction or ""
        self._chat_frame = self._chat_template_frame() if prompt_format == "chat" else None

    def _chat_template_frame(self) -> tuple[list[int], list[int]]:
        """Token ids of the chat template before and after the user turn's content (one placeholder turn
        rendered and split, so truncation never cuts into the template)."""
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": _PLACEHOLDER}], tokenize=False,
                                                  add_generation_prompt=True)
        before, after = text.split(_PLACEHOLDER)
        encode = lambda part: self.tokenizer(part, add_special_tokens=False)["input_ids"]  # noqa: E731
        return encode(before), encode(after)

    def encode_sources(self, sources: Sequence[str]) -> list[list[int]]:
        """Source ids as `from_ids` expects them: with the tokenizer's special tokens for encoder-decoder
        models; for decoder-only ones [instruction +] source without special tokens and separator ("plain"),
        or the whole chat-formatted prompt ("chat"); truncated to `max_source_length` in total."""
        texts = [self.instruction + source for source in sources]
        if self.is_encoder_decoder:
            return self.tokenizer(texts, truncation=True, max_length=self.max_source_length)["input_ids"]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        if self._chat_frame is None:
            return [ids[: self.max_source_length - 1] for ids in encoded]
        before, after = self._chat_frame
        budget = self.max_source_length - len(before) - len(after)
        if budget < 1:
            raise ValueError(f"max_source_length={self.max_source_length} leaves no room for the source inside the "
                             f"chat template ({len(before) + len(after)} tokens); raise dataset.max_source_length")
        return [before + ids[:budget] + after for ids in encoded]

    def encode_targets(self, targets: Sequence[str]) -> list[list[int]]:
        """Target ids ending with eos, at most `max_target_length`: the tokenizer's target convention for
        encoder-decoder models (BART: <s> … </s>, T5: … </s>), words + eos for decoder-only ones."""
        if self.is_encoder_decoder:
            encoded = self.tokenizer(text_target=list(targets), truncation=True, max_length=self.max_target_length)
            return encoded["input_ids"]
        encoded = self.tokenizer(list(targets), add_special_tokens=False)["input_ids"]
        return [ids[: self.max_target_length - 1] + [self.eos_id] for ids in encoded]

    def from_text(self, sources: Sequence[str], targets: Sequence[str]) -> dict[str, torch.Tensor]:
        """`from_ids(encode_sources(sources), encode_targets(targets))`."""
        return self.from_ids(self.encode_sources(sources), self.encode_targets(targets))

    def from_ids(
        self, source_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]]
    ) -> dict[str, torch.Tensor]:
        """Training/scoring batch from id lists (e.g. samples from `generate_targets`, not re-tokenised).
        Keys: input_ids, attention_mask, labels [B, T], and position_ids for decoder-only models."""
        if len(source_ids) != len(target_ids) or not len(source_ids):
            raise ValueError(f"from_ids needs equally many sources and targets, ≥ 1 (got {len(source_ids)}, {len(target_ids)})")
        targets = [ids[: self.max_target_length] for ids in _as_id_lists(target_ids)]
        if any(not ids for ids in targets):
            raise ValueError("from_ids got an empty target; every target has at least its eos token")
        labels = _pad(targets, IGNORE_INDEX)
        if self.is_encoder_decoder:
            sources = [ids[: self.max_source_length] for ids in _as_id_lists(source_ids)]
            return {
                "input_ids": _pad(sources, self.pad_id),
                "attention_mask": _mask(sources),
                "labels": labels,
            }
        prompts = self._decoder_prompts(source_ids)
        attention_mask = torch.cat([_mask(prompts, left=True), _mask(targets)], dim=1)
        return {
            "input_ids": torch.cat([_pad(prompts, self.pad_id, left=True), _pad(targets, self.pad_id)], dim=1),
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0),
            "labels": labels,
        }

    def prompts(self, sources: Sequence[str] | Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Generation inputs from texts or source ids: right-padded encoder inputs, or left-padded
        decoder-only prompts ending with the separator. Keys: input_ids, attention_mask."""
        if not len(sources):
            raise ValueError("prompts got no sources")
        source_ids = self.encode_sources(sources) if isinstance(sources[0], str) else _as_id_lists(sources)
        if self.is_encoder_decoder:
            rows = [ids[: self.max_source_length] for ids in source_ids]
            return {"input_ids": _pad(rows, self.pad_id), "attention_mask": _mask(rows)}
        rows = self._decoder_prompts(source_ids)
        return {"input_ids": _pad(rows, self.pad_id, left=True), "attention_mask": _mask(rows, left=True)}

    def _decoder_prompts(self, source_ids: Sequence[Sequence[int]]) -> list[list[int]]:
        if self._chat_frame is not None:  # encode_sources built the whole prompt already
            return [ids[: self.max_source_length] for ids in _as_id_lists(source_ids)]
        return [ids[: self.max_source_length - 1] + [self.separator_id] for ids in _as_id_lists(source_ids)]
