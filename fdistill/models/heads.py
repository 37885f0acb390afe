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

#: model types whose head is reproduced exactly (tests/test_models_heads.py); any other architecture whose head
#: is a linear map is found by :func:`supports_fused_head`'s probe (qwen2, qwen3, mistral, phi3, ...)
FUSED_HEAD_MODEL_TYPES = ("bart", "t5", "gpt2", "llama", "gemma2")
#: relative tolerance of the probe (float32 logits of the same matmul, computed twice)
PROBE_TOLERANCE = 1e-4


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def supports_fused_head(model: nn.Module) -> bool:
    """Whether :func:`output_head` reproduces the model's logits from its head input: a verified model type, or
    one whose head passes a probe (its logits on a few tokens equal the linear map of the captured head input,
    so a logit scale, a bias elsewhere or a custom head is caught). Decided by checking the head, not by name;
    remembered on the model."""
    inner = _unwrap(model)
    if hasattr(inner, "teachers"):  # an ensemble's distribution is a mixture, not one linear head
        return False
    if inner.config.model_type in FUSED_HEAD_MODEL_TYPES:
        return True
    if not hasattr(inner, "_fdistill_fused_head"):
        inner._fdistill_fused_head = _probe_head(inner)
    return inner._fdistill_fused_head


@torch.no_grad()
def _probe_head(model: nn.Module) -> bool:
    from fdistill.models.forward import head_inputs_and_hidden_states, token_logits

    if not isinstance(model.get_output_embeddings(), nn.Linear):
        return False
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = (torch.arange(3, 9, device=device) * 7919 % vocab).unsqueeze(0)
    labels = ids[:, 3:]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "position_ids": torch.arange(ids.shape[1], device=device).unsqueeze(0)}
    if model.config.is_encoder_decoder:
        batch = {"input_ids": ids[:, :3], "attention_mask": torch.ones_like(ids[:, :3]), "labels": labels}
    training = model.training
    model.eval()
    try:
        expected = token_logits(model, batch).float()
        hidden, _ = head_inputs_and_hidden_states(model, batch)
        head = output_head_unchecked(model)
        found = (hidden @ head.weight.T).float()
        if head.bias is not None:
            found = found + head.bias.float()
        if head.softcap is not None:
            found = head.softcap * torch.tanh(found / head.softcap)
    except Exception:  # noqa: BLE001 - any failure means the head is not the plain map fdistill assumes
        return False
    finally:
        model.train(training)
    scale = expected.abs().max().clamp_min(1.0)
    return bool(((found - expected).abs().max() <= PROBE_TOLERANCE * scale).item())


def output_head(model: nn.Module, vocab_size: int | None = None) -> LinearHead:
    """The head that maps the captured hidden states to the model's logits; the first `vocab_size` rows
    only when given (a vocabulary padded beyond the tokenizer's)."""
    inner = _unwrap(model)
    if not supports_fused_head(inner):
        raise ValueError(f"no fused head for model_type {inner.config.model_type!r}: its logits are not a linear map "
                         f"of the head input (verified types: {FUSED_HEAD_MODEL_TYPES}; others are probed)")
    return output_head_unchecked(inner, vocab_size)


def output_head_unchecked(model: nn.Module, vocab_size: int | None = None) -> LinearHead:
    """:func:`output_head` without the support check (the probe uses it)."""
    inner = _unwrap(model)
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
        return hidden.new_zeros(*hidden.shape[:-1], 1)  # not a view: FSDP hooks the model's outputs


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
