"""The KD pipeline: teacher_sft → student_init → predistill → teacher_sampling → distill → evaluate.

Shared artifacts (teacher, initialised and pre-distilled student, offline teacher samples) live in the
artifact cache under a hash of the config that determines them, so every divergence of a sweep reuses
them; run-level stages (distill, evaluate) write into the run dir with a completion marker and are
skipped when the marker exists. Every training stage resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from omegaconf import DictConfig, OmegaConf

from fdistill.config import FdistillConfig, validate_config
from fdistill.data import load_from_config, training_pairs
from fdistill.files import write_json_atomic
from fdistill.models import (
    SeqCollator,
    load_teacher,
    load_tokenizer,
    prepare_tiny_pair,
    student_from_pair_config,
)
from fdistill.pipeline.cache import ArtifactCache, read_stage_marker, write_stage_marker
from fdistill.pipeline.evaluate_stage import run_evaluation
from fdistill.pipeline.preflight import Preflight, preflight
from fdistill.sampling import load_teacher_samples, sample_teacher_offline
from fdistill.training.loop import num_training_steps, parameter_digest, train
from fdistill.training.objectives import (
    BatchSources,
    DistillationObjective,
    MleObjective,
    TrainingSet,
    encode_pairs,
)
from fdistill.training.predistill import PredistillObjective

# Teacher sampling and evaluation run on the main process while the others wait at a barrier; at paper
# scale that takes hours, far past torch.distributed's default timeout (10 min NCCL, 30 min gloo).
MAIN_ONLY_STAGE_TIMEOUT = timedelta(hours=48)


def run_pipeline(cfg: DictConfig, run_dir: str | os.PathLike) -> dict:
    """Validate `cfg` (fails fast, before any model is loaded), then run the enabled stages in order."""
    typed = validate_config(cfg)
    checked = preflight(typed)
    return Pipeline(cfg, typed, checked, Path(run_dir)).execute()


class Pipeline:
    def __init__(self, raw: DictConfig, cfg: FdistillConfig, checked: Preflight, run_dir: Path) -> None:
        self.raw, self.cfg, self.checked, self.run_dir = raw, cfg, checked, run_dir
        self.cache = ArtifactCache(cfg.paths.cache_dir)
        self.accelerator = Accelerator(cpu=cfg.pipeline.cpu, mixed_precision=cfg.pipeline.mixed_precision,
                                       gradient_accumulation_steps=1,
                                       kwargs_handlers=[InitProcessGroupKwargs(timeout=MAIN_ONLY_STAGE_TIMEOUT)])
        self.timings: dict[str, float] = {}
        self.train_digest = ""
        self.wandb_run = None

    # ------------------------------------------------------------------ helpers
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _data_spec(self) -> dict:
        """What the shared artifacts depend on in the data: the training pairs themselves (by content, so
        evaluation-only settings such as the test size never retrain a teacher) and the truncation."""
        ds = self.cfg.dataset
        return {"name": ds.name, "train_pairs_sha256": self.train_digest,
                "max_source_length": ds.max_source_length, "max_target_length": ds.max_target_length}

    def _train_stage(self, name: str, model, loss_fn, stage_cfg, num_items: int, work_dir: Path) -> None:
        model = self.accelerator.prepare(model)
        steps = num_training_steps(stage_cfg, num_items)
        result = train(accelerator=self.accelerator, model=model, loss_fn=loss_fn, stage=stage_cfg,
                       total_steps=steps, work_dir=work_dir, desc=name, on_log=self._wandb_logger(name))
        self.timings[f"{name}_seconds"] = result.seconds
        self.accelerator.free_memory()

    def _wandb_logger(self, stage: str):
        if self.wandb_run is None:
            return None
        return lambda row: self.wandb_run.log({f"{stage}/{k}": v for k, v in row.items()})

    def _save_model(self, model, tokenizer, out_dir: Path) -> None:
        self.accelerator.wait_for_everyone()
        if self.is_main:
            self.accelerator.unwrap_model(model).save_pretrained(out_dir, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ stages
    def execute(self) -> dict:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            write_json_atomic(self.run_dir / "config.json", OmegaConf.to_container(self.raw, resolve=True))
        self._start_wandb()
        set_seed(cfg.pipeline.artifact_seed)
        data = self.load_data()
        tokenizer, teacher_dir = self.stage_teacher(data)
        student_dir = self.stage_student_init(teacher_dir, tokenizer)
        student_dir = self.stage_predistill(student_dir, teacher_dir, tokenizer, data)
        samples_dir = self.stage_teacher_sampling(teacher_dir, tokenizer, data)
        set_seed(cfg.seed)
        final_dir = self.stage_distill(student_dir, teacher_dir, samples_dir, tokenizer, data)
        metrics = self.stage_evaluate(final_dir, teacher_dir, tokenizer, data)
        if self.wandb_run is not None:
            self.wandb_run.finish()
        return metrics

    def load_data(self) -> dict:
        ds = self.cfg.dataset
        train_examples = load_from_config(OmegaConf.to_container(self.raw.dataset, resolve=True), "train")
        eval_examples = load_from_config(OmegaConf.to_container(self.raw.dataset, resolve=True),
                                         self.cfg.pipeline.evaluate.split)
        pairs = training_pairs(train_examples)
        self.train_digest = _digest_pairs(pairs)
        return {"train_examples": train_examples, "pairs": pairs, "eval_examples": eval_examples,
                "collator_factory": lambda tok: SeqCollator(tok, self.checked.is_encoder_decoder,
                                                            ds.max_source_length, ds.max_target_length)}

    def stage_teacher(self, data: dict):
        """teacher_sft: MLE fine-tuning of the teacher on the training pairs (or the given fine-tuned one)."""
        cfg, pair = self.cfg, self.cfg.pair
        base_spec: dict = {"pair": asdict(pair.teacher), "tokenizer": pair.tokenizer, "architecture": pair.architecture}
        if pair.teacher.build is not None:
            # tiny pair: tokenizer and random-init teacher built from the training texts (same load path after)
            texts = [text for _, source, target in data["pairs"] for text in (source, target)]
            base_spec["data"] = self._data_spec()
            base_spec["artifact_seed"] = cfg.pipeline.artifact_seed
            # main process first: under torch.distributed, transformers' save_pretrained writes nothing on
            # other ranks, so their copy (tokenizer only) must never be the one published
            with self.accelerator.main_process_first():
                base_dir = str(prepare_tiny_pair(OmegaConf.to_container(self.raw.pair, resolve=True), texts,
                                                 Path(cfg.paths.cache_dir) / "tiny"))
            tokenizer_source = base_dir
        else:
            base_dir = pair.teacher.name_or_path
            tokenizer_source = pair.tokenizer or pair.teacher.name_or_path
        sft = cfg.pipeline.teacher_sft
        if pair.teacher.finetuned or not sft.enabled:
            tokenizer = load_tokenizer(tokenizer_source)
            write_stage_marker(self.run_dir, "teacher_sft", {"skipped": True, "teacher": base_dir})
            return tokenizer, base_dir

        spec = {"base": base_spec, "sft": asdict(sft), "data": self._data_spec(),
                "artifact_seed": cfg.pipeline.artifact_seed}

        def build(work_dir: Path) -> None:
            tokenizer = load_tokenizer(tokenizer_source)
            teacher = load_teacher(base_dir, pair.architecture)
            collator = data["collator_factory"](tokenizer)
            training = self._training_set(tokenizer, data)
            sources = self._sources(collator, training, sft.batch_size, cfg.pipeline.artifact_seed)
            loss_fn = MleObjective(sources)
            self._train_stage("teacher_sft", teacher, loss_fn, sft, len(training.pair_target_ids), work_dir)
            self._save_model(teacher, tokenizer, work_dir / "model")

        artifact = self.cache.get_or_build("teacher", spec, build, self.accelerator)
        write_stage_marker(self.run_dir, "teacher_sft", {"artifact": str(artifact.path), "key": artifact.key})
        teacher_dir = str(artifact.path / "model")
        return load_tokenizer(teacher_dir), teacher_dir

    def stage_student_init(self, teacher_dir: str, tokenizer) -> str:
        """student_init: layer copy from the teacher (Shleifer & Rush 2020), or from config/pretrained."""
        student_cfg = self.cfg.pair.student
        spec = {"teacher": teacher_dir, "student": asdict(student_cfg)}

        def build(work_dir: Path) -> None:
            teacher = load_teacher(teacher_dir, self.cfg.pair.architecture)
            student = student_from_pair_config(teacher, asdict(self.cfg.pair))
            self._save_model(student, tokenizer, work_dir / "model")

        artifact = self.cache.get_or_build("student_init", spec, build, self.accelerator)
        write_stage_marker(self.run_dir, "student_init", {"artifact": str(artifact.path), "key": artifact.key})
        return str(artifact.path / "model")

    def stage_predistill(self, student_dir: str, teacher_dir: str, tokenizer, data: dict) -> str:
        """predistill: w_mle·MLE + w_kl·word-level KL + w_hidden·hidden-state MSE (Shleifer & Rush 2020)."""
        cfg = self.cfg.pipeline.predistill
        if not cfg.enabled:
            write_stage_marker(self.run_dir, "predistill", {"skipped": True})
            return student_dir
        spec = {"student": student_dir, "teacher": teacher_dir, "predistill": asdict(cfg), "data": self._data_spec(),
                "artifact_seed": self.cfg.pipeline.artifact_seed}

        def build(work_dir: Path) -> None:
            device = self.accelerator.device
            teacher = load_teacher(teacher_dir, self.cfg.pair.architecture).to(device).eval()
            student = load_teacher(student_dir, self.cfg.pair.architecture)
            collator = data["collator_factory"](tokenizer)
            training = self._training_set(tokenizer, data)
            sources = self._sources(collator, training, cfg.batch_size, self.cfg.pipeline.artifact_seed)
            objective = PredistillObjective(cfg, teacher, sources)
            self._train_stage("predistill", student, objective, cfg, len(training.pair_target_ids), work_dir)
            self._save_model(student, tokenizer, work_dir / "model")

        artifact = self.cache.get_or_build("predistill", spec, build, self.accelerator)
        write_stage_marker(self.run_dir, "predistill", {"artifact": str(artifact.path), "key": artifact.key})
        return str(artifact.path / "model")

    def stage_teacher_sampling(self, teacher_dir: str, tokenizer, data: dict) -> Path | None:
        """teacher_sampling: n offline samples per training input, generated once (f-DISTILL Sec. 2.3)."""
        cfg = self.cfg.pipeline.teacher_sampling
        needs_offline = "teacher" in self.checked.needs and self.cfg.pipeline.distill.teacher_sampling == "offline"
        if not (cfg.enabled and needs_offline and self.cfg.pipeline.distill.enabled):
            write_stage_marker(self.run_dir, "teacher_sampling", {"skipped": True,
                                                                  "reason": "the objective needs no offline samples"})
            return None
        spec = {"teacher": teacher_dir, "sampling": asdict(cfg), "data": self._data_spec(),
                "artifact_seed": self.cfg.pipeline.artifact_seed}

        def build(work_dir: Path) -> None:
            if not self.is_main:
                return
            teacher = load_teacher(teacher_dir, self.cfg.pair.architecture).to(self.accelerator.device).eval()
            training = self._training_set(tokenizer, data)
            start = time.perf_counter()
            sample_teacher_offline(teacher, data["collator_factory"](tokenizer), training.example_source_ids,
                                   [ex.id for ex in data["train_examples"]], cfg.decoding, cfg.num_samples,
                                   cfg.batch_size, self.cfg.pipeline.artifact_seed, work_dir)
            write_json_atomic(work_dir / "timing.json", {"seconds": time.perf_counter() - start})

        artifact = self.cache.get_or_build("teacher_samples", spec, build, self.accelerator)
        write_stage_marker(self.run_dir, "teacher_sampling", {"artifact": str(artifact.path), "key": artifact.key})
        return artifact.path

    def stage_distill(self, student_dir: str, teacher_dir: str, samples_dir: Path | None, tokenizer,
                      data: dict) -> str:
        """distill: the configured divergence in the f-DISTILL or GKD regime, resumable in the run dir."""
        cfg = self.cfg.pipeline.distill
        out_dir = self.run_dir / "student"
        marker = read_stage_marker(self.run_dir, "distill")
        if not cfg.enabled:
            write_stage_marker(self.run_dir, "distill", {"skipped": True})
            return student_dir
        if marker is not None:
            self.accelerator.print(f"[distill] already complete in {self.run_dir}; skipping")
            return str(out_dir)
        device = self.accelerator.device
        teacher = load_teacher(teacher_dir, self.cfg.pair.architecture).to(device).eval()
        student = load_teacher(student_dir, self.cfg.pair.architecture)
        training = self._training_set(tokenizer, data)
        samples = load_teacher_samples(samples_dir) if samples_dir is not None else None
        online = cfg.teacher_sampling == "online"
        sources = self._sources(data["collator_factory"](tokenizer), training, cfg.batch_size, self.cfg.seed,
                                teacher=teacher, teacher_samples=samples,
                                teacher_decoding=self.cfg.pipeline.teacher_sampling.decoding if online else None,
                                student_decoding=cfg.student_sampling, fixed_data=cfg.fixed_data)
        objective = DistillationObjective(divergence_cfg=self.cfg.divergence, divergence=self.checked.divergence,
                                          distill=cfg, teacher=teacher, sources=sources, seed=self.cfg.seed)
        num_items = len(samples) if samples is not None else len(training.pair_target_ids)
        self._train_stage("distill", student, objective, cfg, num_items, self.run_dir / "distill")
        self._write_process_record(student, objective)
        self._save_model(student, tokenizer, out_dir)
        write_stage_marker(self.run_dir, "distill", {"student": str(out_dir),
                                                     "seconds": self.timings.get("distill_seconds")})
        return str(out_dir)

    def _write_process_record(self, student, objective: DistillationObjective) -> None:
        """DDP sanity artifact ``<run_dir>/distill/process_<rank>.json``: the student's parameter digest
        and the GKD on-policy micro-steps this process ran; all processes must write the same values."""
        rank = self.accelerator.process_index
        write_json_atomic(self.run_dir / "distill" / f"process_{rank}.json",
                          {"rank": rank, "num_processes": self.accelerator.num_processes,
                           "param_sha256": parameter_digest(self.accelerator.unwrap_model(student)),
                           "on_policy_micro_steps": objective.on_policy_micro_steps})

    def stage_evaluate(self, student_dir: str, teacher_dir: str, tokenizer, data: dict) -> dict:
        cfg = self.cfg.pipeline.evaluate
        metrics_path = self.run_dir / "metrics.json"
        if not cfg.enabled:
            write_stage_marker(self.run_dir, "evaluate", {"skipped": True})
            return {}
        if read_stage_marker(self.run_dir, "evaluate") is not None and metrics_path.is_file():
            self.accelerator.print(f"[evaluate] already complete: {metrics_path}")
            return json.loads(metrics_path.read_text())
        result: dict = {}
        if self.is_main:
            result = run_evaluation(self, student_dir, teacher_dir, tokenizer, data)
            write_stage_marker(self.run_dir, "evaluate", {"metrics": str(metrics_path)})
        self.accelerator.wait_for_everyone()
        return result

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


def _digest_pairs(pairs) -> str:
    """sha256 over the (id, source, target) training pairs, streamed (XSum's are hundreds of MB)."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps(pair).encode())
        digest.update(b"\n")
    return digest.hexdigest()
