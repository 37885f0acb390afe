"""Per-architecture facts fdistill relies on: where the layer stacks live in the state dict, which config
keys count them, how to build a tiny random model, and which Auto class loads a checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    BartConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    T5Config,
)

ARCHITECTURES = ("encoder_decoder", "decoder_only")


@dataclass(frozen=True)
class LayerLayout:
    """State-dict prefixes of the encoder/decoder layer lists and the config keys holding their lengths
    (`None` for the encoder of a decoder-only model; GPT-2's `h` blocks are its decoder)."""

    encoder_prefix: str | None
    decoder_prefix: str
    encoder_count_key: str | None
    decoder_count_key: str

    def prefix(self, stack: str) -> str | None:
        return self.encoder_prefix if stack == "encoder" else self.decoder_prefix

    def count_key(self, stack: str) -> str | None:
        return self.encoder_count_key if stack == "encoder" else self.decoder_count_key


LAYER_LAYOUTS = {
    "bart": LayerLayout("model.encoder.layers", "model.decoder.layers", "encoder_layers", "decoder_layers"),
    "t5": LayerLayout("encoder.block", "decoder.block", "num_layers", "num_decoder_layers"),
    "gpt2": LayerLayout(None, "transformer.h", None, "n_layer"),
    "llama": LayerLayout(None, "model.layers", None, "num_hidden_layers"),  # SmolLM2, Llama 2/3
    "qwen2": LayerLayout(None, "model.layers", None, "num_hidden_layers"),  # Qwen2.5
    "qwen3": LayerLayout(None, "model.layers", None, "num_hidden_layers"),
    "mistral": LayerLayout(None, "model.layers", None, "num_hidden_layers"),
}
#: config lists with one entry per decoder layer, which a layer-copy student keeps for its kept layers
PER_LAYER_CONFIG_KEYS = ("layer_types",)
STACKS = ("encoder", "decoder")


def layer_layout(model_type: str) -> LayerLayout:
    if model_type not in LAYER_LAYOUTS:
        raise ValueError(
            f"layer copying/counting does not know model_type {model_type!r}; supported: {sorted(LAYER_LAYOUTS)}. "
            "Use student.init=from_pretrained, or add its layout to LAYER_LAYOUTS."
        )
    return LAYER_LAYOUTS[model_type]


def auto_model_class(architecture: str):
    """The Auto class that loads checkpoints of `architecture` (encoder_decoder | decoder_only)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r} is invalid; expected one of {ARCHITECTURES}")
    return AutoModelForSeq2SeqLM if architecture == "encoder_decoder" else AutoModelForCausalLM


def architecture_of(config: PretrainedConfig) -> str:
    return "encoder_decoder" if config.is_encoder_decoder else "decoder_only"


TINY_BUILD_KEYS = {
    "bart": {"model_type", "d_model", "encoder_layers", "decoder_layers", "heads", "ffn_dim",
             "max_position_embeddings", "dropout"},
    "t5": {"model_type", "d_model", "encoder_layers", "decoder_layers", "heads", "ffn_dim", "dropout"},
    "gpt2": {"model_type", "d_model", "decoder_layers", "heads", "ffn_dim", "max_position_embeddings",
             "dropout"},
    "llama": {"model_type", "d_model", "decoder_layers", "heads", "kv_heads", "ffn_dim", "max_position_embeddings",
              "tie_word_embeddings", "dropout"},
}


def tiny_model_config(build: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """Translate a pair's `teacher.build` spec into a transformers config whose vocabulary and special
    token ids come from `tokenizer`. Generation defaults that would alter scores (BART's forced eos) are
    switched off, so generation scores equal the model's log-probabilities."""
    model_type = build.get("model_type")
    if model_type not in TINY_BUILD_KEYS:
        raise ValueError(f"teacher.build.model_type={model_type!r} is invalid; expected one of {sorted(TINY_BUILD_KEYS)}")
    unknown = set(build) - TINY_BUILD_KEYS[model_type]
    if unknown:
        raise ValueError(
            f"teacher.build keys {sorted(unknown)} do not apply to model_type={model_type}; "
            f"allowed: {sorted(TINY_BUILD_KEYS[model_type])}"
        )
    missing = TINY_BUILD_KEYS[model_type] - set(build) - {"dropout", "tie_word_embeddings"}
    if missing:
        raise ValueError(f"teacher.build for model_type={model_type} lacks keys {sorted(missing)}")
    dropout = build.get("dropout", 0.1)
    tokens = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
              "eos_token_id": tokenizer.eos_token_id}
    if model_type == "bart":
        return BartConfig(
            **tokens, bos_token_id=tokenizer.bos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
            forced_bos_token_id=None, forced_eos_token_id=None,
            d_model=build["d_model"], encoder_layers=build["encoder_layers"],
            decoder_layers=build["decoder_layers"], encoder_attention_heads=build["heads"],
            decoder_attention_heads=build["heads"], encoder_ffn_dim=build["ffn_dim"],
            decoder_ffn_dim=build["ffn_dim"], max_position_embeddings=build["max_position_embeddings"],
            dropout=dropout,
        )
    if model_type == "t5":
        if build["d_model"] % build["heads"]:
            raise ValueError(f"teacher.build: d_model={build['d_model']} must be divisible by heads={build['heads']}")
        return T5Config(
            **tokens, decoder_start_token_id=tokenizer.pad_token_id, d_model=build["d_model"],
            d_kv=build["d_model"] // build["heads"], d_ff=build["ffn_dim"], num_layers=build["encoder_layers"],
            num_decoder_layers=build["decoder_layers"], num_heads=build["heads"], dropout_rate=dropout,
        )
    if model_type == "llama":  # untied head by default: the large-vocabulary case (Llama-3, Qwen2.5-7B)
        return LlamaConfig(
            **tokens, bos_token_id=tokenizer.bos_token_id, hidden_size=build["d_model"],
            num_hidden_layers=build["decoder_layers"], num_attention_heads=build["heads"],
            num_key_value_heads=build["kv_heads"], intermediate_size=build["ffn_dim"],
            max_position_embeddings=build["max_position_embeddings"], attention_dropout=dropout,
            tie_word_embeddings=build.get("tie_word_embeddings", False),
        )
    return GPT2Config(
        **tokens, bos_token_id=tokenizer.bos_token_id, n_embd=build["d_model"], n_layer=build["decoder_layers"],
        n_head=build["heads"], n_inner=build["ffn_dim"], n_positions=build["max_position_embeddings"],
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
    )
