"""Structured-config schema for `conf/`: types are checked by Hydra at compose time, ranges by each
dataclass's `check(key)` when `validate_config` turns the composed config into these dataclasses.

Every check here runs before any model or dataset is loaded, so a bad value fails in seconds with a
message that names the key, the value and the valid range.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from fdistill.errors import ConfigError

STAGES = ("teacher_sft", "student_init", "predistill", "teacher_sampling", "distill", "evaluate")
#: divergence names that are not registry divergences: `nll` (the likelihood baselines), `none` (no distillation)
OBJECTIVES_OUTSIDE_REGISTRY = ("nll",)


def _require(condition: bool, key: str, value: Any, expected: str) -> None:
    if not condition:
        raise ConfigError(f"config error: {key}={value!r} is invalid; expected {expected}")


def _in_unit_interval(key: str, value: float) -> None:
    _require(0.0 <= value <= 1.0, key, value, "a number in [0, 1]")


@dataclass
class PathsConfig:
    root: str = "."
    output_dir: str = "outputs"
    cache_dir: str = ".cache/fdistill"


@dataclass
class SplitLimits:
    train: int | None = None
    validation: int | None = None
    test: int | None = None

    def check(self, key: str) -> None:
        for split in ("train", "validation", "test"):
            value = getattr(self, split)
            _require(value is None or value > 0, f"{key}.{split}", value, "null or a positive integer")


@dataclass
class DatasetConfig:
    name: str = MISSING
    hub_id: str | None = None
    hub_config: str | None = None
    data_dir: str | None = None
    max_source_length: int = 256
    max_target_length: int = 128
    #: text put before every source (decoder-only prompts, e.g. "Describe these facts: "); null: none
    instruction: str | None = None
    limit: SplitLimits = field(default_factory=SplitLimits)
    metrics: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def check(self, key: str) -> None:
        _require(self.max_source_length > 0, f"{key}.max_source_length", self.max_source_length, "> 0")
        _require(self.max_target_length > 0, f"{key}.max_target_length", self.max_target_length, "> 0")


@dataclass
class TeacherConfig:
    name_or_path: str | None = None
    finetuned: bool = False
    num_encoder_layers: int | None = None
    num_decoder_layers: int | None = None
    build: dict[str, Any] | None = None
    #: a GGUF file in `name_or_path` (a folder or hub repository) or in the installed Python package
    #: `gguf_package`, dequantised once into a safetensors checkpoint (fdistill/models/gguf.py)
    gguf_file: str | None = None
    gguf_package: str | None = None
    #: the file's expected sha256 (checked before use)
    gguf_sha256: str | None = None
    #: a teacher of `pair.teachers`: its name in tables, the seed of its fine-tuning (data order; a tiny build's
    #: initialisation too) and the training data it sees: `data_subset` {shard: i, of: n} (disjoint shards of the
    #: training pairs) or {modes: [...]} (the synthetic task's pairs whose verbalisation is one of these modes), or
    #: `data_fraction` (a seeded fraction). Null: inherited from pair.teacher
    label: str | None = None
    seed: int | None = None
    data_subset: dict[str, Any] | None = None
    data_fraction: float | None = None

    def check(self, key: str) -> None:
        if self.data_fraction is not None:
            _require(0 < self.data_fraction <= 1, f"{key}.data_fraction", self.data_fraction, "in (0, 1]")
        if self.data_subset is not None:
            subset = dict(self.data_subset)
            shard_ok = set(subset) == {"shard", "of"} and isinstance(subset["of"], int) and 0 <= subset["shard"] < \
                subset["of"]
            modes_ok = set(subset) == {"modes"} and isinstance(subset["modes"], list) and len(subset["modes"]) > 0
            _require(shard_ok or modes_ok, f"{key}.data_subset", subset,
                     "{shard: i, of: n} with 0 <= i < n, or {modes: [k, ...]} (synthetic task)")
        _require(self.seed is None or 0 <= self.seed < 2**31, f"{key}.seed", self.seed, "null or in [0, 2**31)")


@dataclass
class StudentConfig:
    init: str = "layer_copy"
    name_or_path: str | None = None
    encoder_layers: list[int] | None = None
    decoder_layers: list[int] | None = None
    num_encoder_layers: int | None = None
    num_decoder_layers: int | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)

    def check(self, key: str) -> None:
        _require(
            self.init in ("layer_copy", "from_pretrained", "from_config"),
            f"{key}.init", self.init, "one of layer_copy, from_pretrained, from_config",
        )
        if self.init == "from_pretrained":
            _require(self.name_or_path is not None, f"{key}.name_or_path", None,
                     "a hub id or local path when pair.student.init=from_pretrained")


@dataclass
class PairConfig:
    name: str = MISSING
    architecture: str = MISSING
    tokenizer: str | None = None
    #: decoder-only prompts: `plain` (source + separator) or `chat` (the tokenizer's chat template)
    prompt_format: str = "plain"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    #: several teachers (multi-teacher distillation, `ensemble`): each entry's fields override pair.teacher's;
    #: null: the one pair.teacher
    teachers: list[TeacherConfig] | None = None
    student: StudentConfig = field(default_factory=StudentConfig)

    def check(self, key: str) -> None:
        _require(self.architecture in ("encoder_decoder", "decoder_only"), f"{key}.architecture",
                 self.architecture, "encoder_decoder or decoder_only")
        teacher = self.teacher
        _require(teacher.name_or_path is not None or teacher.build is not None or teacher.gguf_package is not None,
                 f"{key}.teacher", "name_or_path=null, build=null",
                 "a hub id/local path (name_or_path), a GGUF package (gguf_package) or a tiny-model `build` spec")
        _require(teacher.gguf_file is not None or (teacher.gguf_package is None and teacher.gguf_sha256 is None),
                 f"{key}.teacher.gguf_file", None, "a file name when gguf_package or gguf_sha256 is set")
        _require(self.prompt_format in ("plain", "chat"), f"{key}.prompt_format", self.prompt_format, "plain or chat")
        if self.teachers is not None:
            _require(len(self.teachers) > 0, f"{key}.teachers", [], "null (one teacher) or a non-empty list")
            for index, teacher in enumerate(self.teachers):
                teacher.check(f"{key}.teachers[{index}]")
        _require(self.prompt_format == "plain" or self.architecture == "decoder_only", f"{key}.prompt_format",
                 self.prompt_format, "plain for encoder-decoder pairs (chat templates are for decoder-only models)")

    def all_teachers(self) -> list[TeacherConfig]:
        """pair.teacher, or each entry of pair.teachers with its unset fields taken from pair.teacher."""
        if self.teachers is None:
            return [self.teacher]
        defaults = TeacherConfig()
        return [TeacherConfig(**{item.name: getattr(entry, item.name) if getattr(entry, item.name) !=
                                 getattr(defaults, item.name) else getattr(self.teacher, item.name)
                                 for item in fields(TeacherConfig)}) for entry in self.teachers]


@dataclass
class DivergenceConfig:
    """A registry divergence (fdistill.divergences) or one of the likelihood objectives:
    `nll` (MLE on the fixed data: references for `mle`, teacher beam outputs for `seqkd`) and
    `engine` (teacher cross-entropy of student samples, the ENGINE energy objective)."""

    name: str = MISSING
    label: str | None = None
    temperature: float = 1.0
    #: the teacher's softmax temperature when it differs from `temperature` (GKD Table A.1: 0.1); null: the same
    teacher_temperature: float | None = None
    #: `none` (TRL, Liger) or `squared`: values and gradients × τ² (Hinton et al.; the f-DISTILL code)
    temperature_scaling: str = "none"
    params: dict[str, Any] = field(default_factory=dict)

    def check(self, key: str) -> None:
        _require(self.temperature > 0, f"{key}.temperature", self.temperature, "> 0")
        _require(self.teacher_temperature is None or self.teacher_temperature > 0, f"{key}.teacher_temperature",
                 self.teacher_temperature, "null or > 0")
        _require(self.temperature_scaling in ("none", "squared"), f"{key}.temperature_scaling",
                 self.temperature_scaling, "none or squared")


@dataclass
class OptimConfig:
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    cooldown_ratio: float = 0.0
    max_grad_norm: float = 1.0

    def check(self, key: str) -> None:
        _require(self.optimizer in ("adamw", "adafactor"), f"{key}.optimizer", self.optimizer, "adamw or adafactor")
        _require(self.lr > 0, f"{key}.lr", self.lr, "> 0")
        _in_unit_interval(f"{key}.warmup_ratio", self.warmup_ratio)
        _in_unit_interval(f"{key}.cooldown_ratio", self.cooldown_ratio)
        _require(self.warmup_ratio + self.cooldown_ratio <= 1.0, key,
                 (self.warmup_ratio, self.cooldown_ratio), "warmup_ratio + cooldown_ratio <= 1")


@dataclass
class TrainStageConfig:
    enabled: bool = True
    epochs: float | None = None
    max_steps: int | None = None
    batch_size: int = 16
    grad_accum: int = 1
    checkpoint_every: int = 100
    log_every: int = 20
    #: skip an optimizer step whose (synchronised) gradient norm or loss is non-finite instead of stopping;
    #: the count is logged as `skipped_nonfinite`
    skip_nonfinite_steps: bool = False
    #: stop when a logged mean loss exceeds this factor times max(first logged loss, 1); null disables
    loss_blowup_factor: float | None = 100.0
    optim: OptimConfig = field(default_factory=OptimConfig)

    def check(self, key: str) -> None:
        if self.epochs is not None and self.max_steps is not None:
            raise ConfigError(f"config error: {key} sets both epochs={self.epochs} and max_steps={self.max_steps}; "
                              f"to train by epochs set {key}.max_steps=null, to train by steps {key}.epochs=null")
        _require((self.epochs is None) != (self.max_steps is None), key,
                 f"epochs={self.epochs}, max_steps={self.max_steps}", "exactly one of epochs / max_steps set")
        if self.epochs is not None:
            _require(self.epochs > 0, f"{key}.epochs", self.epochs, "> 0")
        if self.max_steps is not None:
            _require(self.max_steps > 0, f"{key}.max_steps", self.max_steps, "> 0")
        _require(self.batch_size > 0, f"{key}.batch_size", self.batch_size, "> 0")
        _require(self.grad_accum > 0, f"{key}.grad_accum", self.grad_accum, "> 0")
        _require(self.checkpoint_every > 0, f"{key}.checkpoint_every", self.checkpoint_every, "> 0")
        _require(self.log_every > 0, f"{key}.log_every", self.log_every, "> 0")
        _require(self.loss_blowup_factor is None or self.loss_blowup_factor > 1, f"{key}.loss_blowup_factor",
                 self.loss_blowup_factor, "null or a number > 1")


@dataclass
class DecodingConfig:
    strategy: str = "sample"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 4
    max_new_tokens: int = 64

    def check(self, key: str) -> None:
        _require(self.strategy in ("sample", "greedy", "beam"), f"{key}.strategy", self.strategy,
                 "sample, greedy or beam")
        _require(self.temperature > 0, f"{key}.temperature", self.temperature, "> 0")
        _require(self.top_k >= 0, f"{key}.top_k", self.top_k, ">= 0 (0 disables top-k)")
        _require(0.0 < self.top_p <= 1.0, f"{key}.top_p", self.top_p, "in (0, 1]")
        _require(self.num_beams >= 1, f"{key}.num_beams", self.num_beams, ">= 1")
        _require(self.max_new_tokens >= 1, f"{key}.max_new_tokens", self.max_new_tokens, ">= 1")


@dataclass
class PredistillConfig(TrainStageConfig):
    """Shleifer & Rush (2020) pre-distillation: w_mle·MLE + w_kl·word-KL + w_hidden·hidden MSE."""

    weight_mle: float = 1.0
    weight_kl: float = 1.0
    weight_hidden: float = 1.0
    #: layer-normalise both hidden states (per token, no affine) before the MSE: Shleifer & Rush's
    #: `normalize_hidden` option; needed for pretrained decoders whose residual streams reach magnitudes in
    #: the hundreds (SmolLM2: a raw MSE of ~5,000 that swamps the MLE and KL terms)
    normalize_hidden: bool = False

    def check(self, key: str) -> None:
        super().check(key)
        for name in ("weight_mle", "weight_kl", "weight_hidden"):
            _require(getattr(self, name) >= 0, f"{key}.{name}", getattr(self, name), ">= 0")


@dataclass
class TeacherSamplingConfig:
    enabled: bool = True
    num_samples: int = 1
    batch_size: int = 64
    decoding: DecodingConfig = field(default_factory=DecodingConfig)

    def check(self, key: str) -> None:
        _require(self.num_samples >= 1, f"{key}.num_samples", self.num_samples, ">= 1")
        _require(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, ">= 1")


@dataclass
class RLConfig:
    """The RL term of ``regime=gkd_rl`` (GKD Sec. 3.2, Eq. 5): maximise (1−α)·E_{y∼q}[r(y)] − α·E_{y∼q}[D(p‖q)]
    on the student's own samples; α = 1 is on-policy GKD; LLMR is α = 0 with the teacher-induced reward."""

    alpha: float = 1.0
    reward: str = "teacher_induced"          # fdistill/training/rewards.py: teacher_induced, metric, synthetic_valid, entailment
    reward_params: dict[str, Any] = field(default_factory=dict)
    baseline: str = "mean"                   # leave-one-out mean return (of the input's samples, else of the batch) | none
    samples_per_input: int = 1               # student samples per input (the leave-one-out groups when > 1)
    length_normalize: bool = False           # divide each sample's policy-gradient term by its length

    def check(self, key: str) -> None:
        _in_unit_interval(f"{key}.alpha", self.alpha)
        _require(self.baseline in ("mean", "none"), f"{key}.baseline", self.baseline, "mean or none")
        _require(self.samples_per_input >= 1, f"{key}.samples_per_input", self.samples_per_input, ">= 1")


@dataclass
class DistillConfig(TrainStageConfig):
    """f-DISTILL (Wen et al. 2023, Eqs. 6-10), GKD (Agarwal et al. 2024, Algorithm 1) or GKD + RL (Eq. 5)
    training; the student's sampling temperature during training is ``student_sampling.temperature``."""

    regime: str = "fdistill"
    lam: float = 0.0
    fixed_data: str = "references"
    teacher_sampling: str = "offline"
    student_sampling: DecodingConfig = field(default_factory=DecodingConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    #: distil on this fraction of the training inputs only (a seeded subset, nested across fractions; the
    #: teacher keeps all of them): GKD Fig. 4's data-efficiency curve
    data_fraction: float = 1.0
    #: where the teacher's distributions come from: `dense` (the teacher in memory, every step), `offline` (the
    #: sparse signal cached once, pipeline.teacher_signal; the teacher is not loaded when the cache covers every
    #: teacher term) or `served` (a teacher server, pipeline.teacher_server)
    teacher_signal: str = "dense"

    def check(self, key: str) -> None:
        super().check(key)
        _require(0 < self.data_fraction <= 1, f"{key}.data_fraction", self.data_fraction, "in (0, 1]")
        _require(self.regime in ("fdistill", "gkd", "gkd_rl"), f"{key}.regime", self.regime,
                 "fdistill, gkd or gkd_rl")
        _in_unit_interval(f"{key}.lam (GKD student-data fraction λ)", self.lam)
        _require(self.fixed_data in ("references", "teacher_samples"), f"{key}.fixed_data",
                 self.fixed_data, "references or teacher_samples")
        _require(self.teacher_sampling in ("offline", "online"), f"{key}.teacher_sampling",
                 self.teacher_sampling, "offline (f-DISTILL Sec. 2.3) or online (re-sampled every step)")
        _require(self.teacher_signal in ("dense", "offline", "served"), f"{key}.teacher_signal", self.teacher_signal,
                 "dense (the teacher in memory), offline (a cached sparse signal) or served (a teacher server)")


@dataclass
class EvaluateConfig:
    enabled: bool = True
    split: str = "test"
    batch_size: int = 64
    decoding: DecodingConfig = field(default_factory=lambda: DecodingConfig(strategy="greedy"))
    analyses: list[str] = field(default_factory=lambda: ["risks", "teacher_dist", "exposure_bias"])
    analysis_limit: int = 500
    #: more sampling temperatures at which the test split is decoded and scored with the dataset's metrics and
    #: Self-BLEU (metrics "temperature_<T>/<metric>"; GKD Fig. 5's quality-diversity curve from one student)
    sample_temperatures: list[float] = field(default_factory=list)
    bertscore_encoder: str | None = None
    moverscore_encoder: str | None = None
    bleurt_checkpoint: str | None = None
    #: the model evaluated: the (distilled or pre-distilled) `student`, or the fine-tuned `teacher` itself (the
    #: reference row of a table, on the same inputs and metrics; with several teachers, their ensemble or, with
    #: ensemble.teacher_index, one of them)
    model: str = "student"

    def check(self, key: str) -> None:
        _require(self.split in ("train", "validation", "test"), f"{key}.split", self.split,
                 "train, validation or test")
        _require(self.model in ("student", "teacher"), f"{key}.model", self.model, "student or teacher")
        known = {"risks", "teacher_dist", "exposure_bias"}
        unknown = sorted(set(self.analyses) - known)
        _require(not unknown, f"{key}.analyses", unknown, f"a subset of {sorted(known)}")
        _require(self.batch_size > 0, f"{key}.batch_size", self.batch_size, "> 0")
        _require(self.analysis_limit > 0, f"{key}.analysis_limit", self.analysis_limit,
                 "a positive number of test inputs (the analyses' sample size)")
        _require(all(t > 0 for t in self.sample_temperatures), f"{key}.sample_temperatures", self.sample_temperatures,
                 "a list of temperatures > 0")


ARTIFACT_KINDS = ("gguf", "teacher", "student_init", "predistill", "teacher_samples", "teacher_eval", "teacher_signal")
STRATEGIES = ("ddp", "fsdp")
PARAM_DTYPES = ("float32", "bfloat16")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class DistributedConfig:
    """How the processes of a multi-GPU (or multi-process CPU) run share the work (`fdistill/parallel.py`)."""

    #: ddp: every process holds the whole trained model (accelerate's DDP); fsdp: its parameters, gradients and
    #: optimizer states are sharded across the processes (PyTorch FSDP2 ``fully_shard``, applied by fdistill
    #: itself on CPU and GPU alike: one unit per transformer layer, the untied output head, and the root)
    strategy: str = "ddp"
    #: shard the frozen teacher across the processes (FSDP2, inference only: no gradient or optimizer state), so
    #: a teacher larger than one GPU's share fits; its layers are gathered one at a time in each forward
    shard_teacher: bool = False
    #: fsdp: the untied output head as its own unit (`auto`: for heads of >= 2^24 parameters, e.g. a 128k x 4k
    #: Llama-3 head) or inside the root unit (`root`); a tied head always shares the root with the embeddings
    head_unit: str = "auto"
    #: minutes a process waits for the others at a collective (barrier, all-gather) before it fails
    timeout_minutes: int = 30

    def check(self, key: str) -> None:
        _require(self.strategy in STRATEGIES, f"{key}.strategy", self.strategy,
                 "ddp or fsdp (DeepSpeed is not supported: use fsdp for sharded training)")
        _require(self.head_unit in ("auto", "own", "root"), f"{key}.head_unit", self.head_unit, "auto, own or root")
        _require(self.timeout_minutes > 0, f"{key}.timeout_minutes", self.timeout_minutes, "> 0")


@dataclass
class PrecisionConfig:
    """The dtypes of weights (the autocast dtype of the math is ``pipeline.mixed_precision``)."""

    #: trained models' weights and optimizer states: float32 master weights (with bf16 autocast through
    #: mixed_precision=bf16) or pure bfloat16 (halves their memory; small updates are lost)
    params: str = "float32"
    #: the frozen teacher's weights: `auto` = bfloat16 on a GPU, float32 on the CPU
    teacher: str = "auto"
    #: TF32 matmuls on Ampere and newer GPUs (no effect on CPU)
    tf32: bool = True

    def check(self, key: str) -> None:
        _require(self.params in PARAM_DTYPES, f"{key}.params", self.params, f"one of {PARAM_DTYPES}")
        _require(self.teacher in TEACHER_DTYPES, f"{key}.teacher", self.teacher, f"one of {TEACHER_DTYPES}")


@dataclass
class TeacherSignalConfig:
    """The sparse teacher signal (fdistill/sampling/signal.py, fdistill/divergences/sparse.py)."""

    #: topk: the k most probable tokens and the tail's mass; sampled: k tokens drawn from the teacher (RSKD)
    method: str = "topk"
    k: int = 128
    #: top-k: renormalize (over the k), bucket (the tail one outcome: exact for the coarsened distributions) or
    #: zero (the k terms alone)
    tail: str = "bucket"
    #: sampled: the proposal's temperature (the draws are importance-weighted back to the teacher)
    proposal_temperature: float = 1.0
    batch_size: int = 32
    #: the stored log-probabilities' dtype (ids are int32)
    dtype: str = "float16"

    def check(self, key: str) -> None:
        _require(self.method in ("topk", "sampled"), f"{key}.method", self.method, "topk or sampled")
        _require(self.k >= 1, f"{key}.k", self.k, ">= 1 (8-256 is the useful range)")
        _require(self.tail in ("renormalize", "bucket", "zero"), f"{key}.tail", self.tail,
                 "renormalize, bucket or zero")
        _require(self.proposal_temperature > 0, f"{key}.proposal_temperature", self.proposal_temperature, "> 0")
        _require(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, ">= 1")
        _require(self.dtype in ("float16", "float32"), f"{key}.dtype", self.dtype, "float16 or float32")


@dataclass
class TeacherServerConfig:
    """An OpenAI-compatible server with top-k prompt log-probabilities (vLLM, SGLang, fdistill.serve_teacher)."""

    url: str | None = None
    timeout_seconds: float = 60.0
    retries: int = 3
    #: sequences per request
    batch_size: int = 16

    def check(self, key: str) -> None:
        _require(self.timeout_seconds > 0, f"{key}.timeout_seconds", self.timeout_seconds, "> 0")
        _require(self.retries >= 1, f"{key}.retries", self.retries, ">= 1")
        _require(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, ">= 1")


@dataclass
class PipelineConfig:
    artifact_seed: int = 0
    #: autocast dtype: no | fp16 | bf16; null: the launcher's (`accelerate launch --mixed_precision`), else no
    mixed_precision: str | None = None
    cpu: bool = False
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    #: recompute activations in backward (trained models): less memory, about a third more time
    gradient_checkpointing: bool = False
    #: passed to from_pretrained (sdpa, eager, flash_attention_2, ...); null: transformers' default (sdpa where
    #: the architecture supports it)
    attn_implementation: str | None = None
    #: token rows per chunk of every fused and chunked loss (divergences, cross-entropy, analyses); null: by
    #: device (CPU: about 2^20 logits per chunk, cache-sized; GPU: about 2^28, at least 1,024 rows)
    chunk_tokens: int | None = None
    #: checksum every file of a cached artifact when it is used (sizes are always checked); false for
    #: huge checkpoints whose hashing costs more than you want to pay
    verify_artifacts: bool = True
    #: artifact kinds to rebuild even when a verified copy exists (e.g. [teacher] after a corrupted file)
    rebuild: list[str] = field(default_factory=list)
    #: a run dir holding results of another config: `error`, or `archive` its contents and start fresh
    on_run_dir_conflict: str = "error"
    #: compute the losses from hidden states and the models' own output heads, chunk by chunk, so the
    #: [tokens, V] logits never exist in full (exact; where fdistill.models.heads supports the architecture):
    #: `auto` decides per call by size (fused once the logits would reach fused_min_logits_mib), true / false force
    fused_lm_head: str = "auto"
    #: fused_lm_head=auto's threshold: MiB of float32 logits (each model's, and the gradient) a call would
    #: materialise; null: by device (measured on the CPU: results/bench/divergences.md; GPU: 256)
    fused_min_logits_mib: float | None = None
    teacher_sft: TrainStageConfig = field(default_factory=lambda: TrainStageConfig(max_steps=500))
    predistill: PredistillConfig = field(default_factory=lambda: PredistillConfig(max_steps=300))
    teacher_sampling: TeacherSamplingConfig = field(default_factory=TeacherSamplingConfig)
    teacher_signal: TeacherSignalConfig = field(default_factory=TeacherSignalConfig)
    teacher_server: TeacherServerConfig = field(default_factory=TeacherServerConfig)
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(max_steps=200))
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def check(self, key: str) -> None:
        _require(0 <= self.artifact_seed < 2**32, f"{key}.artifact_seed", self.artifact_seed,
                 "an integer in [0, 2**32) (numpy and torch seeds)")
        _require(self.mixed_precision in (None, "no", "fp16", "bf16"), f"{key}.mixed_precision",
                 self.mixed_precision, "null (the launcher's), no, fp16 or bf16")
        _require(self.chunk_tokens is None or self.chunk_tokens > 0, f"{key}.chunk_tokens", self.chunk_tokens,
                 "null or a positive number of token rows")
        _require(str(self.fused_lm_head).lower() in ("auto", "true", "false"), f"{key}.fused_lm_head",
                 self.fused_lm_head, "auto, true or false")
        _require(self.fused_min_logits_mib is None or self.fused_min_logits_mib >= 0, f"{key}.fused_min_logits_mib",
                 self.fused_min_logits_mib, "null or >= 0")
        if self.distributed.strategy == "fsdp" and self.mixed_precision == "fp16":
            raise ConfigError("config error: pipeline.mixed_precision=fp16 with pipeline.distributed.strategy=fsdp is "
                              "not supported (sharded fp16 training needs a sharded loss scaler); use "
                              "pipeline.mixed_precision=bf16 (same speed on A100/H100, no loss scaling needed)")
        unknown = sorted(set(self.rebuild) - set(ARTIFACT_KINDS))
        _require(not unknown, f"{key}.rebuild", unknown, f"a list of artifact kinds among {list(ARTIFACT_KINDS)}")
        _require(self.on_run_dir_conflict in ("error", "archive"), f"{key}.on_run_dir_conflict",
                 self.on_run_dir_conflict, "error or archive")


@dataclass
class LoggerConfig:
    wandb: bool = False
    wandb_project: str = "fdistill"
    wandb_mode: str = "offline"

    def check(self, key: str) -> None:
        _require(self.wandb_mode in ("offline", "online", "disabled"), f"{key}.wandb_mode", self.wandb_mode,
                 "offline, online or disabled")


ENSEMBLE_METHODS = ("none", "average", "vote", "union", "mbr", "ebbs")


@dataclass
class EnsembleConfig:
    """How several teachers (pair.teachers) act as one (fdistill/models/ensemble.py): their distribution is always
    the weighted average; `method` decides their outputs (samples, evaluation decoding)."""

    method: str = "none"
    #: per teacher (normalised to sum 1); null: uniform
    weights: list[float] | None = None
    #: ebbs: Z, the width of the shared beam and of each teacher's lower beam
    beam_size: int = 4
    #: mbr: candidates per teacher: its own output (greedy or beam) and candidates - 1 temperature-1 samples
    candidates: int = 1
    #: mbr: the utility, a text metric of fdistill.evaluation
    metric: str = "bleu"
    #: method none with several teachers: use teacher number `teacher_index` (0-based) alone, as the one teacher
    #: (self-distillation from it, its own row in a table); its artifacts are the ones the ensembles use
    teacher_index: int | None = None

    def check(self, key: str) -> None:
        _require(self.method in ENSEMBLE_METHODS, f"{key}.method", self.method, f"one of {ENSEMBLE_METHODS}")
        _require(self.beam_size >= 1, f"{key}.beam_size", self.beam_size, ">= 1 (Z, the beam width)")
        _require(self.candidates >= 1, f"{key}.candidates", self.candidates, ">= 1")
        _require(self.teacher_index is None or (self.method == "none" and self.teacher_index >= 0),
                 f"{key}.teacher_index", self.teacher_index, "null, or a 0-based index with method none (one teacher "
                 "of pair.teachers alone)")
        _require(self.weights is None or (all(w >= 0 for w in self.weights) and sum(self.weights) > 0),
                 f"{key}.weights", self.weights, "null or non-negative numbers, not all zero")


@dataclass
class FdistillConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    pair: PairConfig = field(default_factory=PairConfig)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    run_name: str = "default"
    sweep_name: str = "sweep"

    def check(self, key: str) -> None:
        _require(0 <= self.seed < 2**31, "seed", self.seed, "an integer in [0, 2**31) (numpy and torch seeds)")


def _split_overrides(override_dirname: str) -> list[str]:
    """Hydra's override_dirname ("k1=v1,k2=v2", values may hold commas inside brackets or quotes) as its items."""
    items, depth, quote, current = [], 0, None, ""
    for char in override_dirname:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        current += char
    return [*items, current] if current else items


def run_dir_slug(override_dirname: str, max_length: int = 120) -> str:
    """Directory name for a run from Hydra's override_dirname, readable and deterministic (re-running resumes):
    "default" without overrides; else its ``key=value`` pairs, each key shortened to its shortest dotted suffix
    that no other override of the run shares (``pipeline.distill.lam=0.5`` → ``lam=0.5``), then an 8-hex hash of
    the full overrides (so two runs never share a name); pairs that would pass `max_length` are left to the hash."""
    import hashlib

    if not override_dirname:
        return "default"
    items = [item.replace("/", "_").lstrip("+~") for item in _split_overrides(override_dirname)]
    keys = [item.split("=", 1)[0] for item in items]

    def short(key: str) -> str:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            suffix = ".".join(parts[-size:])
            if sum(other == suffix or other.endswith("." + suffix) for other in keys) == 1:
                return suffix
        return key

    pairs = [f"{short(key)}={item.split('=', 1)[1]}" if "=" in item else item for key, item in zip(keys, items, strict=True)]
    digest = hashlib.sha256(override_dirname.encode()).hexdigest()[:8]
    kept: list[str] = []
    for pair in pairs:
        if len(",".join([*kept, pair])) + 9 > max_length:
            break
        kept.append(pair)
    return f"{','.join(kept)}-{digest}" if kept else digest


def register_configs() -> None:
    """Register the schema (`fdistill_schema`, first in conf/config.yaml's defaults) and the `fd_slug` resolver."""
    ConfigStore.instance().store(name="fdistill_schema", node=FdistillConfig)
    OmegaConf.register_new_resolver("fd_slug", run_dir_slug, replace=True)


def _check_tree(node: Any, key: str) -> None:
    """Call `check(key)` on every dataclass of the tree, parents first."""
    if hasattr(node, "check"):
        node.check(key)
    for item in fields(node):
        child = getattr(node, item.name)
        if is_dataclass(child):
            _check_tree(child, f"{key}.{item.name}" if key else item.name)


def _unknown_keys(node: Any, schema: Any, key: str) -> list[str]:
    """Keys of the composed config that the schema does not have (e.g. a typo added with `+`), recursively;
    free-form fields (dicts such as `params`, `build`) accept any key."""
    if not is_dataclass(schema) or not isinstance(node, DictConfig):
        return []
    names = {item.name for item in fields(schema)}
    found = []
    for name in node.keys():
        path = f"{key}.{name}" if key else str(name)
        if name not in names:
            found.append(path)
        else:
            found += _unknown_keys(node._get_node(name), getattr(schema, name), path)
    return found


def _close_match(key: str, schema: Any) -> str | None:
    """The schema key closest to an unknown `key` (same parent), for the error's hint."""
    import difflib

    parent, _, leaf = key.rpartition(".")
    node = schema
    for part in parent.split(".") if parent else []:
        node = getattr(node, part)
    matches = difflib.get_close_matches(leaf, [item.name for item in fields(node)], n=1)
    return f"{parent + '.' if parent else ''}{matches[0]}" if matches else None


def resolve_mixed_precision(configured: str | None) -> str:
    """`pipeline.mixed_precision`, or where it is null the launcher's (``accelerate launch --mixed_precision``
    sets ACCELERATE_MIXED_PRECISION), else "no"."""
    import os

    if configured is not None:
        return configured
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher not in ("no", "fp16", "bf16"):
        raise ConfigError(f"config error: the launcher's mixed precision {launcher!r} (ACCELERATE_MIXED_PRECISION) is "
                          "not supported; use no, fp16 or bf16, or set pipeline.mixed_precision")
    return launcher


def _check_launcher(cfg: FdistillConfig) -> None:
    """accelerate's own DeepSpeed and FSDP plugins are not how fdistill shards: say what to use instead."""
    import os

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ConfigError("config error: DeepSpeed (accelerate launch --use_deepspeed) is not supported by fdistill; "
                          "for sharded training launch without it and set pipeline.distributed.strategy=fsdp "
                          "(and pipeline.distributed.shard_teacher=true for a sharded teacher)")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise ConfigError("config error: accelerate's FSDP plugin (accelerate launch --use_fsdp) is not used by "
                          "fdistill, which shards with FSDP2 itself; launch without it and set "
                          f"pipeline.distributed.strategy=fsdp (now {cfg.pipeline.distributed.strategy})")


def validate_config(cfg: DictConfig) -> FdistillConfig:
    """Type- and range-check a composed config; returns the typed object (raises ConfigError), with
    `pipeline.mixed_precision` resolved (null: the launcher's choice).

    Keys the schema does not know are rejected (Hydra's `+key=value` adds any key, even to a typed node)."""
    unknown = [key for key in _unknown_keys(cfg, FdistillConfig(), "") if not key.startswith("hydra")]
    if unknown:
        hints = [f"{key} (did you mean {match}?)" if (match := _close_match(key, FdistillConfig())) else key
                 for key in unknown]
        raise ConfigError(f"config error: unknown key(s) {', '.join(hints)}; no fdistill setting has that name, so it "
                          "would be ignored. Remove it or fix its spelling (python run.py --cfg job lists every key)")
    try:
        typed = OmegaConf.to_object(cfg)
    except Exception as error:  # omegaconf's type errors: name the key and the value
        raise ConfigError(f"config error: {error}") from None
    _check_tree(typed, "")
    _check_launcher(typed)
    typed.pipeline.mixed_precision = resolve_mixed_precision(typed.pipeline.mixed_precision)
    _check_tree(typed.pipeline, "pipeline")  # the resolved value too (fp16 with fsdp)
    return typed  # type: ignore[return-value]
