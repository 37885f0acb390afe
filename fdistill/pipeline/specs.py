"""What determines each stage's output: the specs that key the cached artifacts and bind the run-level
stages to their run dir. Pure functions of the config and the data digests (no model is built), so a run
dir can be checked before any work, and an artifact is keyed by the *keys* of its inputs, never their paths.

| stage | spec |
| --- | --- |
| teacher (SFT) | base teacher identity (tiny build spec, or a checkpoint's content fingerprint), SFT settings, training data, artifact seed, mixed precision |
| student_init | teacher identity, `pair.student` |
| predistill | student and teacher identities, predistill settings, training data, artifact seed, mixed precision |
| teacher_samples | teacher identity, sampling settings, training data, artifact seed |
| teacher_signal | teacher identity, the covered sequences (samples key, training data), what is extracted, artifact seed |
| distill (run dir) | student, teacher and samples identities, divergence, distill settings, seed, training data, mixed precision |
| evaluate (run dir) | distill spec hash (or the student's identity), teacher identity, evaluate and dataset settings, evaluation data, seed |
"""

from __future__ import annotations

from dataclasses import asdict

from fdistill.config import FdistillConfig
from fdistill.pipeline.cache import checkpoint_fingerprint, config_hash
from fdistill.sampling import SAMPLER_VERSION
from fdistill.sampling.signal import SIGNAL_VERSION

#: the fields that make one of several teachers differ (absent from the keys of a one-teacher pair)
VARIANT_KEYS = ("label", "seed", "data_subset", "data_fraction")


def _teacher_fields(teacher) -> dict:
    """A teacher config's fields for its key, the unset variant ones left out (one-teacher keys stay as they were)."""
    return {key: value for key, value in asdict(teacher).items() if key not in VARIANT_KEYS or value is not None}


def artifact_identity(kind: str, spec: dict) -> dict:
    """The identity of the artifact `spec` builds (equal to `Artifact.identity` once it exists)."""
    return {"artifact": f"{kind}/{config_hash(spec)}"}


class StageSpecs:
    """The specs of one config, given the digest of its training pairs and the sample sources it needs."""

    def __init__(self, cfg: FdistillConfig, needs: frozenset[str], train_digest: str,
                 signal_sources: frozenset[str] = frozenset()) -> None:
        self.cfg, self.needs, self.train_digest = cfg, needs, train_digest
        self.signal_sources = signal_sources

    def data(self) -> dict:
        """What the shared artifacts depend on in the data: the training pairs themselves (by content, so
        evaluation-only settings such as the test size never retrain a teacher), the truncation and how a
        source becomes a prompt (format and instruction)."""
        ds = self.cfg.dataset
        return {"name": ds.name, "train_pairs_sha256": self.train_digest,
                "max_source_length": ds.max_source_length, "max_target_length": ds.max_target_length,
                "prompt": [self.cfg.pair.prompt_format, ds.instruction]}

    def gguf(self, teacher=None) -> dict:
        """A GGUF teacher's conversion: the file's content and the transformers minor version that dequantises
        it (transformers 4.x converted these tokenizers wrongly)."""
        import transformers

        from fdistill.models.gguf import file_sha256, gguf_location

        teacher = teacher or self.cfg.pair.teacher
        sha256 = teacher.gguf_sha256
        if sha256 is None:
            _, local = gguf_location(teacher.name_or_path, teacher.gguf_file, teacher.gguf_package)
            sha256 = file_sha256(local) if local is not None else f"{teacher.name_or_path}/{teacher.gguf_file}"
        return {"gguf_sha256": sha256, "architecture": self.cfg.pair.architecture,
                "transformers": ".".join(transformers.__version__.split(".")[:2])}

    def teachers(self) -> list:
        """The configs of the teachers this run uses: pair.teacher, or each entry of pair.teachers over it (with
        ensemble.teacher_index: that one alone)."""
        teachers, index = self.cfg.pair.all_teachers(), self.cfg.ensemble.teacher_index
        return teachers if index is None else [teachers[index]]

    def is_ensemble(self) -> bool:
        return self.cfg.ensemble.method != "none"

    def base_teacher_identity(self, teacher=None) -> dict:
        pair = self.cfg.pair
        teacher = teacher or pair.teacher
        if teacher.gguf_file is not None:
            return {"artifact_of": artifact_identity("gguf", self.gguf(teacher)), "tokenizer": pair.tokenizer}
        if teacher.build is not None:
            return {"tiny_pair": {"pair": _teacher_fields(teacher), "architecture": pair.architecture,
                                  "data": self.data(), "artifact_seed": self.cfg.pipeline.artifact_seed}}
        identity = {"checkpoint": checkpoint_fingerprint(teacher.name_or_path), "architecture": pair.architecture}
        if pair.tokenizer is not None:
            identity["tokenizer"] = checkpoint_fingerprint(pair.tokenizer)
        return identity

    def sft_skipped(self, teacher=None) -> bool:
        teacher = teacher or self.cfg.pair.teacher
        return teacher.finetuned or not self.cfg.pipeline.teacher_sft.enabled

    def teacher(self, teacher=None) -> dict:
        """One fine-tuned teacher (its variant: seed and training data, when it is one of several)."""
        pipe = self.cfg.pipeline
        teacher = teacher or self.cfg.pair.teacher
        spec = {"base": self.base_teacher_identity(teacher), "sft": asdict(pipe.teacher_sft), "data": self.data(),
                "artifact_seed": pipe.artifact_seed, "mixed_precision": pipe.mixed_precision}
        variant = {key: getattr(teacher, key) for key in VARIANT_KEYS if getattr(teacher, key) is not None}
        if variant:
            spec["variant"] = variant
        return spec

    def one_teacher_identity(self, teacher=None) -> dict:
        return self.base_teacher_identity(teacher) if self.sft_skipped(teacher) else \
            artifact_identity("teacher", self.teacher(teacher))

    def teacher_identity(self) -> dict:
        """The teacher every later stage distils from: the one teacher, or the ensemble of pair.teachers (its
        method and parameters, and every teacher's identity: changing one teacher changes it)."""
        if not self.is_ensemble():
            return self.one_teacher_identity(self.teachers()[0])
        return {"ensemble": asdict(self.cfg.ensemble),
                "teachers": [self.one_teacher_identity(teacher) for teacher in self.teachers()]}

    def init_source_identity(self) -> dict:
        """The teacher the student is initialised from (its layers, or its config): the one teacher, or an
        ensemble's first, so students of every ensemble of the same teachers start alike."""
        return self.one_teacher_identity(self.teachers()[0])

    def student_init(self, source_identity: dict) -> dict:
        return {"teacher": source_identity, "student": asdict(self.cfg.pair.student)}

    def predistill_reads_teacher(self) -> bool:
        predistill = self.cfg.pipeline.predistill
        return predistill.weight_kl > 0 or predistill.weight_hidden > 0

    def predistill(self, student_identity: dict, teacher_identity: dict) -> dict:
        """MLE-only pre-distillation reads no teacher: its key has none (one artifact for every teacher)."""
        pipe = self.cfg.pipeline
        return {"student": student_identity, "teacher": teacher_identity if self.predistill_reads_teacher() else None,
                "predistill": asdict(pipe.predistill), "data": self.data(), "artifact_seed": pipe.artifact_seed,
                "mixed_precision": pipe.mixed_precision}

    def samples_needed(self) -> bool:
        pipe = self.cfg.pipeline
        return (pipe.teacher_sampling.enabled and pipe.distill.enabled and "teacher" in self.needs
                and pipe.distill.teacher_sampling == "offline")

    def teacher_samples(self, teacher_identity: dict) -> dict:
        pipe = self.cfg.pipeline
        return {"teacher": teacher_identity, "sampling": asdict(pipe.teacher_sampling), "data": self.data(),
                "artifact_seed": pipe.artifact_seed, "sampler": SAMPLER_VERSION}

    def teacher_signal(self, teacher_identity: dict, samples_identity: dict | None, sources: frozenset[str]) -> dict:
        """The cached sparse signal: the teacher, the sequences it covers (the samples' key, the training data) and
        what is extracted; not the tail (the same cache serves every tail)."""
        pipe = self.cfg.pipeline
        extracted = {key: value for key, value in asdict(pipe.teacher_signal).items() if key != "tail"}
        return {"teacher": teacher_identity, "samples": samples_identity if "samples" in sources else None,
                "references": self.data() if "references" in sources else None, "signal": extracted,
                "artifact_seed": pipe.artifact_seed, "extractor": SIGNAL_VERSION}

    def distill(self, student_identity: dict, teacher_identity: dict, samples_identity: dict | None,
                signal_identity: dict | None = None) -> dict:
        pipe = self.cfg.pipeline
        spec = {"student": student_identity, "teacher": teacher_identity, "teacher_samples": samples_identity,
                "divergence": asdict(self.cfg.divergence), "distill": asdict(pipe.distill), "seed": self.cfg.seed,
                "data": self.data(), "mixed_precision": pipe.mixed_precision}
        if pipe.distill.teacher_signal != "dense":  # the signal's settings (the tail too) determine the result
            spec["teacher_signal"] = {"artifact": signal_identity, "settings": asdict(pipe.teacher_signal)}
        return spec

    def evaluate(self, distill_spec: dict | None, student_identity: dict, teacher_identity: dict,
                 eval_digest: str) -> dict:
        return {"distill_spec_sha256": None if distill_spec is None else config_hash(distill_spec, 64),
                "student": None if distill_spec is not None else student_identity, "teacher": teacher_identity,
                "evaluate": asdict(self.cfg.pipeline.evaluate), "dataset": asdict(self.cfg.dataset),
                "eval_examples_sha256": eval_digest, "seed": self.cfg.seed}

    def student_used(self) -> bool:
        """Whether the run makes a student at all (not when it only evaluates the teacher)."""
        pipe = self.cfg.pipeline
        return pipe.predistill.enabled or pipe.distill.enabled or pipe.evaluate.model == "student"

    def run_level(self, eval_digest: str) -> dict[str, dict]:
        """The specs of the enabled run-level stages (distill, evaluate), from the config alone."""
        teacher = self.teacher_identity()
        student = None
        if self.student_used():
            student = artifact_identity("student_init", self.student_init(self.init_source_identity()))
        if self.cfg.pipeline.predistill.enabled:
            student = artifact_identity("predistill", self.predistill(student, teacher))
        samples = artifact_identity("teacher_samples", self.teacher_samples(teacher)) if self.samples_needed() else None
        signal = None
        if self.signal_sources:
            signal = artifact_identity("teacher_signal", self.teacher_signal(teacher, samples, self.signal_sources))
        distill = self.distill(student, teacher, samples, signal) if self.cfg.pipeline.distill.enabled else None
        planned = {}
        if self.cfg.pipeline.evaluate.enabled:  # a disabled stage is not checked: it neither runs nor writes
            planned["evaluate"] = self.evaluate(distill, student, teacher, eval_digest)
        if distill is not None:
            planned["distill"] = distill
        return planned
