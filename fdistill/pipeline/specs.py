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

    def gguf(self) -> dict:
        """A GGUF teacher's conversion: the file's content and the transformers minor version that dequantises
        it (transformers 4.x converted these tokenizers wrongly)."""
        import transformers

        from fdistill.models.gguf import file_sha256, gguf_location

        teacher = self.cfg.pair.teacher
        sha256 = teacher.gguf_sha256
        if sha256 is None:
            _, local = gguf_location(teacher.name_or_path, teacher.gguf_file, teacher.gguf_package)
            sha256 = file_sha256(local) if local is not None else f"{teacher.name_or_path}/{teacher.gguf_file}"
        return {"gguf_sha256": sha256, "architecture": self.cfg.pair.architecture,
                "transformers": ".".join(transformers.__version__.split(".")[:2])}

    def base_teacher_identity(self) -> dict:
        pair = self.cfg.pair
        if pair.teacher.gguf_file is not None:
            return {"artifact_of": artifact_identity("gguf", self.gguf()), "tokenizer": pair.tokenizer}
        if pair.teacher.build is not None:
            return {"tiny_pair": {"pair": asdict(pair.teacher), "architecture": pair.architecture,
                                  "data": self.data(), "artifact_seed": self.cfg.pipeline.artifact_seed}}
        identity = {"checkpoint": checkpoint_fingerprint(pair.teacher.name_or_path), "architecture": pair.architecture}
        if pair.tokenizer is not None:
            identity["tokenizer"] = checkpoint_fingerprint(pair.tokenizer)
        return identity

    def sft_skipped(self) -> bool:
        return self.cfg.pair.teacher.finetuned or not self.cfg.pipeline.teacher_sft.enabled

    def teacher(self) -> dict:
        pipe = self.cfg.pipeline
        return {"base": self.base_teacher_identity(), "sft": asdict(pipe.teacher_sft), "data": self.data(),
                "artifact_seed": pipe.artifact_seed, "mixed_precision": pipe.mixed_precision}

    def teacher_identity(self) -> dict:
        return self.base_teacher_identity() if self.sft_skipped() else artifact_identity("teacher", self.teacher())

    def student_init(self, teacher_identity: dict) -> dict:
        return {"teacher": teacher_identity, "student": asdict(self.cfg.pair.student)}

    def predistill(self, student_identity: dict, teacher_identity: dict) -> dict:
        pipe = self.cfg.pipeline
        return {"student": student_identity, "teacher": teacher_identity, "predistill": asdict(pipe.predistill),
                "data": self.data(), "artifact_seed": pipe.artifact_seed, "mixed_precision": pipe.mixed_precision}

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

    def run_level(self, eval_digest: str) -> dict[str, dict]:
        """The specs of the enabled run-level stages (distill, evaluate), from the config alone."""
        teacher = self.teacher_identity()
        student = artifact_identity("student_init", self.student_init(teacher))
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
