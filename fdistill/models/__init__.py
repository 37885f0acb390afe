"""Models layer: tokenizers, teacher/student pairs, student initialisation, collation, logits, generation."""

from fdistill.models.architectures import ARCHITECTURES
from fdistill.models.collate import IGNORE_INDEX, SeqCollator
from fdistill.models.forward import (
    generate_targets,
    head_inputs_and_hidden_states,
    hidden_states,
    model_config,
    paired_hidden_states,
    token_logits,
    token_logits_and_hidden_states,
)
from fdistill.models.heads import FUSED_HEAD_MODEL_TYPES, output_head, supports_fused_head
from fdistill.models.pairs import (
    load_teacher,
    prepare_tiny_pair,
    student_from_pair_config,
    student_layer_plan,
    teacher_layer_counts,
)
from fdistill.models.student import init_student, layer_map, spread_layers
from fdistill.models.vocab import build_word_tokenizer, check_same_vocab, load_tokenizer

__all__ = [
    "ARCHITECTURES",
    "FUSED_HEAD_MODEL_TYPES",
    "IGNORE_INDEX",
    "SeqCollator",
    "build_word_tokenizer",
    "check_same_vocab",
    "generate_targets",
    "head_inputs_and_hidden_states",
    "hidden_states",
    "init_student",
    "layer_map",
    "load_teacher",
    "load_tokenizer",
    "model_config",
    "output_head",
    "paired_hidden_states",
    "prepare_tiny_pair",
    "spread_layers",
    "student_from_pair_config",
    "student_layer_plan",
    "supports_fused_head",
    "teacher_layer_counts",
    "token_logits",
    "token_logits_and_hidden_states",
]
