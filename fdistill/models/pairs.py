"""Teacher/student pairs (`conf/pair/<name>.yaml`): loading the teacher, building the offline tiny pairs,
and checking a pair's layer plan from its config alone (no download)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel

from fdistill.models.architectures import STACKS, architecture_of, auto_model_class, tiny_model_config
from fdistill.models.storage import staged_directory
from fdistill.models.student import init_student, plan_layers
from fdistill.models.vocab import build_word_tokenizer

TINY_INIT_SEED = 0


def _plain(config: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)


def load_teacher(name_or_path: str | os.PathLike, architecture: str, dtype: torch.dtype | str = torch.float32,
                 attn_implementation: str | None = None) -> PreTrainedModel:
    """`AutoModelForSeq2SeqLM` / `AutoModelForCausalLM.from_pretrained` without remote code, in eval mode, in
    `dtype` (float32 unless asked: transformers would otherwise take a bf16 checkpoint's own dtype); fails if the
    checkpoint's architecture is not `architecture`."""
    options = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = auto_model_class(architecture).from_pretrained(str(name_or_path), trust_remote_code=False, dtype=dtype,
                                                           **options)
    if architecture_of(model.config) != architecture:
        raise ValueError(
            f"{name_or_path!r} is {architecture_of(model.config)} but the pair says architecture={architecture}"
        )
    return model.eval()


def prepare_tiny_pair(pair_cfg: Mapping[str, Any] | DictConfig, texts: Iterable[str], cache_dir: str | os.PathLike,
                      init_seed: int = TINY_INIT_SEED) -> Path:
    """Build the word tokenizer over `texts` and a randomly initialised teacher from `pair.teacher.build`,
    save both (safetensors) into one directory under `cache_dir` and return it; load them with
    `load_tokenizer(path)` / `load_teacher(path, pair.architecture)`.

    The directory name hashes the build spec, the vocabulary and the init seed, so a second call with
    the same inputs returns the existing directory; it appears by one atomic rename.
    """
    pair = _plain(pair_cfg)
    build = pair["teacher"].get("build")
    if build is None:
        raise ValueError(f"pair {pair['name']!r} has no teacher.build spec; prepare_tiny_pair builds only tiny pairs")
    words = sorted({word for text in texts for word in text.split()})
    digest = hashlib.sha256(
        json.dumps({"build": build, "words": words, "seed": init_seed}, sort_keys=True).encode()
    ).hexdigest()[:16]
    target = Path(cache_dir) / f"{pair['name']}-{digest}"
    if (target / "config.json").is_file():
        return target
    with staged_directory(target, replace=False) as staging:
        tokenizer = build_word_tokenizer(words, staging)
        config = tiny_model_config(build, tokenizer)
        if architecture_of(config) != pair["architecture"]:
            raise ValueError(
                f"pair {pair['name']!r}: teacher.build.model_type={build['model_type']} is "
                f"{architecture_of(config)} but architecture={pair['architecture']}"
            )
        with torch.random.fork_rng():
            torch.manual_seed(init_seed)
            teacher = auto_model_class(pair["architecture"]).from_config(config)
        teacher.save_pretrained(staging)
        if not (staging / "config.json").is_file() or not any(staging.glob("*.safetensors")):
            # e.g. transformers skips the write on non-zero ranks of a distributed job: never publish that
            raise RuntimeError(f"saving the tiny teacher into {staging} wrote no config/weights; nothing published")
    return target


def teacher_layer_counts(pair_cfg: Mapping[str, Any] | DictConfig) -> dict[str, int | None]:
    """Layer counts of the teacher per stack, from the config alone: `teacher.build` for tiny pairs,
    `teacher.num_encoder_layers/num_decoder_layers` for real checkpoints (None: no such stack)."""
    teacher = _plain(pair_cfg)["teacher"]
    source = teacher.get("build") or teacher
    keys = ("encoder_layers", "decoder_layers") if teacher.get("build") else ("num_encoder_layers", "num_decoder_layers")
    return {stack: source.get(key) for stack, key in zip(STACKS, keys, strict=True)}


def student_layer_plan(pair_cfg: Mapping[str, Any] | DictConfig,
                       counts: Mapping[str, int | None] | None = None) -> dict[str, list[int]]:
    """The teacher layers a layer-copy student of this pair takes per stack, computed from the config only
    (validates indices against the teacher's layer counts: the pair's, or `counts` read from the checkpoint's
    config); empty for the other init methods."""
    pair = _plain(pair_cfg)
    student = pair["student"]
    counts = teacher_layer_counts(pair) if counts is None else counts
    if pair["architecture"] == "encoder_decoder" and None in counts.values():
        raise ValueError(
            f"pair {pair['name']!r}: encoder-decoder teacher needs both layer counts "
            f"(teacher.num_encoder_layers/num_decoder_layers or build), got {counts}"
        )
    if pair["architecture"] == "decoder_only" and (counts["encoder"] is not None or counts["decoder"] is None):
        raise ValueError(f"pair {pair['name']!r}: decoder-only teacher needs only a decoder layer count, got {counts}")
    if student["init"] != "layer_copy":
        return {}
    return plan_layers(
        counts,
        {"encoder": student.get("num_encoder_layers"), "decoder": student.get("num_decoder_layers")},
        {"encoder": student.get("encoder_layers"), "decoder": student.get("decoder_layers")},
    )


def student_from_pair_config(teacher: PreTrainedModel, pair_cfg: Mapping[str, Any] | DictConfig) -> PreTrainedModel:
    """`init_student` with the fields of `pair.student`."""
    student = _plain(pair_cfg)["student"]
    return init_student(
        teacher,
        method=student["init"],
        encoder_layers=student.get("encoder_layers"),
        decoder_layers=student.get("decoder_layers"),
        num_encoder_layers=student.get("num_encoder_layers"),
        num_decoder_layers=student.get("num_decoder_layers"),
        name_or_path=student.get("name_or_path"),
        config_overrides=student.get("config_overrides"),
    )
