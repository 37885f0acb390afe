"""The output heads of the supported architectures, for the fused lm-head losses (``divergences/fused.py``).

The model's own forward pass runs unchanged up to its head: for that one call :func:`captured_head_input`
puts a stand-in in place of ``lm_head`` that records its input (the hidden states after any
model-specific scaling, e.g. T5's ``d_model**-0.5`` with tied embeddings) and returns a ``[..., 1]`` dummy,
so the logits are never formed; calling the model itself keeps DDP's gradient synchronisation. What the
head then computes is described by :func:`output_head`: weight (tied or not), bias (BART's
``final_logits_bias``), soft-cap (Gemma 2's ``final_logit_softcapping``). Architectures are listed only
where a test asserts that the fused loss equals the one on the model's logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from fdistill.divergences.fused import LinearHead

#: model types whose head is reproduced exactly (tests/test_models_heads.py)
FUSED_HEAD_MODEL_TYPES = ("bart", "t5", "gpt2", "llama", "gemma2")


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def supports_fused_head(model: nn.Module) -> bool:
    return _unwrap(model).config.model_type in FUSED_HEAD_MODEL_TYPES


def output_head(model: nn.Module, vocab_size: int | None = None) -> LinearHead:
    """The head that maps the captured hidden states to the model's logits; the first `vocab_size` rows
    only when given (a vocabulary padded beyond the tokenizer's)."""
    inner = _unwrap(model)
    if not supports_fused_head(inner):
        raise ValueError(f"no fused head for model_type {inner.config.model_type!r}; supported: {FUSED_HEAD_MODEL_TYPES}")
    linear = inner.get_output_embeddings()
    bias = linear.bias
    if inner.config.model_type == "bart":
        bias = inner.final_logits_bias[0] if bias is None else bias + inner.final_logits_bias[0]
    softcap = getattr(inner.config.get_text_config(), "final_logit_softcapping", None)
    weight = linear.weight
    if vocab_size is not None and vocab_size < weight.shape[0]:
        weight, bias = weight[:vocab_size], None if bias is None else bias[:vocab_size]
    return LinearHead(weight, bias, softcap)


class _HeadInputCapture(nn.Module):
    """Stands in for ``lm_head`` for one forward: records its input, returns a [..., 1] dummy."""

    def __init__(self) -> None:
        super().__init__()
        self.captured: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.captured = hidden
        return hidden.new_zeros(()).expand(*hidden.shape[:-1], 1)


@contextmanager
def captured_head_input(model: nn.Module) -> Iterator[_HeadInputCapture]:
    """Within the block, the model's forward records its head's input instead of computing logits."""
    inner = _unwrap(model)
    original = inner.get_output_embeddings()
    capture = _HeadInputCapture()
    bias = getattr(inner, "final_logits_bias", None) if inner.config.model_type == "bart" else None
    inner.lm_head = capture
    if bias is not None:
        inner.final_logits_bias = bias.new_zeros(1, 1)
    try:
        yield capture
    finally:
        inner.lm_head = original
        if bias is not None:
            inner.final_logits_bias = bias
