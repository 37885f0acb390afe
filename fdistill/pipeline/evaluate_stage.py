"""The `evaluate` stage: generate on the evaluation split, save `predictions.jsonl`, score the dataset's
metrics, run the papers' analyses, write `metrics.json`, and print a short table.

Text metrics score the configured decoding (greedy/beam/sampling); the analyses draw one student and
one teacher sample per input at temperature 1 (f-DISTILL Table 3), and on the synthetic task the
exact metrics are reported for both the decoded predictions (`validity_rate`, ...) and the temperature-1
student samples (`synthetic_sample/...`: mode averaging and mode collapse show there).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from fdistill.config import DecodingConfig
from fdistill.data.synthetic import SyntheticTask
from fdistill.evaluation import (
    evaluate_predictions,
    exposure_bias_excess_error,
    likelihood_coverage_risk,
    synthetic_exact_metrics,
    teacher_distinct_bigrams,
    write_metrics,
    write_predictions,
)
from fdistill.files import write_json_atomic
from fdistill.sampling import SAMPLER_VERSION, sample_targets

log = logging.getLogger(__name__)

# (metrics.json key, label, one-line meaning) of the console summary, most informative first
SYNTHETIC_SUMMARY = (
    ("synthetic_sample/validity_rate", "validity of samples (T=1)",
     "share of temperature-1 student samples that are correct verbalisations of their input"),
    ("synthetic_sample/modes_covered", "modes covered (T=1)",
     "distinct verbalisation modes among those samples, of the task's K"),
    ("synthetic_sample/mode_tv", "mode TV (T=1)", "total variation to the true mode distribution (0 = exact)"),
)
RISK_SUMMARY = (
    ("risk/likelihood_risk_per_token", "R_llh per token",
     "-log p_teacher of student samples: how implausible the student's outputs are (lower is better)"),
    ("risk/coverage_risk_per_token", "R_cvg per token",
     "-log q_student of teacher samples: how much of the teacher's outputs the student misses (lower is better)"),
    ("teacher_dist", "TeacherDist", "distinct bigrams % among 5 teacher samples per input (task multimodality)"),
)
TEXT_METRICS_FIRST = ("bleu", "rouge1", "rouge2", "rougeL", "meteor", "ter", "chrf", "bertscore", "moverscore",
                      "bleurt", "bleu1", "bleu2", "self_bleu")


def _decode(tokenizer, targets: list[list[int]]) -> list[str]:
    return [text.strip() for text in tokenizer.batch_decode(targets, skip_special_tokens=True)]


def run_evaluation(pipe, student_dir: str, teacher_ref, tokenizer, data: dict) -> dict:
    """Every process generates and scores its share of the inputs (`pipe.parallel`); the main process scores
    the text metrics of all of them and writes the files. Returns the metrics on every process."""
    cfg, eval_cfg, parallel = pipe.cfg, pipe.cfg.pipeline.evaluate, pipe.parallel
    device = parallel.device
    start = time.perf_counter()
    teacher = parallel.prepare_frozen(pipe._teacher_model(teacher_ref))
    if eval_cfg.model == "teacher":  # the teacher itself (several: their ensemble, or the one at teacher_index)
        student = teacher
    else:
        student = parallel.prepare_frozen(parallel.load(student_dir, cfg.pair.architecture, "evaluated"),
                                          shard=parallel.shard_training)
    collator = data["collator_factory"](tokenizer)
    examples = data["eval_examples"]
    source_ids = collator.encode_sources([ex.source for ex in examples])

    generated = sample_targets(student, collator, source_ids, eval_cfg.decoding, seed=cfg.seed * 100_003,
                               batch_size=eval_cfg.batch_size, desc="evaluate: generate", parallel=parallel)
    predictions = _decode(tokenizer, generated)
    task = SyntheticTask(**dict(cfg.dataset.params)) if cfg.dataset.name == "synthetic" else None
    sources = [ex.source for ex in examples]
    references = [list(ex.references) for ex in examples]
    scoring = {"bertscore_encoder": eval_cfg.bertscore_encoder, "moverscore_encoder": eval_cfg.moverscore_encoder,
               "bleurt_checkpoint": eval_cfg.bleurt_checkpoint, "synthetic_task": task, "sources": sources}
    metrics, metadata = {}, {}
    if parallel.is_main:
        write_predictions(pipe.run_dir, [{"id": ex.id, "source": ex.source, "prediction": pred,
                                          "references": list(ex.references)}
                                         for ex, pred in zip(examples, predictions, strict=True)])
        metrics, metadata = evaluate_predictions(predictions, references, list(cfg.dataset.metrics), **scoring)
    for temperature in eval_cfg.sample_temperatures:  # GKD Fig. 5: quality vs diversity over temperatures
        decoding = DecodingConfig(strategy="sample", temperature=temperature,
                                  max_new_tokens=eval_cfg.decoding.max_new_tokens)
        sampled = _decode(tokenizer, sample_targets(student, collator, source_ids, decoding,
                                                    seed=cfg.seed * 100_003 + int(temperature * 1000),
                                                    batch_size=eval_cfg.batch_size, parallel=parallel))
        if parallel.is_main:
            names = list(dict.fromkeys([*cfg.dataset.metrics, "self_bleu"]))
            scores, _ = evaluate_predictions(sampled, references, names, **scoring)
            metrics.update({f"temperature_{temperature:g}/{key}": value for key, value in scores.items()})
    if task is not None and "synthetic_exact" not in cfg.dataset.metrics:
        metrics.update(synthetic_exact_metrics(task, sources, predictions))

    metrics.update(_analyses(pipe, teacher, teacher_ref, student, collator, tokenizer, examples, source_ids, task,
                             data))
    if not parallel.is_main:
        return parallel.broadcast(None)
    metadata.update({
        "decoding": asdict(eval_cfg.decoding), "split": eval_cfg.split, "num_examples": len(examples),
        "analysis_examples": min(eval_cfg.analysis_limit, len(examples)), "divergence": asdict(cfg.divergence),
        "distill": {"regime": cfg.pipeline.distill.regime, "lam": cfg.pipeline.distill.lam,
                    "teacher_sampling": cfg.pipeline.distill.teacher_sampling},
        # training loops of this process, artifacts it built (teacher_eval: inside evaluate_seconds), evaluation
        "timings_seconds": {**pipe.timings, **{f"build_{kind}_seconds": seconds for kind, seconds in
                                               pipe.cache.build_seconds.items()},
                            "evaluate_seconds": time.perf_counter() - start},
        "device": str(device), "torch_threads": torch.get_num_threads(), "mixed_precision": cfg.pipeline.mixed_precision,
        "processes": parallel.world_size, "strategy": cfg.pipeline.distributed.strategy,
        "shard_teacher": parallel.shard_teacher, "training_steps": pipe.stage_summaries,
        "dataset": cfg.dataset.name, "pair": cfg.pair.name,
    })
    write_metrics(pipe.run_dir, metrics, metadata)
    for line in summary_lines(metrics, cfg, pipe.run_dir):
        log.info("%s", line)
    return parallel.broadcast(metrics)


def teacher_side(pipe, teacher, teacher_ref, collator, ids, data: dict) -> dict:
    """What the analyses need of the teacher alone: one temperature-1 sample per analysed input and
    TeacherDist. They depend on the teacher, the inputs and the seed, not on the student, so they are built
    once per sweep (artifact ``teacher_eval``) instead of once per method (at LLM scale, most of the
    evaluation's time)."""
    eval_cfg = pipe.cfg.pipeline.evaluate
    spec = {"teacher": teacher_ref.identity, "eval_examples_sha256": data["eval_digest"], "inputs": len(ids),
            "max_new_tokens": eval_cfg.decoding.max_new_tokens, "seed": pipe.cfg.seed,
            "batch_size": eval_cfg.batch_size, "sampler": SAMPLER_VERSION,
            "teacher_dist": "teacher_dist" in eval_cfg.analyses, "prompt": [pipe.cfg.pair.prompt_format,
                                                                            pipe.cfg.dataset.instruction]}

    def build(work_dir: Path) -> None:  # on every process, each sampling its share
        decoding = DecodingConfig(strategy="sample", temperature=1.0, max_new_tokens=eval_cfg.decoding.max_new_tokens)
        samples = sample_targets(teacher, collator, ids, decoding, seed=pipe.cfg.seed + 29,
                                 batch_size=eval_cfg.batch_size, parallel=pipe.parallel)
        result = {"samples": samples}
        if spec["teacher_dist"]:
            result["teacher_dist"] = teacher_distinct_bigrams(teacher, collator, ids, num_samples=5,
                                                              max_new_tokens=eval_cfg.decoding.max_new_tokens,
                                                              batch_size=eval_cfg.batch_size, seed=pipe.cfg.seed + 31,
                                                              parallel=pipe.parallel)
        if pipe.parallel.is_main:
            write_json_atomic(work_dir / "teacher_eval.json", result)

    inputs = [teacher_ref.artifact] if teacher_ref.artifact is not None else []
    artifact = pipe.cache.get_or_build("teacher_eval", spec, build, pipe.accelerator, inputs=inputs)
    return json.loads((artifact.path / "teacher_eval.json").read_text())


def _analyses(pipe, teacher, teacher_ref, student, collator, tokenizer, examples, source_ids, task, data) -> dict:
    """f-DISTILL Table 3 risks and TeacherDist, exposure-bias ExError, synthetic exact metrics of samples, and
    the RL objective's reward of the student's samples."""
    eval_cfg = pipe.cfg.pipeline.evaluate
    rl = pipe.cfg.pipeline.distill.regime == "gkd_rl" and pipe.cfg.pipeline.distill.rl.alpha < 1
    if not eval_cfg.analyses and task is None and not rl:
        return {}
    limit = min(eval_cfg.analysis_limit, len(examples))
    sources, ids = [ex.source for ex in examples[:limit]], source_ids[:limit]
    options = {"max_new_tokens": eval_cfg.decoding.max_new_tokens, "batch_size": eval_cfg.batch_size,
               "parallel": pipe.parallel, "chunk_rows": pipe.cfg.pipeline.chunk_tokens}
    unit_temperature = DecodingConfig(strategy="sample", temperature=1.0, max_new_tokens=eval_cfg.decoding.max_new_tokens)
    student_samples = sample_targets(student, collator, ids, unit_temperature, seed=pipe.cfg.seed + 17,
                                     batch_size=eval_cfg.batch_size, parallel=pipe.parallel)
    cached = teacher_side(pipe, teacher, teacher_ref, collator, ids, data)
    teacher_samples = cached["samples"]
    out: dict = {}
    if "risks" in eval_cfg.analyses:
        risks = likelihood_coverage_risk(teacher, student, collator, ids, student_samples=student_samples,
                                         teacher_samples=teacher_samples, **options)
        out.update({f"risk/{k}": v for k, v in risks.items()})
    if "teacher_dist" in eval_cfg.analyses:
        out["teacher_dist"] = cached["teacher_dist"]
    if "exposure_bias" in eval_cfg.analyses:
        exposure = exposure_bias_excess_error(teacher, student, collator, ids, student_samples=student_samples,
                                              reference_target_ids=teacher_samples, **options)
        out.update({f"exposure/{k}": v for k, v in exposure.items()})
    decoded = _decode(tokenizer, student_samples)
    if task is not None:
        out.update({f"synthetic_sample/{k}": v for k, v in synthetic_exact_metrics(task, sources, decoded).items()})
    if rl:
        out["rl/reward"] = rl_reward(pipe, teacher, collator, examples[:limit], ids, student_samples, decoded, task)
    return out


def rl_reward(pipe, teacher, collator, examples, ids, samples, decoded, task) -> float:
    """Mean return of the training reward (`pipeline.distill.rl.reward`) over the temperature-1 student
    samples of the analysed inputs (GKD Fig. 6's reward axis), split across the processes."""
    from fdistill.parallel import is_sharded
    from fdistill.training.objectives import TokenLoss
    from fdistill.training.rewards import RewardInputs, build_reward

    rl = pipe.cfg.pipeline.distill.rl
    reward = build_reward(rl.reward, rl.reward_params, task=task, device=pipe.parallel.device)
    step = pipe.cfg.pipeline.evaluate.batch_size
    device = pipe.parallel.device
    token_loss = TokenLoss(teacher, fused=False, vocab_size=len(collator.tokenizer))

    def score(rows: list[int]) -> list[float]:
        batch = {key: value.to(device) for key, value in
                 collator.from_ids([ids[row] for row in rows], [samples[row] for row in rows]).items()}
        chosen = best = None
        if reward.needs_teacher_logits:
            with torch.no_grad():
                chosen, best = token_loss.teacher_chosen_and_best(batch, float(reward.params.get("temperature", 1.0)))
        rewards = reward.per_token(RewardInputs(batch, [examples[row].source for row in rows],
                                                [decoded[row] for row in rows],
                                                [list(examples[row].references) for row in rows], chosen, best))
        return rewards.sum(-1).float().cpu().tolist()

    batches = [list(range(start, min(start + step, len(ids)))) for start in range(0, len(ids), step)]
    returns = pipe.parallel.map_batches(batches, score, collective=is_sharded(teacher))
    return sum(returns) / max(1, len(returns))


def _format(value) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def summary_lines(metrics: dict, cfg, run_dir) -> list[str]:
    """The console summary: the measures that carry information first, each with its meaning; greedy
    decoding on the synthetic task (always valid, BLEU 100 against all K references) last, as a sanity check;
    then where the files are."""
    rows: list[tuple[str, str, str]] = []
    if cfg.dataset.name == "synthetic":
        num_modes = cfg.dataset.params.get("num_modes")
        for key, label, meaning in SYNTHETIC_SUMMARY:
            if key in metrics:
                value = _format(metrics[key]) + (f" of {num_modes}" if key.endswith("modes_covered") and num_modes else "")
                rows.append((label, value, meaning))
    else:
        for key in [key for key in TEXT_METRICS_FIRST if key in metrics]:
            rows.append((key, _format(metrics[key]), f"{cfg.pipeline.evaluate.decoding.strategy} decoding"))
    rows += [(label, _format(metrics[key]), meaning) for key, label, meaning in RISK_SUMMARY if key in metrics]
    width = max((len(label) for label, _, _ in rows), default=10)
    lines = ["", "fdistill results"]
    lines += [f"  {label:<{width}}  {value:<10}  {meaning}" for label, value, meaning in rows]
    if cfg.dataset.name == "synthetic":
        greedy = [f"{key} {_format(metrics[key])}" for key in ("validity_rate", "bleu") if key in metrics]
        if greedy:
            lines.append(f"  {'greedy decoding':<{width}}  {', '.join(greedy)} (sanity check: greedy decoding follows "
                         "one mode, so any trained model is near-perfect here)")
    lines.append(f"  files: {run_dir} (metrics.json: every metric; predictions.jsonl; run.log)")
    return lines
