"""Student initialisation: "shrink and fine-tune" layer copying (Shleifer & Rush 2020, Sec. 3), a pretrained
checkpoint, or a random model from the teacher's config.

Layer copying builds the student from the teacher's config with fewer layers, copies every non-layer
weight (embeddings, positions, final norms, LM head) and, for student layer i of each stack, the teacher
layer `layers[i]`. The map is stored in the student's config (`fdistill_copied_layers`) so that
pre-distillation can pair hidden states with the layer each student layer came from.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from fdistill.models.architectures import (
    PER_LAYER_CONFIG_KEYS,
    STACKS,
    architecture_of,
    auto_model_class,
    layer_layout,
)

INIT_METHODS = ("layer_copy", "from_pretrained", "from_config")
COPIED_LAYERS_KEY = "fdistill_copied_layers"


def spread_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """Teacher layers spread evenly with the first and the last kept, as in Shleifer & Rush (2020)'s
    layer choice: 12→3 gives [0, 6, 11], 12→6 [0, 2, 4, 7, 9, 11], 12→1 [0] (round half to even, which
    also reproduces their 16→3 and 6→3). Where their hand-made table differs (12→4: [0, 4, 8, 11]), pass
    the list explicitly."""
    if not 1 <= num_student_layers <= num_teacher_layers:
        raise ValueError(
            f"cannot pick {num_student_layers} student layers from {num_teacher_layers} teacher layers; "
            f"choose between 1 and {num_teacher_layers}"
        )
    if num_student_layers == 1:
        return [0]
    step = (num_teacher_layers - 1) / (num_student_layers - 1)
    return [round(index * step) for index in range(num_student_layers)]


def copied_layers(
    stack: str, num_teacher_layers: int, num_student_layers: int | None, layers: Sequence[int] | None
) -> list[int]:
    """Teacher layer indices a student `stack` copies: `layers` if given (validated), else spread evenly
    over `num_student_layers` (default: all teacher layers)."""
    if layers is None:
        return spread_layers(num_teacher_layers, num_teacher_layers if num_student_layers is None else num_student_layers)
    layers = [int(index) for index in layers]
    if num_student_layers is not None and len(layers) != num_student_layers:
        raise ValueError(
            f"student.{stack}_layers={layers} has {len(layers)} entries but "
            f"num_{stack}_layers={num_student_layers}; make them agree (or set one to null)"
        )
    if not layers or any(not 0 <= index < num_teacher_layers for index in layers) or len(set(layers)) != len(layers):
        raise ValueError(
            f"student.{stack}_layers={layers} is invalid: need distinct teacher layer indices in "
            f"[0, {num_teacher_layers - 1}] (the teacher has {num_teacher_layers} {stack} layers)"
        )
    return layers


def plan_layers(
    teacher_counts: Mapping[str, int | None],
    num_layers: Mapping[str, int | None],
    layers: Mapping[str, Sequence[int] | None],
) -> dict[str, list[int]]:
    """Per stack that the teacher has (count not None), the teacher layers the student copies; a stack
    the teacher lacks (the encoder of GPT-2) must not be requested."""
    plan = {}
    for stack in STACKS:
        if teacher_counts[stack] is None:
            if num_layers[stack] or layers[stack]:
                raise ValueError(
                    f"the teacher has no {stack}: set student.num_{stack}_layers and student.{stack}_layers "
                    f"to null (got {num_layers[stack]}, {layers[stack]})"
                )
            continue
        plan[stack] = copied_layers(stack, teacher_counts[stack], num_layers[stack], layers[stack])
    return plan


def checkpoint_layer_counts(config) -> dict[str, int | None]:
    """Layers per stack of a checkpoint's config (None: the architecture has no such stack)."""
    layout = layer_layout(config.model_type)
    return {stack: None if layout.count_key(stack) is None else getattr(config, layout.count_key(stack))
            for stack in STACKS}


def init_student(
    teacher: PreTrainedModel,
    method: str = "layer_copy",
    encoder_layers: Sequence[int] | None = None,
    decoder_layers: Sequence[int] | None = None,
    num_encoder_layers: int | None = None,
    num_decoder_layers: int | None = None,
    name_or_path: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> PreTrainedModel:
    """Create the student for `teacher`.

    method="layer_copy": teacher config with the student's layer counts; embeddings and all non-layer
        weights copied, layer i of each stack copied from teacher layer `*_layers[i]` (default: spread
        evenly over `num_*_layers`; a `None` count keeps the teacher's count). Decoder-only models (GPT-2
        `h` blocks) have only the decoder stack.
    method="from_pretrained": `name_or_path` loaded with the teacher's Auto class (`config_overrides`
        are passed to `from_pretrained`).
    method="from_config": teacher config with the layer counts and overrides, random initialisation.
    The student is returned in train mode, in the teacher's dtype, with the teacher's generation config
    (except for from_pretrained, which keeps its own).
    """
    if method not in INIT_METHODS:
        raise ValueError(f"student init method={method!r} is invalid; expected one of {INIT_METHODS}")
    overrides = dict(config_overrides or {})
    if method == "from_pretrained":
        if name_or_path is None:
            raise ValueError("student.init=from_pretrained needs student.name_or_path (a hub id or local path)")
        model_class = auto_model_class(architecture_of(teacher.config))
        return model_class.from_pretrained(name_or_path, trust_remote_code=False, **overrides).train()

    layout = layer_layout(teacher.config.model_type)
    teacher_counts = checkpoint_layer_counts(teacher.config)
    layer_map = plan_layers(
        teacher_counts,
        {"encoder": num_encoder_layers, "decoder": num_decoder_layers},
        {"encoder": encoder_layers, "decoder": decoder_layers},
    )
    config = copy.deepcopy(teacher.config)
    for stack, layers in layer_map.items():
        setattr(config, layout.count_key(stack), len(layers))
        if stack == "decoder":  # e.g. Llama's layer_types (sliding/full attention) follow the kept layers
            for key in PER_LAYER_CONFIG_KEYS:
                values = getattr(config, key, None)
                if isinstance(values, (list, tuple)) and len(values) == teacher_counts[stack]:
                    setattr(config, key, [values[index] for index in layers])
    for key, value in overrides.items():
        setattr(config, key, value)
    # a new model from the config: its layers are numbered 0..k-1 (`layer_idx`, which the KV cache indexes);
    # copying the teacher's modules instead would keep their original indices and break cached generation
    student = type(teacher)(config).to(teacher.dtype)
    student.generation_config = copy.deepcopy(teacher.generation_config)
    if method == "layer_copy":
        student.load_state_dict(_copied_state_dict(teacher, student, layout, layer_map), strict=True)
        setattr(student.config, COPIED_LAYERS_KEY, layer_map)
    return student.train()


def _copied_state_dict(teacher, student, layout, layer_map: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """The teacher weights for every student state-dict key, with layer indices remapped. A weight that
    only the first block owns (T5's relative position bias) is taken from the teacher's same block."""
    teacher_state = teacher.state_dict()
    patterns = {stack: re.compile(rf"^{re.escape(layout.prefix(stack))}\.(\d+)\.(.+)$") for stack in layer_map}
    copied = {}
    for key in student.state_dict():
        source_key = key
        for stack, pattern in patterns.items():
            match = pattern.match(key)
            if match:
                remapped = f"{layout.prefix(stack)}.{layer_map[stack][int(match.group(1))]}.{match.group(2)}"
                source_key = remapped if remapped in teacher_state else key
        if source_key not in teacher_state:
            raise KeyError(f"layer copy: student weight {key!r} has no counterpart in the teacher")
        copied[key] = teacher_state[source_key].detach().clone()
    return copied


def layer_map(student: PreTrainedModel) -> dict[str, list[int]]:
    """Default pre-distillation layer map: for each stack, the teacher layer each student layer was copied
    from (recorded by `init_student(method="layer_copy")`)."""
    recorded = getattr(student.config, COPIED_LAYERS_KEY, None)
    if recorded is None:
        raise ValueError(
            "this student was not initialised by layer copy, so it has no default layer map; pass "
            "layer_map={'encoder': [...], 'decoder': [...]} (teacher layer per student layer) explicitly"
        )
    return {stack: list(layers) for stack, layers in recorded.items()}
