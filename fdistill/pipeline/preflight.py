"""Checks that run before any model or dataset is loaded: a bad config fails in seconds with a message
naming the key, the value and the fix (unknown divergence/dataset/metric, parameters out of range,
tokenizer mismatch between teacher and a separately loaded student, a stage whose inputs are missing)."""

from __future__ import annotations

from dataclasses import dataclass

from fdistill.config import OBJECTIVES_OUTSIDE_REGISTRY, FdistillConfig
from fdistill.data import available_datasets
from fdistill.divergences import available_divergences, get_divergence
from fdistill.evaluation import available_metrics
from fdistill.models import check_same_vocab, load_tokenizer


@dataclass(frozen=True)
class Preflight:
    """What the checks derived: the divergence object (None for nll/engine/none) and the sources it needs."""

    divergence: object | None
    needs: frozenset[str]
    is_encoder_decoder: bool


class ConfigError(ValueError):
    """A configuration that cannot run; raised before any expensive work."""


def preflight(cfg: FdistillConfig) -> Preflight:
    if cfg.dataset.name not in available_datasets():
        raise ConfigError(f"unknown dataset {cfg.dataset.name!r}; choose one of {available_datasets()} "
                          "(dataset=<name>, files in conf/dataset/)")
    _check_metrics(cfg.dataset.metrics)
    distill = cfg.pipeline.distill
    name = cfg.divergence.name
    divergence = None
    if name == "none":
        if distill.enabled:
            raise ConfigError("divergence=predistill (name: none) evaluates the pre-distilled student; it needs "
                              "pipeline.distill.enabled=false")
        needs: frozenset[str] = frozenset()
    elif name in OBJECTIVES_OUTSIDE_REGISTRY:
        needs = _likelihood_needs(name, distill.fixed_data)
    else:
        if name not in available_divergences():
            raise ConfigError(f"unknown divergence {name!r}; choose one of {available_divergences()} or the "
                              f"baselines mle, seqkd, engine, word_kd, predistill (divergence=<name>)")
        try:
            divergence = get_divergence(name, temperature=cfg.divergence.temperature, **dict(cfg.divergence.params))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"divergence.params={dict(cfg.divergence.params)} is invalid: {error}") from error
        needs = _divergence_needs(divergence, distill)
    if not distill.enabled:
        needs = frozenset()
    if "teacher" in needs and distill.teacher_sampling == "offline" and not cfg.pipeline.teacher_sampling.enabled:
        raise ConfigError(f"divergence {cfg.divergence.label or name!r} trains on offline teacher samples but "
                          "pipeline.teacher_sampling.enabled=false; enable it or set "
                          "pipeline.distill.teacher_sampling=online")
    if cfg.pair.teacher.finetuned and cfg.pair.teacher.build is not None:
        raise ConfigError("pair.teacher.build makes a random-init tiny teacher; it cannot be finetuned=true")
    if cfg.pipeline.predistill.enabled and cfg.pipeline.predistill.weight_hidden > 0 \
            and cfg.pair.student.init == "from_config" and cfg.pair.student.config_overrides.get("d_model"):
        raise ConfigError("hidden-state MSE needs equal hidden sizes; set pipeline.predistill.weight_hidden=0 "
                          "for a student with another d_model")
    _check_tokenizers(cfg)
    return Preflight(divergence=divergence, needs=needs, is_encoder_decoder=cfg.pair.architecture == "encoder_decoder")


def _likelihood_needs(name: str, fixed_data: str) -> frozenset[str]:
    if name == "engine":
        return frozenset({"student"})
    return frozenset({"teacher"} if fixed_data == "teacher_samples" else {"data"})


def _divergence_needs(divergence, distill) -> frozenset[str]:
    if distill.regime == "fdistill":
        return frozenset(divergence.needs)
    fixed = "teacher" if distill.fixed_data == "teacher_samples" else "data"
    return frozenset(({"student"} if distill.lam > 0 else set()) | ({fixed} if distill.lam < 1 else set()))


def _check_metrics(metrics: list[str]) -> None:
    unknown = sorted(set(metrics) - set(available_metrics()))
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown} in dataset.metrics; choose from {available_metrics()}")


def _check_tokenizers(cfg: FdistillConfig) -> None:
    """A student loaded from its own checkpoint must share the teacher's vocabulary (checked up front)."""
    student = cfg.pair.student
    if student.init != "from_pretrained" or cfg.pair.teacher.build is not None:
        return
    teacher_source = cfg.pair.tokenizer or cfg.pair.teacher.name_or_path
    check_same_vocab(load_tokenizer(teacher_source), load_tokenizer(student.name_or_path),
                     f"teacher {teacher_source}", f"student {student.name_or_path}")
