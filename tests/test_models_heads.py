"""Each supported architecture's output head is reproduced exactly: the captured head input through
`output_head` gives the model's own logits (BART's final_logits_bias, T5's d_model**-0.5 with tied
embeddings, GPT-2/Llama tied heads, Gemma 2's soft-cap), and the fused divergence on hidden states equals
the divergence on `token_logits`, values and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig

from fdistill.divergences import get_divergence, masked_mean
from fdistill.models import (
    SeqCollator,
    build_word_tokenizer,
    head_inputs_and_hidden_states,
    output_head,
    supports_fused_head,
    token_logits,
)
from fdistill.models.architectures import auto_model_class, tiny_model_config

WORDS = "the cat dog sat ran on a mat big small red blue".split()


def _model(kind: str, tokenizer, seed: int):
    torch.manual_seed(seed)
    if kind in ("bart", "t5", "gpt2"):
        build = {"model_type": kind, "d_model": 16, "encoder_layers": 1, "decoder_layers": 2, "heads": 2,
                 "ffn_dim": 32, "max_position_embeddings": 64, "dropout": 0.0}
        if kind != "bart":
            build.pop("max_position_embeddings" if kind == "t5" else "encoder_layers")
        config = tiny_model_config(build, tokenizer)
        return auto_model_class("decoder_only" if kind == "gpt2" else "encoder_decoder").from_config(config)
    common = {"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "max_position_embeddings": 64,
              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
              "bos_token_id": tokenizer.bos_token_id, "tie_word_embeddings": True}
    config = LlamaConfig(**common) if kind == "llama" else Gemma2Config(**common, final_logit_softcapping=2.0,
                                                                         query_pre_attn_scalar=8)
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_word_tokenizer(WORDS, tmp_path_factory.mktemp("tok"))


def _batch(tokenizer, encoder_decoder: bool, padded_prompts: bool = True):
    collator = SeqCollator(tokenizer, encoder_decoder, 8, 6)
    sources = ["the cat sat", "a big red dog ran on the mat"] if padded_prompts else ["the cat sat", "a dog ran"]
    return collator.from_text(sources, ["cat sat on a mat", "dog"])


@pytest.mark.parametrize("kind", ["bart", "t5", "gpt2", "llama", "gemma2"])
def test_the_captured_head_input_gives_the_models_logits(tokenizer, kind):
    model = _model(kind, tokenizer, 0).double().eval()
    assert supports_fused_head(model)
    # Gemma 2 in transformers 5 gives NaN for left-padded prompts (0 x NaN from fully masked rows), logits too
    batch = _batch(tokenizer, model.config.is_encoder_decoder, padded_prompts=kind != "gemma2")
    hidden, _ = head_inputs_and_hidden_states(model, batch)
    head = output_head(model)
    logits = hidden @ head.weight.T + (0 if head.bias is None else head.bias)
    if head.softcap is not None:
        logits = head.softcap * torch.tanh(logits / head.softcap)
    torch.testing.assert_close(logits, token_logits(model, batch), rtol=1e-12, atol=1e-12)
    assert model.get_output_embeddings() is not None and not hasattr(model.get_output_embeddings(), "captured")


@pytest.mark.parametrize("kind", ["bart", "t5", "gpt2", "llama", "gemma2"])
@pytest.mark.parametrize("name", ["kl", "js", "tvd"])
def test_fused_loss_equals_the_loss_on_the_models_logits(tokenizer, kind, name):
    student, teacher = (_model(kind, tokenizer, seed).double() for seed in (1, 2))
    batch = _batch(tokenizer, student.config.is_encoder_decoder, padded_prompts=kind != "gemma2")
    valid = batch["labels"] != -100
    div = get_divergence(name)
    reference = masked_mean(div.per_token(token_logits(student, batch), token_logits(teacher, batch).detach()), valid)
    expected = torch.autograd.grad(reference, list(student.parameters()), allow_unused=True)
    hidden, _ = head_inputs_and_hidden_states(student, batch)
    with torch.no_grad():
        teacher_hidden, _ = head_inputs_and_hidden_states(teacher, batch)
    s_head, t_head = output_head(student), output_head(teacher)
    values = div.fused(hidden, s_head.weight, teacher_hidden, t_head.weight, student_bias=s_head.bias,
                       teacher_bias=t_head.bias, student_softcap=s_head.softcap, teacher_softcap=t_head.softcap,
                       mask=valid)
    fused = masked_mean(values, valid)
    grads = torch.autograd.grad(fused, list(student.parameters()), allow_unused=True)
    torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-12)
    for (name_, _), mine, wanted in zip(student.named_parameters(), grads, expected, strict=True):
        if wanted is None:
            assert mine is None or torch.count_nonzero(mine) == 0, name_
        else:
            torch.testing.assert_close(mine, wanted, rtol=1e-9, atol=1e-11, msg=name_)
