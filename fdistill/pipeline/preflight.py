"""Checks that run before any training, so a bad config fails in seconds with a message naming the key, the
value and the fix.

* :func:`preflight` (config only, before the data or any model is loaded): unknown divergence, dataset or
  metric; parameters out of range; a stage whose inputs are disabled; output and cache locations that
  cannot be written; the evaluation metrics' resources (encoders, WordNet), so that a missing paper
  encoder is found before training, not hours later; the tiny pairs' position limits.
* :func:`check_pair` (once the tokenizer exists, before the first training step): tokenizer vs the
  models' vocabularies, position limits of real checkpoints, a separately loaded student's tokenizer.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from fdistill.config import OBJECTIVES_OUTSIDE_REGISTRY, FdistillConfig
from fdistill.data import available_datasets
from fdistill.divergences import available_divergences, get_divergence
from fdistill.errors import ConfigError, StorageError
from fdistill.evaluation import available_metrics
from fdistill.models import check_same_vocab, load_tokenizer, student_layer_plan, teacher_layer_counts
from fdistill.models.student import checkpoint_layer_counts
from fdistill.training.objectives import OBJECTIVES, objective_name
from fdistill.training.rewards import check_reward_config

log = logging.getLogger(__name__)

#: free space below which a run does not start (checkpoints of even the tiny pairs need some)
MIN_FREE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Preflight:
    """What the checks derived: the divergence object (None for nll/engine/none), the sources it needs, which
    of them a cached teacher signal covers (`samples`, `references`) and whether distillation needs the teacher
    in memory."""

    divergence: object | None
    needs: frozenset[str]
    is_encoder_decoder: bool
    signal_sources: frozenset[str] = frozenset()
    teacher_in_distill: bool = True


def preflight(cfg: FdistillConfig, check_resources: bool = True) -> Preflight:
    """Config-level checks; `check_resources=False` skips the filesystem and encoder checks (for
    ``--cfg job``, which only prints)."""
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
    else:
        if name not in OBJECTIVES_OUTSIDE_REGISTRY:
            divergence = build_divergence(cfg)
        objective = objective_name(name, distill.regime)
        needs = OBJECTIVES[objective].needs(divergence, distill)
        if objective == "gkd_rl" and distill.rl.alpha < 1:
            check_reward_config(distill.rl.reward, dict(distill.rl.reward_params), cfg.dataset.name)
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
    if cfg.pair.teacher.build is not None:
        _check_positions(cfg, _tiny_position_limit(cfg.pair.teacher.build), f"pair.teacher.build of {cfg.pair.name!r}")
    if cfg.pipeline.distill.enabled or cfg.pipeline.predistill.enabled or cfg.pipeline.evaluate.enabled:
        _check_student_layers(cfg)
    if check_resources:
        check_storage(cfg)
        check_evaluation_resources(cfg)
        _check_tokenizers(cfg)
        _check_gguf(cfg)
    _check_ensemble(cfg)
    if cfg.pipeline.evaluate.model == "teacher" and (cfg.pipeline.distill.enabled or cfg.pipeline.predistill.enabled):
        raise ConfigError("pipeline.evaluate.model=teacher evaluates the teacher, so the student this run would "
                          "pre-distil or distil is never evaluated: set pipeline.predistill.enabled=false and "
                          "pipeline.distill.enabled=false (divergence=teacher does both)")
    signal_sources, teacher_in_distill = _teacher_signal_plan(cfg, divergence, needs)
    return Preflight(divergence=divergence, needs=needs, is_encoder_decoder=cfg.pair.architecture == "encoder_decoder",
                     signal_sources=signal_sources, teacher_in_distill=teacher_in_distill)


def _check_ensemble(cfg: FdistillConfig) -> None:
    """Several teachers: how they act as one, and what each ensemble method can feed (before anything loads)."""
    from fdistill.models.ensemble import normalised_weights

    teachers, method = cfg.pair.all_teachers(), cfg.ensemble.method
    distill, evaluate = cfg.pipeline.distill, cfg.pipeline.evaluate
    index = cfg.ensemble.teacher_index
    if index is not None and index >= len(teachers):
        raise ConfigError(f"ensemble.teacher_index={index}: the pair has {len(teachers)} teacher(s), numbered from 0")
    if len(teachers) > 1 and method == "none" and index is None:
        raise ConfigError(f"pair.teachers lists {len(teachers)} teachers: say how they act as one with "
                          "ensemble=average|vote|union|mbr|ebbs (conf/ensemble/), or use one of them alone with "
                          "ensemble.teacher_index=i")
    if method == "none":
        return
    if method == "mbr" and cfg.ensemble.metric not in available_metrics():
        raise ConfigError(f"ensemble.metric={cfg.ensemble.metric!r} (MBR's utility) is not a metric; pick one of "
                          f"{sorted(available_metrics())}")
    try:
        normalised_weights(cfg.ensemble.weights, len(teachers))
    except ValueError as error:
        raise ConfigError(f"config error: ensemble.weights: {error}") from None
    objective = objective_name(cfg.divergence.name, distill.regime) if cfg.divergence.name != "none" else "none"
    if distill.enabled and objective not in ("nll", "none") and method != "average":
        raise ConfigError(f"ensemble={method} defines the ensemble's outputs, not a token distribution: a token-level "
                          f"divergence ({cfg.divergence.label or cfg.divergence.name}) cannot distil from it. Use "
                          f"divergence=seqkd (MLE on its outputs: sequence-level KD) or ensemble=average (AvgKD)")
    if objective == "nll" and distill.fixed_data == "teacher_samples" and method == "average" and \
            cfg.pipeline.teacher_sampling.decoding.strategy == "sample":
        log.info("ensemble=average with SeqKD: the targets are samples of the teachers' mixture")
    if evaluate.enabled and evaluate.model == "teacher" and method == "union":
        raise ConfigError("ensemble=union is a set of training targets, not a decoder: evaluate one of its teachers "
                          "(ensemble=none ensemble.teacher_index=i) or another ensemble method")
    if cfg.pipeline.distributed.shard_teacher:
        raise ConfigError("several teachers (an ensemble) cannot be sharded yet: set "
                          "pipeline.distributed.shard_teacher=false")
    if distill.enabled and distill.teacher_signal != "dense":
        raise ConfigError("an ensemble of teachers distils from their mixture in memory: "
                          "pipeline.distill.teacher_signal=dense")
    subsets = [teacher.data_subset for teacher in teachers if teacher.data_subset]
    if any("modes" in subset for subset in subsets) and cfg.dataset.name != "synthetic":
        raise ConfigError("pair.teachers[i].data_subset={modes: [...]} selects the synthetic task's modes; use "
                          "{shard: i, of: n} on this dataset")


def _teacher_signal_plan(cfg: FdistillConfig, divergence, needs: frozenset[str]) -> tuple[frozenset[str], bool]:
    """(the sources a cached signal must cover, whether distillation loads the teacher), checking that every
    teacher term the signal serves can use it (`pipeline.distill.teacher_signal`)."""
    from fdistill.divergences.sparse import check_sparse_support
    from fdistill.training.rewards import REWARDS

    distill, signal = cfg.pipeline.distill, cfg.pipeline.teacher_signal
    objective = objective_name(cfg.divergence.name, distill.regime) if cfg.divergence.name != "none" else "none"
    mode = distill.teacher_signal
    if not distill.enabled or objective in ("nll", "none"):
        return frozenset(), False
    if mode == "dense":
        return frozenset(), True
    served = mode == "served"
    if served:
        if not cfg.pipeline.teacher_server.url:
            raise ConfigError("pipeline.distill.teacher_signal=served needs pipeline.teacher_server.url (e.g. "
                              "http://127.0.0.1:8000: `vllm serve DIR --max-logprobs K` or `python -m "
                              "fdistill.serve_teacher --model DIR`)")
        if cfg.pair.architecture != "decoder_only":
            raise ConfigError("a served teacher answers completions requests: decoder-only pairs only; use "
                              "pipeline.distill.teacher_signal=offline or dense for encoder-decoder pairs")
        if signal.method != "topk":
            raise ConfigError("a teacher server returns top-k log-probabilities: pipeline.teacher_signal.method=topk "
                              "with teacher_signal=served (sampled signals are cached offline)")
    fixed = "samples" if distill.fixed_data == "teacher_samples" else "references"
    uses: list[tuple[str, str]] = []  # (divergence part, sequences)
    if objective == "fdistill":
        uses += [("teacher", "samples")] if "teacher" in needs else []
        uses += [("student", "student")] if "student" in needs else []
    elif objective == "gkd":
        uses += [("both", fixed)] if distill.lam < 1 else []
        uses += [("both", "student")] if distill.lam > 0 else []
    elif objective == "gkd_rl" and distill.rl.alpha > 0:
        uses.append(("both", "student"))
    covered, teacher_needed = set(), False
    for part, sequences in uses:
        if sequences == "student" and not served:
            teacher_needed = True  # nothing cached covers fresh student samples: the teacher is loaded for them
            continue
        try:
            check_sparse_support(divergence, part, signal.method, signal.tail)
        except ValueError as error:
            raise ConfigError(f"pipeline.distill.teacher_signal={mode}: {error} (pipeline.teacher_signal)") from None
        if sequences != "student":
            covered.add(sequences)
    if objective == "gkd_rl" and distill.rl.alpha < 1 and REWARDS[distill.rl.reward].needs_teacher_logits:
        if served:
            raise ConfigError(f"reward {distill.rl.reward!r} reads the teacher's raw logits of every student token; a "
                              "served top-k signal cannot give them: use pipeline.distill.teacher_signal=dense")
        teacher_needed = True
    return frozenset() if served else frozenset(covered), teacher_needed


def _check_student_layers(cfg: FdistillConfig, counts: dict | None = None) -> None:
    """The layer-copy student's layers exist in the teacher: from the pair's layer counts (config only), or
    from `counts` of the checkpoint's config (check_pair) when the pair does not state them."""
    pair = asdict(cfg.pair)
    if counts is None:
        counts = teacher_layer_counts(pair)
        if counts["decoder"] is None or (cfg.pair.architecture == "encoder_decoder" and counts["encoder"] is None):
            return  # unknown without the checkpoint: check_pair reads its config
    try:
        student_layer_plan(pair, counts)
    except ValueError as error:
        raise ConfigError(f"pair.student of pair {cfg.pair.name!r}: {error}") from None


def _check_gguf(cfg: FdistillConfig) -> None:
    """A GGUF teacher's package and file exist and the file has the pinned sha256 (about a second for 100 MB),
    and transformers can read GGUF."""
    from fdistill.models.gguf import check_sha256, gguf_location, require_gguf_support

    teacher = cfg.pair.teacher
    if teacher.gguf_file is None:
        return
    _, local_file = gguf_location(teacher.name_or_path, teacher.gguf_file, teacher.gguf_package)
    if local_file is not None:
        check_sha256(local_file, teacher.gguf_sha256)
    require_gguf_support()


def build_divergence(cfg: FdistillConfig):
    """The configured registry divergence, with every parameter checked (a ConfigError names the bad one)."""
    name = cfg.divergence.name
    if name not in available_divergences():
        raise ConfigError(f"unknown divergence {name!r}; choose one of {available_divergences()} or the "
                          f"baselines mle, seqkd, word_kd, predistill (divergence=<name>)")
    try:
        return get_divergence(name, temperature=cfg.divergence.temperature,
                              teacher_temperature=cfg.divergence.teacher_temperature,
                              temperature_scaling=cfg.divergence.temperature_scaling, **dict(cfg.divergence.params))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"divergence.params={dict(cfg.divergence.params)} is invalid: {error}") from error


def _check_metrics(metrics: list[str]) -> None:
    unknown = sorted(set(metrics) - set(available_metrics()))
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown} in dataset.metrics; choose from {available_metrics()}")


# ------------------------------------------------------------------------------------------ storage
def _writable_directory(path: Path, what: str, key: str) -> None:
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise StorageError(f"{what} {path} cannot be created: {existing} is a file, not a directory; set {key} "
                           "to a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StorageError(f"{what} {path} is not writable ({existing} is read-only for this user); set {key} to "
                           "a writable directory")
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise StorageError(f"{what} {path}: only {free / 2**20:.0f} MiB free on its disk (at least "
                           f"{MIN_FREE_BYTES / 2**20:.0f} MiB needed for checkpoints); free space or set {key} "
                           "to another disk")


def check_storage(cfg: FdistillConfig) -> None:
    """Output and cache locations must be (creatable) writable directories with free space."""
    _writable_directory(Path(cfg.paths.output_dir), "output dir", "paths.output_dir")
    _writable_directory(Path(cfg.paths.cache_dir), "artifact cache", "paths.cache_dir (or FDISTILL_CACHE)")


# ---------------------------------------------------------------------------------- evaluation resources
def check_evaluation_resources(cfg: FdistillConfig) -> None:
    """Every resource the evaluate stage's metrics need is loadable now (not after training)."""
    from fdistill.evaluation.encoders import (
        PAPER_BERTSCORE_ENCODER,
        PAPER_MOVERSCORE_ENCODER,
        check_encoder_available,
    )
    from fdistill.evaluation.text_metrics import bleurt_unavailable_reason

    evaluate = cfg.pipeline.evaluate
    if not evaluate.enabled:
        return
    metrics = set(cfg.dataset.metrics)
    encoders = [("bertscore", evaluate.bertscore_encoder or PAPER_BERTSCORE_ENCODER, "bertscore_encoder"),
                ("moverscore", evaluate.moverscore_encoder or PAPER_MOVERSCORE_ENCODER, "moverscore_encoder")]
    for metric, encoder, key in encoders:
        if metric not in metrics:
            continue
        try:
            check_encoder_available(encoder, metric)
            if metric == "bertscore":
                _check_bertscore_layers(encoder)
        except (RuntimeError, ValueError) as error:
            raise ConfigError(f"{error}\n(set pipeline.evaluate.{key}=sentence-transformers/all-MiniLM-L6-v2 "
                              f"for the packaged offline encoder, or drop {metric!r} from dataset.metrics)") from None
    if "meteor" in metrics:
        from fdistill.evaluation.wordnet import ensure_wordnet

        try:
            ensure_wordnet()
        except Exception as error:  # noqa: BLE001 - any failure to prepare WordNet is reported the same way
            raise ConfigError(f"metric 'meteor' needs WordNet, which could not be prepared ({error}); run "
                              "`python -m fdistill.evaluation.prepare` or drop 'meteor' from dataset.metrics") from None
    if "bleurt" in metrics:
        reason = bleurt_unavailable_reason(evaluate.bleurt_checkpoint)
        if reason is not None:
            log.warning("metric 'bleurt' will be reported as unavailable: %s", reason)


def _check_bertscore_layers(encoder: str) -> None:
    from bert_score.utils import model2layers

    from fdistill.evaluation.encoders import resolve_encoder

    spec = resolve_encoder(encoder)
    if spec.num_layers is None and spec.location not in model2layers:
        raise ValueError(f"bert-score has no tuned layer for encoder {encoder!r}: name one of its models "
                         "(e.g. roberta-large) or a local model directory")


# ------------------------------------------------------------------------------------------ positions
def _tiny_position_limit(build: dict) -> int | None:
    """Learned positions of a tiny `teacher.build` spec (None: relative positions, T5)."""
    return build.get("max_position_embeddings")


def model_position_limit(config) -> int | None:
    """Positions a checkpoint's config allows (None: relative or unknown)."""
    if config.model_type == "t5":
        return None
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _check_positions(cfg: FdistillConfig, limit: int | None, model: str) -> None:
    """Sources, targets and generated lengths must fit the model's learned positions."""
    if limit is None:
        return
    ds, pipe = cfg.dataset, cfg.pipeline
    new_tokens = max(pipe.teacher_sampling.decoding.max_new_tokens, pipe.distill.student_sampling.max_new_tokens,
                     pipe.evaluate.decoding.max_new_tokens)
    if cfg.pair.architecture == "encoder_decoder":
        needed = {"dataset.max_source_length": ds.max_source_length,
                  "dataset.max_target_length": ds.max_target_length, "max_new_tokens of decoding": new_tokens + 1}
        problems = {key: value for key, value in needed.items() if value > limit}
        if problems:
            raise ConfigError(f"{model} has {limit} positions but {problems} exceed them (an IndexError mid-run "
                              f"otherwise); lower them to <= {limit} (e.g. dataset.max_source_length={limit}) or use "
                              "a pair with more positions")
        return
    total = ds.max_source_length + max(ds.max_target_length, new_tokens)
    if total > limit:
        raise ConfigError(f"{model} has {limit} positions but prompt + target can take {total} "
                          f"(dataset.max_source_length={ds.max_source_length} + max(dataset.max_target_length="
                          f"{ds.max_target_length}, max_new_tokens={new_tokens})); lower them so that the sum is "
                          f"<= {limit}")


# ------------------------------------------------------------------------------------- tokenizers
def _check_tokenizers(cfg: FdistillConfig) -> None:
    """Several teachers, and a student loaded from its own checkpoint, must share the teacher's vocabulary (checked
    up front, tokenizers only; GGUF and tiny teachers are compared once built)."""
    checkpoints = [teacher.name_or_path for teacher in cfg.pair.all_teachers()
                   if teacher.build is None and teacher.gguf_file is None]
    if cfg.pair.tokenizer is None and len(set(checkpoints)) > 1:
        first = load_tokenizer(checkpoints[0])
        for other in sorted(set(checkpoints[1:]) - {checkpoints[0]}):
            check_same_vocab(first, load_tokenizer(other), f"teacher {checkpoints[0]}", f"teacher {other}",
                             advice=TEACHERS_ADVICE)
    student = cfg.pair.student
    if student.init != "from_pretrained" or cfg.pair.teacher.build is not None:
        return  # a tiny teacher's tokenizer is built from the data: check_pair compares it
    teacher_source = cfg.pair.tokenizer or cfg.pair.teacher.name_or_path
    check_same_vocab(load_tokenizer(teacher_source), load_tokenizer(student.name_or_path),
                     f"teacher {teacher_source}", f"student {student.name_or_path}")


TEACHERS_ADVICE = ("Several teachers act as one over one shared vocabulary (cross-tokenizer ensembles are not "
                   "supported): list teachers of one model family in pair.teachers.")


def _has_tokenizer(path: str) -> bool:
    return Path(path).is_dir() and any((Path(path) / name).is_file()
                                       for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def check_pair(cfg: FdistillConfig, tokenizer, teacher_dir: str) -> None:
    """Before the first training step: the tokenizer fits the teacher's (and a pretrained student's)
    vocabulary and the lengths fit their positions. Loads configs and tokenizers only."""
    from transformers import AutoConfig

    pair = cfg.pair
    teacher_config = AutoConfig.from_pretrained(teacher_dir)
    rows = teacher_config.get_text_config().vocab_size
    if len(tokenizer) > rows:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the teacher {teacher_dir} has only {rows} "
                          "embedding rows: ids past them would crash the model. Use the teacher's own tokenizer "
                          "(pair.tokenizer=null or the checkpoint's id)")
    if pair.tokenizer is not None and Path(teacher_dir) != Path(pair.tokenizer):
        if _has_tokenizer(teacher_dir):
            check_same_vocab(tokenizer, load_tokenizer(teacher_dir), f"pair.tokenizer {pair.tokenizer}",
                             f"teacher {teacher_dir}")
        elif len(tokenizer) != rows:
            raise ConfigError(f"pair.tokenizer {pair.tokenizer} has {len(tokenizer)} tokens, the teacher {teacher_dir} "
                              f"{rows} embedding rows and no tokenizer of its own to compare: they are probably "
                              "not the same vocabulary (distilling over mismatched ids gives garbage); point "
                              "pair.tokenizer at the teacher's tokenizer")
    if pair.student.init == "from_pretrained":
        check_same_vocab(tokenizer, load_tokenizer(pair.student.name_or_path), "teacher tokenizer",
                         f"student {pair.student.name_or_path}")
        student_config = AutoConfig.from_pretrained(pair.student.name_or_path)
        _check_positions(cfg, model_position_limit(student_config), f"student {pair.student.name_or_path}")
    _check_positions(cfg, model_position_limit(teacher_config), f"teacher {teacher_dir}")
    if pair.student.init == "layer_copy":
        _check_student_layers(cfg, checkpoint_layer_counts(teacher_config))
