"""The KD pipeline: teacher_sft → student_init → predistill → teacher_sampling → distill → evaluate.

Shared artifacts (teacher, initialised and pre-distilled student, offline teacher samples) live in the
artifact cache under a hash of the spec that determines them (config values and the keys of the artifacts
they are built from), so every divergence of a sweep reuses them; they are verified on every use
(`cache.py`). Run-level stages (distill, evaluate) write into the run dir, bound to their spec
(`rundir.py`): a finished stage is skipped only when its recorded spec is the one asked for. Every
training stage resumes from its last checkpoint and stops on a non-finite loss (`training/loop.py`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from fdistill.config import FdistillConfig, validate_config
from fdistill.data import SyntheticTask, load_from_config, training_pairs
from fdistill.errors import ArtifactError, FdistillError
from fdistill.files import manifest_problem, read_manifest, write_json_atomic, write_manifest
from fdistill.logs import quiet_libraries
from fdistill.models import (
    SeqCollator,
    check_same_vocab,
    load_teacher,
    load_tokenizer,
    prepare_tiny_pair,
    student_from_pair_config,
    supports_fused_head,
)
from fdistill.models.ensemble import Ensemble, EnsembleSpec
from fdistill.models.gguf import check_sha256, convert_gguf, gguf_location
from fdistill.parallel import Parallel, is_sharded, unwrap
from fdistill.pipeline.cache import Artifact, ArtifactCache
from fdistill.pipeline.evaluate_stage import run_evaluation
from fdistill.pipeline.preflight import TEACHERS_ADVICE, Preflight, check_pair, preflight
from fdistill.pipeline.rundir import RunDirectory
from fdistill.pipeline.specs import StageSpecs
from fdistill.progress import POSITION
from fdistill.sampling import length_sorted_batches, load_teacher_samples, sample_teacher_offline
from fdistill.sampling.served import ServedTeacher
from fdistill.sampling.signal import (
    CachedSignals,
    SignalSpec,
    SignalStore,
    effective_k,
    shard_done,
    signal_record,
    teacher_signal,
    write_shard,
)
from fdistill.training.loop import drop_checkpoints, num_training_steps, parameter_digest, train
from fdistill.training.objectives import (
    FUSED_MIN_LOGITS_MIB,
    BatchSources,
    NllObjective,
    Objective,
    TokenLoss,
    TrainingSet,
    build_objective,
    encode_pairs,
    objective_name,
    teacher_training_set,
)
from fdistill.training.predistill import PredistillObjective

log = logging.getLogger(__name__)



def run_pipeline(cfg: DictConfig, run_dir: str | os.PathLike, hydra_overrides: list[str] | None = None,
                 link_latest: bool = False) -> dict:
    """Validate `cfg` (fails fast, before any model is loaded), then run the enabled stages in order.

    `hydra_overrides` (the command line's overrides) are written to ``<run_dir>/.hydra/overrides.yaml``
    once the run dir is known to hold this config's results (reporting reads them). `link_latest`: point
    ``<run_dir>/../latest`` at this run dir (single runs: ``outputs/runs/<run_name>/latest``)."""
    typed = validate_config(cfg)
    checked = preflight(typed)
    return Pipeline(cfg, typed, checked, Path(run_dir), hydra_overrides, link_latest).execute()


@dataclass(frozen=True)
class ModelRef:
    """A model directory and the identity that the specs built from it hash (never its path)."""

    path: str
    identity: dict
    artifact: Artifact | None = None
    #: several teachers acting as one: each teacher (the ensemble's path is the first one's: the student's layers
    #: are copied from it)
    members: tuple[ModelRef, ...] = ()

    def artifacts(self) -> list[Artifact]:
        own = [self.artifact] if self.artifact is not None else []
        return own + [artifact for member in self.members for artifact in member.artifacts()]


def _contents(*refs) -> dict[str, str]:
    """Content digests of the cache artifacts among `refs` (ModelRef, its members, or Artifact), by kind/key."""
    artifacts = [item for ref in refs for item in (ref.artifacts() if isinstance(ref, ModelRef) else [ref])]
    return {f"{item.kind}/{item.key}": item.content for item in artifacts if item is not None}


class Pipeline:
    def __init__(self, raw: DictConfig, cfg: FdistillConfig, checked: Preflight, run_dir: Path,
                 hydra_overrides: list[str] | None = None, link_latest: bool = False) -> None:
        self.raw, self.cfg, self.checked, self.run_dir = raw, cfg, checked, run_dir
        self.hydra_overrides, self.link_latest = hydra_overrides, link_latest
        self.cache = ArtifactCache(cfg.paths.cache_dir, verify=cfg.pipeline.verify_artifacts,
                                   rebuild=cfg.pipeline.rebuild)
        self.rundir = RunDirectory(run_dir, cfg.pipeline.on_run_dir_conflict)
        self.specs: StageSpecs | None = None  # set once the training data is loaded
        # every process works in every stage (sampling and evaluation are split across them), so no process
        # waits for hours at a barrier: a collective that does not complete within the timeout is an error
        timeout = timedelta(minutes=cfg.pipeline.distributed.timeout_minutes)
        self.accelerator = Accelerator(cpu=cfg.pipeline.cpu, mixed_precision=cfg.pipeline.mixed_precision,
                                       gradient_accumulation_steps=1,
                                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
        self.parallel = Parallel(self.accelerator, cfg.pipeline)
        self.timings: dict[str, float] = {}
        self.stage_summaries: dict[str, dict] = {}
        self.train_digest = ""
        self.wandb_run = None

    # ------------------------------------------------------------------ helpers
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _info(self, message: str, *args) -> None:
        if self.is_main:
            log.info(message, *args)

    def _train_stage(self, name: str, model, loss_fn, stage_cfg, num_items: int, work_dir: Path):
        """Train `model` (bare: prepared with its optimizer by the loop); returns it prepared and trained."""
        steps = num_training_steps(stage_cfg, num_items)
        result = train(parallel=self.parallel, model=model, loss_fn=loss_fn, stage=stage_cfg,
                       total_steps=steps, work_dir=work_dir, desc=name, on_log=self._wandb_logger(name),
                       checksums=self.cfg.pipeline.verify_artifacts)
        self.timings[f"{name}_seconds"] = result.seconds
        self.stage_summaries[name] = {key: value for key, value in result.summary.items() if key != "line"}
        self.accelerator.free_memory()
        return result.model

    def _wandb_logger(self, stage: str):
        if self.wandb_run is None:
            return None
        return lambda row: self.wandb_run.log({f"{stage}/{k}": v for k, v in row.items()})

    def _save_model(self, model, tokenizer, out_dir: Path) -> None:
        self.parallel.save_pretrained(model, tokenizer, out_dir)

    def _load(self, path: str, role: str):
        """A model as `trained` (float32 master weights by default) or `frozen` (the teacher's dtype; prepare it
        with `_frozen` once the loss computer has probed its head)."""
        return self.parallel.load(path, self.cfg.pair.architecture, role)

    def _frozen(self, model, shard: bool | None = None):
        return self.parallel.prepare_frozen(model, shard)

    def _token_loss(self, stage: str, teacher, student, tokenizer) -> TokenLoss:
        """The loss computer of a stage, over the tokenizer's vocabulary (rows a checkpoint pads its vocabulary
        with are ignored): the fused lm-head path per `pipeline.fused_lm_head` (auto: by each call's size) where
        both models' heads are supported, else materialised logits."""
        models = [model for model in (teacher, student) if model is not None]
        mode = {"auto": "auto", "true": True, "false": False}[str(self.cfg.pipeline.fused_lm_head).lower()]
        if mode and not all(supports_fused_head(model) for model in models):
            self._info("[%s] model type %s has no fused lm-head support: losses on materialised logits", stage,
                       sorted({model.config.model_type for model in models}))
            mode = False
        rows = {model.get_output_embeddings().weight.shape[0] for model in models}
        vocab_size = len(tokenizer) if max(rows) > len(tokenizer) else None
        if len(rows) > 1 or vocab_size is not None:
            self._info("[%s] heads of %s rows, tokenizer of %d: distilling over the tokenizer's %d entries", stage,
                       sorted(rows), len(tokenizer), len(tokenizer))
        threshold = self.cfg.pipeline.fused_min_logits_mib
        if threshold is None:
            threshold = FUSED_MIN_LOGITS_MIB["cpu" if self.parallel.device.type == "cpu" else "accelerator"]
        return TokenLoss(teacher, fused=mode, vocab_size=vocab_size, parallel=self.parallel,
                         chunk_rows=self.cfg.pipeline.chunk_tokens, fused_min_bytes=int(threshold * 2**20),
                         stage=stage if self.is_main else "", signal_tail=self.cfg.pipeline.teacher_signal.tail)

    def _finish_artifact_build(self, model, tokenizer, work_dir: Path) -> None:
        """Save the trained model and drop the stage's training checkpoints (3x the model's size) from the
        artifact: once the model is saved, nothing resumes from them."""
        self._save_model(model, tokenizer, work_dir / "model")
        if self.is_main:
            drop_checkpoints(work_dir)

    # ------------------------------------------------------------------ stages
    def execute(self) -> dict:
        cfg = self.cfg
        quiet_libraries()
        with ExitStack() as held:
            # the main process holds the run dir; its refusal (another process runs there) stops every process
            self._on_main(lambda: held.enter_context(self.rundir.locked()))
            self.parallel.check_shared_filesystem(Path(cfg.paths.cache_dir))
            set_seed(cfg.pipeline.artifact_seed)
            data = self.load_data()
            self.specs = StageSpecs(cfg, self.checked.needs, self.train_digest, self.checked.signal_sources)
            planned = self.specs.run_level(data["eval_digest"])

            def check_run_dir() -> None:
                self.rundir.check({stage: (spec, self.run_dir / stage if stage == "distill" else None)
                                   for stage, spec in planned.items()})
                log.info("run dir: %s", self.run_dir)
                write_json_atomic(self.run_dir / "config.json", OmegaConf.to_container(self.raw, resolve=True))
                if self.hydra_overrides is not None:
                    self.rundir.write_job_files(OmegaConf.to_yaml(self.raw, resolve=True), self.hydra_overrides)
                if self.link_latest:
                    self.rundir.link_latest()

            self._on_main(check_run_dir)
            self._start_wandb()
            tokenizer, teacher = self.stage_teacher(data)
            student = None  # none when the run only evaluates the teacher
            if self.specs.student_used():
                student = self.stage_student_init(teacher, tokenizer)
                student = self.stage_predistill(student, teacher, tokenizer, data)
            else:
                for stage in ("student_init", "predistill"):
                    self._mark_skipped(stage, {"reason": "pipeline.evaluate.model=teacher: no student"})
            samples = self.stage_teacher_sampling(teacher, tokenizer, data)
            signal = self.stage_teacher_signal(teacher, samples, tokenizer, data)
            set_seed(cfg.seed)
            final, distill_spec = self.stage_distill(student, teacher, samples, signal, tokenizer, data)
            metrics = self.stage_evaluate(final, student, teacher, distill_spec, tokenizer, data)
            if self.wandb_run is not None:
                self.wandb_run.finish()
        return metrics

    def load_data(self) -> dict:
        ds = self.cfg.dataset
        dataset_node = OmegaConf.to_container(self.raw.dataset, resolve=True)
        train_examples = load_from_config(dataset_node, "train")
        eval_examples = load_from_config(dataset_node, self.cfg.pipeline.evaluate.split)
        pairs = training_pairs(train_examples)
        self.train_digest = _digest_rows(pairs)
        eval_rows = [(ex.id, ex.source, list(ex.references)) for ex in eval_examples]
        return {"train_examples": train_examples, "pairs": pairs, "eval_examples": eval_examples,
                "eval_digest": _digest_rows(eval_rows),
                "collator_factory": lambda tok: SeqCollator(tok, self.checked.is_encoder_decoder,
                                                            ds.max_source_length, ds.max_target_length,
                                                            self.cfg.pair.prompt_format, ds.instruction)}

    def stage_teacher(self, data: dict) -> tuple[object, ModelRef]:
        """teacher_sft: MLE fine-tuning of the teacher on the training pairs (or the given fine-tuned one); with
        pair.teachers, of each teacher on its own data (its seed, its subset), each its own cached artifact. Returns
        the tokenizer and the teacher the later stages distil from (several teachers: their ensemble)."""
        teachers = self.specs.teachers()
        members, tokenizer = [], None
        for index, teacher_cfg in enumerate(teachers):
            label = "" if self.cfg.pair.teachers is None else f"[{teacher_cfg.label or index}]"
            found_tokenizer, ref = self._one_teacher(teacher_cfg, label, data)
            if tokenizer is None:
                tokenizer = found_tokenizer
            else:
                check_same_vocab(tokenizer, found_tokenizer, f"teacher {teachers[0].label or 0}",
                                 f"teacher {teacher_cfg.label or index}", advice=TEACHERS_ADVICE)
            members.append(ref)
        if not self.specs.is_ensemble():
            return tokenizer, members[0]
        self._info("[teacher] %d teachers as one: ensemble.method=%s", len(members), self.cfg.ensemble.method)
        return tokenizer, ModelRef(members[0].path, self.specs.teacher_identity(), None, tuple(members))

    def _one_teacher(self, teacher_cfg, label: str, data: dict) -> tuple[object, ModelRef]:
        cfg, pair = self.cfg, self.cfg.pair
        gguf = None
        if teacher_cfg.build is not None:
            # tiny pair: tokenizer and random-init teacher built from the training texts (same load path after;
            # every teacher of a list gets the same tokenizer: built from all the texts, whatever its subset)
            texts = [text for _, source, target in data["pairs"] for text in (source, target)]
            # main process first: under torch.distributed, transformers' save_pretrained writes nothing on
            # other ranks, so their copy (tokenizer only) must never be the one published
            spec = {"name": pair.name, "architecture": pair.architecture, "teacher": asdict(teacher_cfg)}
            with self.accelerator.main_process_first():
                base_dir = str(prepare_tiny_pair(spec, texts, Path(cfg.paths.cache_dir) / "tiny",
                                                 **({} if teacher_cfg.seed is None else {"init_seed": teacher_cfg.seed})))
            tokenizer_source = base_dir
        elif teacher_cfg.gguf_file is not None:
            gguf = self.stage_gguf(teacher_cfg)
            base_dir = str(gguf.path / "model")
            tokenizer_source = pair.tokenizer or base_dir
        else:
            base_dir = teacher_cfg.name_or_path
            tokenizer_source = pair.tokenizer or teacher_cfg.name_or_path
        tokenizer = load_tokenizer(tokenizer_source)
        check_pair(cfg, tokenizer, base_dir)
        base = ModelRef(base_dir, self.specs.base_teacher_identity(teacher_cfg), gguf)
        if self.specs.sft_skipped(teacher_cfg):
            self._mark_skipped(f"teacher_sft{label}", {"teacher": base_dir, "teacher_identity": base.identity})
            return tokenizer, base
        sft = cfg.pipeline.teacher_sft
        spec = self.specs.teacher(teacher_cfg)

        def build(work_dir: Path) -> None:
            teacher = self._load(base_dir, "trained")
            collator = data["collator_factory"](tokenizer)
            task = SyntheticTask(**dict(cfg.dataset.params)) if cfg.dataset.name == "synthetic" else None
            training = teacher_training_set(self._training_set(tokenizer, data), teacher_cfg, data["pairs"], task)
            seed = cfg.pipeline.artifact_seed if teacher_cfg.seed is None else teacher_cfg.seed
            sources = self._sources(collator, training, sft.batch_size, seed)
            objective = NllObjective(divergence=None, distill=cfg.pipeline.distill, sources=sources, seed=0,
                                     token_loss=self._token_loss(f"teacher_sft{label}", None, teacher, tokenizer))
            teacher = self._train_stage(f"teacher_sft{label}", teacher, objective, sft,
                                        len(training.pair_target_ids), work_dir)
            self._finish_artifact_build(teacher, tokenizer, work_dir)

        artifact = self.cache.get_or_build("teacher", spec, build, self.accelerator, inputs=_inputs(base))
        self._mark_artifact_stage(f"teacher_sft{label}", artifact)
        teacher_dir = str(artifact.path / "model")
        return load_tokenizer(teacher_dir), ModelRef(teacher_dir, artifact.identity, artifact)

    def _teacher_model(self, teacher: ModelRef):
        """The teacher to distil from, loaded frozen (not yet prepared): one model, or the ensemble of several."""
        if not teacher.members:
            return self._load(teacher.path, "frozen")
        models = [self._load(member.path, "frozen") for member in teacher.members]
        rows = {model.get_output_embeddings().weight.shape[0] for model in models}
        ensemble = self.cfg.ensemble
        return Ensemble(models, EnsembleSpec(ensemble.method, tuple(ensemble.weights or ()), ensemble.beam_size,
                                             ensemble.candidates, ensemble.metric), vocab_size=min(rows))

    def stage_gguf(self, teacher=None) -> Artifact:
        """A GGUF teacher dequantised once into a safetensors checkpoint, keyed by the file's hash."""
        teacher = teacher or self.cfg.pair.teacher
        location, local_file = gguf_location(teacher.name_or_path, teacher.gguf_file, teacher.gguf_package)

        def build(work_dir: Path) -> None:
            if not self.is_main:
                return
            if local_file is None:  # a hub repository: fetch the file itself, so its hash is checked too
                from huggingface_hub import hf_hub_download

                downloaded = Path(hf_hub_download(location, teacher.gguf_file))
                check_sha256(downloaded, teacher.gguf_sha256)
                convert_gguf(str(downloaded.parent), downloaded.name, self.cfg.pair.architecture, work_dir / "model")
            else:
                convert_gguf(location, teacher.gguf_file, self.cfg.pair.architecture, work_dir / "model")

        artifact = self.cache.get_or_build("gguf", self.specs.gguf(teacher), build, self.accelerator)
        self._mark("gguf", artifact.spec, {f"{artifact.kind}/{artifact.key}": artifact.content},
                   {"artifact": str(artifact.path), "key": artifact.key})
        return artifact

    def _mark(self, stage: str, spec: dict, inputs: dict, info: dict) -> None:
        if self.is_main:
            self.rundir.complete(stage, spec, inputs, info)

    def _mark_skipped(self, stage: str, info: dict) -> None:
        if self.is_main:
            self.rundir.mark_skipped(stage, info)

    def _mark_artifact_stage(self, stage: str, artifact: Artifact) -> None:
        self._mark(stage, artifact.spec, {f"{artifact.kind}/{artifact.key}": artifact.content},
                   {"artifact": str(artifact.path), "key": artifact.key})

    def stage_student_init(self, teacher: ModelRef, tokenizer) -> ModelRef:
        """student_init: layer copy from the teacher (Shleifer & Rush 2020), or from config/pretrained."""

        def build(work_dir: Path) -> None:
            if not self.is_main:  # a layer copy needs one teacher in memory, not one per process
                return
            teacher_model = load_teacher(teacher.path, self.cfg.pair.architecture, dtype=self.parallel.params_dtype)
            student = student_from_pair_config(teacher_model, asdict(self.cfg.pair))
            student.save_pretrained(work_dir / "model", safe_serialization=True)
            tokenizer.save_pretrained(work_dir / "model")

        source = teacher.members[0] if teacher.members else teacher  # an ensemble's students start from its first
        artifact = self.cache.get_or_build("student_init", self.specs.student_init(source.identity), build,
                                           self.accelerator, inputs=_inputs(source))
        self._mark_artifact_stage("student_init", artifact)
        return ModelRef(str(artifact.path / "model"), artifact.identity, artifact)

    def stage_predistill(self, student: ModelRef, teacher: ModelRef, tokenizer, data: dict) -> ModelRef:
        """predistill: w_mle·MLE + w_kl·word-level KL + w_hidden·hidden-state MSE (Shleifer & Rush 2020)."""
        cfg = self.cfg.pipeline.predistill
        if not cfg.enabled:
            self._mark_skipped("predistill", {"student_identity": student.identity})
            return student

        reads_teacher = self.specs.predistill_reads_teacher()

        def build(work_dir: Path) -> None:
            teacher_model = self._teacher_model(teacher) if reads_teacher else None
            student_model = self._load(student.path, "trained")
            collator = data["collator_factory"](tokenizer)
            training = self._training_set(tokenizer, data)
            sources = self._sources(collator, training, cfg.batch_size, self.cfg.pipeline.artifact_seed)
            token_loss = self._token_loss("predistill", teacher_model, student_model, tokenizer)
            if teacher_model is not None:
                token_loss.teacher = teacher_model = self._frozen(teacher_model)
            objective = PredistillObjective(cfg, teacher_model, sources, token_loss)
            student_model = self._train_stage("predistill", student_model, objective, cfg,
                                              len(training.pair_target_ids), work_dir)
            self._finish_artifact_build(student_model, tokenizer, work_dir)

        artifact = self.cache.get_or_build("predistill", self.specs.predistill(student.identity, teacher.identity),
                                           build, self.accelerator,
                                           inputs=_inputs(student, *([teacher] if reads_teacher else [])))
        self._mark_artifact_stage("predistill", artifact)
        return ModelRef(str(artifact.path / "model"), artifact.identity, artifact)

    def stage_teacher_sampling(self, teacher: ModelRef, tokenizer, data: dict) -> Artifact | None:
        """teacher_sampling: n offline samples per training input, generated once (f-DISTILL Sec. 2.3)."""
        cfg = self.cfg.pipeline.teacher_sampling
        if not self.specs.samples_needed():
            self._mark_skipped("teacher_sampling", {"reason": "the objective needs no offline samples"})
            return None

        def build(work_dir: Path) -> None:
            POSITION.enter("teacher_sampling")
            teacher_model = self._frozen(self._teacher_model(teacher))
            training = self._training_set(tokenizer, data)
            # every process samples its share; the main process writes them all. The build's seconds go to
            # artifact.json, not into the artifact: its content digest covers content only
            sample_teacher_offline(teacher_model, data["collator_factory"](tokenizer), training.example_source_ids,
                                   [ex.id for ex in data["train_examples"]], cfg.decoding, cfg.num_samples,
                                   cfg.batch_size, self.cfg.pipeline.artifact_seed, work_dir if self.is_main else None,
                                   parallel=self.parallel)

        artifact = self.cache.get_or_build("teacher_samples", self.specs.teacher_samples(teacher.identity), build,
                                           self.accelerator, inputs=_inputs(teacher))
        self._mark_artifact_stage("teacher_sampling", artifact)
        return artifact

    def stage_distill(self, student: ModelRef, teacher: ModelRef, samples: Artifact | None,
                      signal: Artifact | None, tokenizer, data: dict) -> tuple[str, dict | None]:
        """distill: the configured divergence in the f-DISTILL or GKD regime, resumable in the run dir.
        Returns the distilled student's directory and the stage's spec (None when disabled)."""
        cfg = self.cfg.pipeline.distill
        if not cfg.enabled:
            self._mark_skipped("distill", {"student_identity": None if student is None else student.identity})
            return (None if student is None else student.path), None
        out_dir = self.run_dir / "student"
        work_dir = self.run_dir / "distill"
        spec = self.specs.distill(student.identity, teacher.identity, None if samples is None else samples.identity,
                                  None if signal is None else signal.identity)
        inputs = _contents(student, teacher, samples, signal)

        def decide() -> bool:
            complete = self.rundir.is_complete("distill", spec, inputs, work_dir)
            if complete:  # the finished student must still be what distill wrote, else it is made again
                problem = manifest_problem(out_dir, self.cfg.pipeline.verify_artifacts)
                if problem is not None:
                    log.warning("[distill] the distilled student does not verify (%s); running the stage again, "
                                "which resumes from its last checkpoint in %s", problem, work_dir)
                    complete = False
            if complete:
                log.info("[distill] already complete in %s (same config and inputs); skipping", self.run_dir)
            else:
                work_dir.mkdir(parents=True, exist_ok=True)
                self.rundir.begin("distill", spec, inputs, work_dir)
            return complete

        if self._on_main(decide):
            return str(out_dir), spec
        self._info("[distill] %s in the %s regime%s, into %s", self.cfg.divergence.label or self.cfg.divergence.name,
                   cfg.regime, f" (lambda={cfg.lam})" if cfg.regime == "gkd" else "", work_dir)
        signals = self._teacher_signals(signal, tokenizer)
        teacher_model = None
        if self.checked.teacher_in_distill:
            teacher_model = self._teacher_model(teacher)
        else:
            self._info("[distill] the teacher is not loaded: %s", "the cached signal covers every teacher term"
                       if cfg.teacher_signal == "offline" else f"served by {self.cfg.pipeline.teacher_server.url}")
        student_model = self._load(student.path, "trained")
        token_loss = self._token_loss("distill", teacher_model, student_model, tokenizer)
        if teacher_model is not None:
            token_loss.teacher = teacher_model = self._frozen(teacher_model)
        training = self._training_set(tokenizer, data)
        teacher_samples = load_teacher_samples(samples.path) if samples is not None else None
        online = cfg.teacher_sampling == "online"
        sources = self._sources(data["collator_factory"](tokenizer), training, cfg.batch_size, self.cfg.seed,
                                teacher=teacher_model, teacher_samples=teacher_samples,
                                teacher_decoding=self.cfg.pipeline.teacher_sampling.decoding if online else None,
                                student_decoding=cfg.student_sampling, fixed_data=cfg.fixed_data,
                                data_fraction=cfg.data_fraction, signals=signals)
        task = SyntheticTask(**dict(self.cfg.dataset.params)) if self.cfg.dataset.name == "synthetic" else None
        objective = build_objective(objective_name(self.cfg.divergence.name, cfg.regime),
                                    divergence=self.checked.divergence, distill=cfg, sources=sources,
                                    seed=self.cfg.seed, context={"task": task, "device": self.parallel.device},
                                    token_loss=token_loss)
        num_items = len(teacher_samples) if teacher_samples is not None else len(training.pair_target_ids)
        student_model = self._train_stage("distill", student_model, objective, cfg, num_items, work_dir)
        self._write_process_record(student_model, objective)
        self._save_model(student_model, tokenizer, out_dir)
        student_content = None
        if self.is_main:  # the run's student: verified like a cache artifact before it is evaluated or reused
            student_content = write_manifest(out_dir, self.cfg.pipeline.verify_artifacts)["content"]
        self._mark("distill", spec, inputs, {"student": str(out_dir), "student_content": student_content,
                                             "seconds": self.timings.get("distill_seconds"),
                                             "steps": self.stage_summaries.get("distill")})
        return str(out_dir), spec

    def _teacher_signals(self, signal: Artifact | None, tokenizer):
        """Where distillation's sparse teacher signals come from: the cached artifact, a teacher server (checked
        now, before any step: reachable, the pair's tokenizer), or nowhere (the dense teacher)."""
        cfg = self.cfg.pipeline
        if cfg.distill.teacher_signal == "offline" and signal is not None:
            k = effective_k(SignalSpec(cfg.teacher_signal.method, cfg.teacher_signal.k), len(tokenizer))
            return CachedSignals(SignalStore(signal.path, cfg.teacher_signal.method, k))
        if cfg.distill.teacher_signal == "served":
            server = cfg.teacher_server
            client = ServedTeacher(server.url, tokenizer, min(cfg.teacher_signal.k, len(tokenizer)),
                                   server.timeout_seconds, server.retries, server.batch_size)
            client.check()
            self._info("[distill] teacher signal: top-%d of %r served at %s", client.k, client.model, server.url)
            return client
        return None

    def stage_teacher_signal(self, teacher: ModelRef, samples: Artifact | None, tokenizer, data: dict
                             ) -> Artifact | None:
        """teacher_signal: the teacher's sparse distribution at every target position of the sequences the
        distillation's teacher terms read (the teacher samples, the references), extracted once and cached
        (pipeline.distill.teacher_signal=offline), every process computing its share of the batches."""
        sources = self.checked.signal_sources
        if not sources:
            return None
        cfg = self.cfg.pipeline.teacher_signal
        spec = self.specs.teacher_signal(teacher.identity, None if samples is None else samples.identity, sources)

        def build(work_dir: Path) -> None:
            POSITION.enter("teacher_signal")
            model = self._load(teacher.path, "frozen")
            vocab_size = len(tokenizer) if model.get_output_embeddings().weight.shape[0] > len(tokenizer) else None
            model = self._frozen(model)
            collator = data["collator_factory"](tokenizer)
            training = self._training_set(tokenizer, data)
            sequences = []  # (source, row, prompt ids, target ids)
            if "samples" in sources:
                rows = load_teacher_samples(samples.path)
                sequences += [("samples", row, training.example_source_ids[example], target) for row, (example, target)
                              in enumerate(zip(rows["example_index"], rows["target_ids"], strict=True))]
            if "references" in sources:
                sequences += [("references", row, source, target) for row, (source, target) in
                              enumerate(zip(training.pair_source_ids, training.pair_target_ids, strict=True))]
            extracted = SignalSpec(cfg.method, cfg.k, cfg.proposal_temperature, self.cfg.pipeline.artifact_seed,
                                   cfg.dtype)
            batches = length_sorted_batches([len(item[2]) + len(item[3]) for item in sequences], cfg.batch_size)
            device = self.parallel.device
            share = self.parallel.deal(len(batches), collective=is_sharded(model))
            for index in tqdm(share, desc="teacher signal", disable=not self.accelerator.is_local_main_process):
                if index is not None and shard_done(work_dir, index):
                    continue  # resumed: this shard was written before the interruption
                chosen = [sequences[position] for position in batches[index if index is not None else 0]]
                batch = {key: value.to(device) for key, value in collator.from_ids(
                    [item[2] for item in chosen], [item[3] for item in chosen]).items()}
                keys = [f"{item[0]}:{item[1]}" for item in chosen]
                signals = teacher_signal(model, batch, extracted, keys, vocab_size, self.parallel)
                if index is not None:
                    write_shard(work_dir, index, [signal_record(item[0], item[1], found, cfg.dtype)
                                                  for item, found in zip(chosen, signals, strict=True)], extracted)
            self.parallel.barrier()

        artifact = self.cache.get_or_build("teacher_signal", spec, build, self.accelerator,
                                           inputs=_inputs(teacher) + ([samples] if samples is not None else []))
        self._mark_artifact_stage("teacher_signal", artifact)
        return artifact

    def _write_process_record(self, student, objective: Objective) -> None:
        """DDP sanity artifact ``<run_dir>/distill/process_<rank>.json``: the student's parameter digest
        and the GKD on-policy micro-steps this process ran; all processes must write the same values."""
        rank = self.parallel.rank
        if self.parallel.shard_training:  # collective; the whole model exists on the main process only
            state = self.parallel.full_state_dict(student)
            digest = parameter_digest(state) if state is not None else None
        else:
            digest = parameter_digest(unwrap(student))
        write_json_atomic(self.run_dir / "distill" / f"process_{rank}.json",
                          {"rank": rank, "num_processes": self.parallel.world_size,
                           "strategy": self.cfg.pipeline.distributed.strategy, "param_sha256": digest,
                           "on_policy_micro_steps": objective.on_policy_micro_steps})

    def stage_evaluate(self, student_dir: str, student: ModelRef, teacher: ModelRef, distill_spec: dict | None,
                       tokenizer, data: dict) -> dict:
        cfg = self.cfg.pipeline.evaluate
        metrics_path = self.run_dir / "metrics.json"
        POSITION.enter("evaluate")
        if not cfg.enabled:
            self._mark_skipped("evaluate", {})
            return {}
        spec = self.specs.evaluate(distill_spec, None if student is None else student.identity, teacher.identity,
                                   data["eval_digest"])
        inputs = _contents(teacher) if distill_spec is not None else _contents(student, teacher)

        def decide() -> dict | None:  # the finished evaluation's metrics, or None to evaluate now
            if self.rundir.is_complete("evaluate", spec, inputs) and metrics_path.is_file():
                log.info("[evaluate] already complete: %s (metrics.json); to evaluate again, give another run_name "
                         "or move that run dir away", self.run_dir)
                return json.loads(metrics_path.read_text())
            if distill_spec is not None and cfg.model == "student":
                self._verify_run_student(Path(student_dir))
            log.info("[evaluate] %s split, %d inputs", cfg.split, len(data["eval_examples"]))
            return None

        done = self._on_main(decide)
        if done is not None:
            return done
        # every process generates and scores its share of the inputs; the main process writes the results
        result = run_evaluation(self, student_dir, teacher, tokenizer, data)
        if self.is_main:
            self.rundir.complete("evaluate", spec, inputs, {"metrics": str(metrics_path)})
        self.accelerator.wait_for_everyone()
        return result

    def _on_main(self, compute):
        """``compute()`` on the main process (which alone reads the run dir), and its result, or its error, on
        every process: no process goes on into collective work that the main process has refused."""
        outcome = None
        if self.is_main:
            try:
                outcome = ("result", compute())
            except FdistillError as error:
                outcome = ("error", error)
        outcome = self.parallel.broadcast(outcome)
        if outcome[0] == "error":
            raise outcome[1]
        return outcome[1]

    def _verify_run_student(self, student_dir: Path) -> None:
        """The distilled student is what the distill stage recorded (its manifest, and the content the stage's
        record names); else an error naming it and the fix."""
        problem = manifest_problem(student_dir, self.cfg.pipeline.verify_artifacts)
        recorded = (self.rundir.record("distill") or {}).get("student_content")
        if problem is None and recorded is not None and read_manifest(student_dir).get("content") != recorded:
            problem = "its manifest is not the one the distill stage recorded"
        if problem is not None:
            raise ArtifactError(f"the distilled student {student_dir} does not verify: {problem}. Delete "
                                f"{self.run_dir / 'stages' / 'distill.json'} and re-run: distill makes it again from its "
                                f"last checkpoint in {self.run_dir / 'distill'}")

    # ------------------------------------------------------------------ data
    def _training_set(self, tokenizer, data: dict) -> TrainingSet:
        if "training_set" not in data:
            data["training_set"] = encode_pairs(data["collator_factory"](tokenizer), data["pairs"],
                                                data["train_examples"])
        return data["training_set"]

    def _sources(self, collator, training: TrainingSet, batch_size: int, seed: int, **kwargs) -> BatchSources:
        return BatchSources(collator=collator, data=training, batch_size=batch_size, seed=seed,
                            device=self.accelerator.device, rank=self.accelerator.process_index,
                            world_size=self.accelerator.num_processes, **kwargs)

    def _start_wandb(self) -> None:
        logger_cfg = self.cfg.logger
        if not (logger_cfg.wandb and self.is_main):
            return
        import wandb

        self.wandb_run = wandb.init(project=logger_cfg.wandb_project, mode=logger_cfg.wandb_mode,
                                    dir=str(self.run_dir), name=self.cfg.run_name,
                                    config=OmegaConf.to_container(self.raw, resolve=True))


def _inputs(*refs: ModelRef) -> list[Artifact]:
    return [artifact for ref in refs for artifact in ref.artifacts()]


def _digest_rows(rows) -> str:
    """sha256 over JSON rows, streamed (XSum's training pairs are hundreds of MB)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row).encode())
        digest.update(b"\n")
    return digest.hexdigest()

