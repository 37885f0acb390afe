"""Model calls on `SeqCollator` batches: per-target-token logits, generation of targets, hidden states.

`token_logits` and `generate_targets` are two views of one factorisation p(y | x) = Π_t p(y_t | x, y_<t)
(f-DISTILL Eq. 1): the response ids that generation returns, passed to `SeqCollator.from_ids`, are scored
by `token_logits` with exactly the distributions generation sampled them from.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fdistill.models.collate import IGNORE_INDEX
from fdistill.models.heads import captured_head_input
from fdistill.models.student import layer_map as recorded_layer_map


def model_config(model: torch.nn.Module):
    """The config of a model, also through a DDP/accelerate wrapper (which is called, not unwrapped,
    so that gradient synchronisation sees the forward pass)."""
    return getattr(model, "module", model).config


def _decoder_input_ids(model: PreTrainedModel, labels: torch.Tensor) -> torch.Tensor:
    """Labels shifted right behind the model's `decoder_start_token_id`, padding for −100."""
    config = model_config(model)
    start = torch.full_like(labels[:, :1], config.decoder_start_token_id)
    shifted = torch.cat([start, labels[:, :-1]], dim=1)
    return shifted.masked_fill(shifted == IGNORE_INDEX, config.pad_token_id)


def _model_inputs(model: PreTrainedModel, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if model_config(model).is_encoder_decoder:
        inputs["decoder_input_ids"] = _decoder_input_ids(model, batch["labels"])
    else:
        inputs["position_ids"] = batch["position_ids"]
    return inputs


def token_logits(model: PreTrainedModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Logits [B, T, V] with `logits[:, t]` predicting `batch["labels"][:, t]`. Decoder-only models compute
    the LM head only on the last T + 1 positions (`logits_to_keep`) and drop the final one."""
    return token_logits_and_hidden_states(model, batch, output_hidden_states=False)[0]


def token_logits_and_hidden_states(
    model: PreTrainedModel, batch: Mapping[str, torch.Tensor], output_hidden_states: bool = True
) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, ...]]]:
    """`token_logits` and `hidden_states` from one forward pass (one pass per backward under DDP)."""
    if model_config(model).is_encoder_decoder:
        outputs = model(**_model_inputs(model, batch), output_hidden_states=output_hidden_states)
        states = {"encoder": outputs.encoder_hidden_states, "decoder": outputs.decoder_hidden_states}
        return outputs.logits, states if output_hidden_states else {}
    num_targets = batch["labels"].shape[1]
    outputs = model(**_model_inputs(model, batch), logits_to_keep=num_targets + 1,
                    output_hidden_states=output_hidden_states)
    return outputs.logits[:, :-1], {"decoder": outputs.hidden_states} if output_hidden_states else {}


def head_inputs_and_hidden_states(
    model: PreTrainedModel, batch: Mapping[str, torch.Tensor], output_hidden_states: bool = False
) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, ...]]]:
    """What the output head sees at each target position, ``[B, T, H]`` aligned with ``batch["labels"]`` as
    `token_logits`' positions are, from one forward pass of the model itself that never computes the logits
    (`fdistill.models.heads`); with the hidden states of every layer when asked (pre-distillation)."""
    with captured_head_input(model) as capture:
        if model_config(model).is_encoder_decoder:
            outputs = model(**_model_inputs(model, batch), output_hidden_states=output_hidden_states)
            states = {"encoder": outputs.encoder_hidden_states, "decoder": outputs.decoder_hidden_states}
            return capture.captured, states if output_hidden_states else {}
        num_targets = batch["labels"].shape[1]
        outputs = model(**_model_inputs(model, batch), logits_to_keep=num_targets + 1,
                        output_hidden_states=output_hidden_states)
        return capture.captured[:, :-1], {"decoder": outputs.hidden_states} if output_hidden_states else {}


def generate_targets(
    model: PreTrainedModel,
    prompts: Mapping[str, torch.Tensor],
    *,
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    num_return_sequences: int = 1,
    **generate_options,
) -> list[list[int]]:
    """Generate with the KV cache from `SeqCollator.prompts` output and return the response ids per row
    (rows ordered prompt-major: prompt i's j-th sequence is row i * num_return_sequences + j), cut after
    the first eos (kept), without prompt, decoder start token or padding.

    Sampling defaults (temperature 1, no top-k/top-p) draw from the model distribution itself, as the
    on-policy and sampled-teacher regimes of f-DISTILL and GKD require; output rows past the tokenizer's
    vocabulary (padding) are suppressed, which renormalises over the tokenizer's entries as training does. Other entries of the model's
    generation config (e.g. BART's no_repeat_ngram_size) still apply unless overridden in
    `generate_options`, which are passed to `model.generate`.
    """
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {}
    padding_rows = range(len(tokenizer), model.get_output_embeddings().weight.shape[0])
    if len(padding_rows) and "suppress_tokens" not in generate_options:
        # a vocabulary padded beyond the tokenizer (e.g. 151,936 vs 152,064 rows): never emit those ids
        generate_options = {**generate_options, "suppress_tokens": list(padding_rows)}
    input_ids = prompts["input_ids"].to(model.device)
    sequences = model.generate(
        input_ids=input_ids,
        attention_mask=prompts["attention_mask"].to(model.device),
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **{"use_cache": True, **sampling, **generate_options},
    )
    responses = sequences[:, 1:] if model.config.is_encoder_decoder else sequences[:, input_ids.shape[1]:]
    return [cut_after_eos(row, tokenizer.eos_token_id) for row in responses.tolist()]


def cut_after_eos(ids: list[int], eos_token_id: int) -> list[int]:
    """`ids` up to and including the first eos (all of `ids` if there is none)."""
    return ids[: ids.index(eos_token_id) + 1] if eos_token_id in ids else ids


def hidden_states(model: PreTrainedModel, batch: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, ...]]:
    """Hidden states of every layer for a collator batch: {"encoder": …, "decoder": …} for encoder-decoder
    models, {"decoder": …} for decoder-only ones. Index 0 is the embedding output, index k the output of
    layer k − 1 (the last one after the final layer norm where the model has one)."""
    return token_logits_and_hidden_states(model, batch)[1]


def paired_hidden_states(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    batch: Mapping[str, torch.Tensor],
    layer_map: Mapping[str, list[int]] | None = None,
    student_states: Mapping[str, tuple[torch.Tensor, ...]] | None = None,
    teacher_states: Mapping[str, tuple[torch.Tensor, ...]] | None = None,
) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """(student, teacher) hidden-state pairs per stack for pre-distillation: the output of student layer i
    with the output of teacher layer `layer_map[stack][i]` (default: the layer it was copied from). The
    teacher runs without gradients; `student_states` / `teacher_states` reuse forward passes already made."""
    layer_map = recorded_layer_map(getattr(student, "module", student)) if layer_map is None else layer_map
    student_states = hidden_states(student, batch) if student_states is None else student_states
    if teacher_states is None:
        with torch.no_grad():
            teacher_states = hidden_states(teacher, batch)
    for stack, teacher_layers in layer_map.items():
        num_student_layers, num_teacher_layers = len(student_states[stack]) - 1, len(teacher_states[stack]) - 1
        if len(teacher_layers) != num_student_layers or not all(0 <= i < num_teacher_layers for i in teacher_layers):
            raise ValueError(
                f"layer_map[{stack!r}]={list(teacher_layers)} must name one teacher layer in "
                f"[0, {num_teacher_layers - 1}] for each of the student's {num_student_layers} {stack} layers"
            )
    return {
        stack: [
            (student_states[stack][student_layer + 1], teacher_states[stack][teacher_layer + 1])
            for student_layer, teacher_layer in enumerate(teacher_layers)
        ]
        for stack, teacher_layers in layer_map.items()
    }
