"""The papers' model-based analyses and the synthetic task's exact metrics.

All model analyses run batched on the models' device, in eval mode, without gradient; with `parallel`
(`fdistill.parallel.Parallel`) their batches are split across the processes and the per-sequence values
gathered, so every process returns what one process would. Token scores come from the fused head path in
chunks where the architecture's head is supported (the ``[B, T, V]`` logits of a batch never exist), else
from the logits. Targets are response token ids as returned by ``generate_targets`` (eos kept): the eos
token is scored like any other token.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch

TokenIds = Sequence[int]


@contextlib.contextmanager
def _eval_mode(*models: torch.nn.Module) -> Iterator[None]:
    """Put the models in eval mode without gradient (not inference mode: a sharded model's gathered parameters
    must stay usable by autograd later); restore their training flags after."""
    was_training = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for model, training in zip(models, was_training, strict=True):
            model.train(training)


def _batches(length: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, length, batch_size):
        yield slice(start, min(start + batch_size, length))


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _on_device(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    device = _device(model)
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}


def _logits(model: torch.nn.Module, batch: dict[str, Any], vocab_size: int) -> torch.Tensor:
    """Logits over the tokenizer's `vocab_size` entries (rows a checkpoint pads its vocabulary with are
    dropped, as in training)."""
    from fdistill.models import token_logits

    return token_logits(model, _on_device(model, batch))[..., :vocab_size].float()


def _with_head(model, parallel, vocab_size: int, fn, hidden: torch.Tensor):
    from fdistill.models import output_head

    if parallel is not None:
        return parallel.call_head(model, lambda head, states: fn(head, states), hidden, vocab_size)
    return fn(output_head(model, vocab_size), hidden)


def _label_log_probs(model: torch.nn.Module, batch: dict[str, Any], vocab_size: int, parallel=None,
                     chunk_rows: int | None = None) -> torch.Tensor:
    """log model(y_t | x, y_<t) of every label [B, T] (0 where the label is −100), chunked through the fused
    head where supported."""
    from fdistill.divergences.fused import fused_label_log_probs
    from fdistill.models import head_inputs_and_hidden_states, supports_fused_head

    batch = _on_device(model, batch)
    labels = batch["labels"]
    if supports_fused_head(model):
        hidden, _ = head_inputs_and_hidden_states(model, batch)
        flat = _with_head(model, parallel, vocab_size, lambda head, states: fused_label_log_probs(
            head, states.reshape(-1, states.shape[-1]), labels.reshape(-1), chunk_rows=chunk_rows), hidden)
        return flat.reshape(labels.shape).float()
    logits = _logits(model, batch, vocab_size)
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return log_probs * (labels != -100)


def _token_kl(teacher: torch.nn.Module, student: torch.nn.Module, batch: dict[str, Any], vocab_size: int,
              parallel=None, chunk_rows: int | None = None) -> torch.Tensor:
    """KL(p_teacher ‖ q_student) at every target position [B, T] (0 where the label is −100), chunked through
    both fused heads where supported."""
    from fdistill.divergences import get_divergence
    from fdistill.models import head_inputs_and_hidden_states, supports_fused_head

    kl = get_divergence("kl", chunk_tokens=chunk_rows)
    batch = _on_device(student, batch)
    valid = batch["labels"] != -100
    if supports_fused_head(student) and supports_fused_head(teacher):
        student_hidden, _ = head_inputs_and_hidden_states(student, batch)
        teacher_hidden, _ = head_inputs_and_hidden_states(teacher, _on_device(teacher, batch))

        def both(student_head, states):
            return _with_head(teacher, parallel, vocab_size, lambda teacher_head, _: kl.fused(
                states, student_head.weight, teacher_hidden.to(states.device), teacher_head.weight, "both",
                student_head.bias, teacher_head.bias, mask=valid, student_softcap=student_head.softcap,
                teacher_softcap=teacher_head.softcap), teacher_hidden)

        return _with_head(student, parallel, vocab_size, both, student_hidden).float()
    student_logits, teacher_logits = _logits(student, batch, vocab_size), _logits(teacher, batch, vocab_size)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                         f"{tuple(student_logits.shape)} differ: the pair must share a vocabulary")
    return kl.per_token(student_logits, teacher_logits.to(student_logits.device), mask=valid)


def _per_sequence(models: Sequence[torch.nn.Module], count: int, batch_size: int, score, parallel=None
                  ) -> list[Any]:
    """``score(rows) -> one value per row`` over consecutive batches of `count` rows (split across the processes
    with `parallel`; every process runs as many batches as the others where a model is sharded), in row order."""
    from fdistill.parallel import is_sharded

    batches = [list(range(chunk.start, chunk.stop)) for chunk in _batches(count, batch_size)]
    with _eval_mode(*models):
        if parallel is None:
            return [value for rows in batches for value in score(rows)]
        return parallel.map_batches(batches, score, collective=any(is_sharded(model) for model in models))


def draw_samples(model: torch.nn.Module, collator, source_ids: Sequence[TokenIds], *, num_samples: int,
                 max_new_tokens: int, temperature: float = 1.0, batch_size: int = 16, seed: int | None = None,
                 parallel=None) -> list[list[list[int]]]:
    """``num_samples`` ancestral samples per input → ``[input][sample] -> token ids`` (seeded per input)."""
    from fdistill.config import DecodingConfig
    from fdistill.sampling import sample_targets

    decoding = DecodingConfig(strategy="sample", temperature=temperature, max_new_tokens=max_new_tokens)
    flat = sample_targets(model, collator, source_ids, decoding, num_samples, batch_size=batch_size, seed=seed,
                          parallel=parallel)
    return [flat[i:i + num_samples] for i in range(0, len(flat), num_samples)]


def _one_sample_each(model: torch.nn.Module, collator, source_ids: Sequence[TokenIds], **sampling) -> list[list[int]]:
    """One temperature-`sampling["temperature"]` sample per input (for analyses given no pre-drawn samples)."""
    return [group[0] for group in draw_samples(model, collator, source_ids, num_samples=1, **sampling)]


def sequence_nll(model: torch.nn.Module, collator, source_ids: Sequence[TokenIds],
                 target_ids: Sequence[TokenIds], *, batch_size: int = 16, parallel=None,
                 chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(−log model(y | x) summed per sequence [N], scored tokens per sequence [N])."""
    vocab = len(collator.tokenizer)

    def score(rows: list[int]) -> list[tuple[float, int]]:
        batch = collator.from_ids([source_ids[row] for row in rows], [target_ids[row] for row in rows])
        log_probs = _label_log_probs(model, batch, vocab, parallel, chunk_rows)
        counts = (batch["labels"] != -100).sum(-1)
        return list(zip((-log_probs.sum(-1)).cpu().tolist(), counts.tolist(), strict=True))

    values = _per_sequence([model], len(source_ids), batch_size, score, parallel)
    return (torch.tensor([value[0] for value in values], dtype=torch.float32),
            torch.tensor([value[1] for value in values], dtype=torch.long))


def _risk(nll_sums: torch.Tensor, token_counts: torch.Tensor) -> dict[str, float]:
    """Per sequence: mean of summed NLL; per token: total NLL / total tokens (micro average)."""
    return {"per_sequence": float(nll_sums.mean()), "per_token": float(nll_sums.sum() / token_counts.sum())}


def likelihood_coverage_risk(teacher: torch.nn.Module, student: torch.nn.Module, collator,
                             source_ids: Sequence[TokenIds], *, max_new_tokens: int, temperature: float = 1.0,
                             batch_size: int = 16, student_samples: Sequence[TokenIds] | None = None,
                             teacher_samples: Sequence[TokenIds] | None = None, parallel=None,
                             chunk_rows: int | None = None) -> dict[str, float]:
    """f-DISTILL Table 3 risks, one sample per test input:

    R_llh = E_{y ~ q_student}[−log p_teacher(y | x)] (does the student produce what the teacher finds
    likely?) and R_cvg = E_{y ~ p_teacher}[−log q_student(y | x)] (does the student cover the teacher's
    samples?). Reported per sequence (mean of summed NLL) and per token (total NLL / total tokens).
    Pre-drawn samples (one per input) can be passed instead of sampling here.
    """
    sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "batch_size": batch_size,
                "parallel": parallel}
    student_samples = student_samples or _one_sample_each(student, collator, source_ids, **sampling)
    teacher_samples = teacher_samples or _one_sample_each(teacher, collator, source_ids, **sampling)
    options = {"batch_size": batch_size, "parallel": parallel, "chunk_rows": chunk_rows}
    likelihood = _risk(*sequence_nll(teacher, collator, source_ids, student_samples, **options))
    coverage = _risk(*sequence_nll(student, collator, source_ids, teacher_samples, **options))
    return {
        "likelihood_risk_per_token": likelihood["per_token"],
        "likelihood_risk_per_sequence": likelihood["per_sequence"],
        "coverage_risk_per_token": coverage["per_token"],
        "coverage_risk_per_sequence": coverage["per_sequence"],
    }


def distinct_bigram_percentage(samples_per_input: Sequence[Sequence[Sequence[str]]]) -> float:
    """Mean over inputs of 100 · |distinct bigrams| / |bigrams| among that input's samples (tokens).

    Inputs whose samples contain no bigram are left out; NaN when no input has one.
    """
    percentages = []
    for samples in samples_per_input:
        bigrams = [tuple(tokens[i:i + 2]) for tokens in samples for i in range(len(tokens) - 1)]
        if bigrams:
            percentages.append(100.0 * len(set(bigrams)) / len(bigrams))
    return sum(percentages) / len(percentages) if percentages else math.nan


def teacher_distinct_bigrams(teacher: torch.nn.Module, collator, source_ids: Sequence[TokenIds], *,
                             max_new_tokens: int, num_samples: int = 5, temperature: float = 1.0,
                             batch_size: int = 16, seed: int | None = None, parallel=None) -> float:
    """f-DISTILL Table 3 TeacherDist: distinct-bigram % among ``num_samples`` teacher samples per input,
    averaged over inputs; samples are decoded (special tokens skipped) and split on whitespace."""
    samples = draw_samples(teacher, collator, source_ids, num_samples=num_samples, max_new_tokens=max_new_tokens,
                           temperature=temperature, batch_size=batch_size, seed=seed, parallel=parallel)
    tokenizer = collator.tokenizer
    words = [[tokenizer.decode(ids, skip_special_tokens=True).split() for ids in group] for group in samples]
    return distinct_bigram_percentage(words)


def mean_token_kl(teacher: torch.nn.Module, student: torch.nn.Module, collator, source_ids: Sequence[TokenIds],
                  target_ids: Sequence[TokenIds], *, batch_size: int = 16, parallel=None,
                  chunk_rows: int | None = None) -> float:
    """Mean over all target positions of KL(p_teacher ‖ q_student) given the prefix ``target_ids[:t]``."""
    vocab = len(collator.tokenizer)

    def score(rows: list[int]) -> list[tuple[float, int]]:
        batch = collator.from_ids([source_ids[row] for row in rows], [target_ids[row] for row in rows])
        values = _token_kl(teacher, student, batch, vocab, parallel, chunk_rows)
        counts = (batch["labels"] != -100).sum(-1)
        return list(zip(values.sum(-1).cpu().tolist(), counts.tolist(), strict=True))

    values = _per_sequence([teacher, student], len(source_ids), batch_size, score, parallel)
    return sum(total for total, _ in values) / sum(count for _, count in values)


def exposure_bias_excess_error(teacher: torch.nn.Module, student: torch.nn.Module, collator,
                               source_ids: Sequence[TokenIds], *, max_new_tokens: int,
                               reference_target_ids: Sequence[TokenIds] | None = None, temperature: float = 1.0,
                               batch_size: int = 16,
                               student_samples: Sequence[TokenIds] | None = None, parallel=None,
                               chunk_rows: int | None = None) -> dict[str, float]:
    """Excess error due to exposure bias (Arora et al. 2022, "Why Exposure Bias Matters"):
    ExError% = 100 · (D_s − D_t) / D_t, with D = per-token KL(p_teacher ‖ q_student) averaged over
    positions, D_t on teacher-forced prefixes (``reference_target_ids``: data targets, or one teacher
    sample per input when None) and D_s on prefixes the student generated itself. NaN when D_t = 0
    (student equals teacher on the teacher-forced prefixes).
    """
    sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "batch_size": batch_size,
                "parallel": parallel}
    reference_target_ids = reference_target_ids or _one_sample_each(teacher, collator, source_ids, **sampling)
    student_samples = student_samples or _one_sample_each(student, collator, source_ids, **sampling)
    options = {"batch_size": batch_size, "parallel": parallel, "chunk_rows": chunk_rows}
    teacher_forced = mean_token_kl(teacher, student, collator, source_ids, reference_target_ids, **options)
    free_running = mean_token_kl(teacher, student, collator, source_ids, student_samples, **options)
    return {
        "exposure_kl_teacher_prefixes": teacher_forced,
        "exposure_kl_student_prefixes": free_running,
        "ex_error_percent": 100.0 * (free_running - teacher_forced) / teacher_forced if teacher_forced > 0
        else math.nan,
    }


def _entropy(probabilities: Sequence[float]) -> float:
    return -sum(p * math.log(p) for p in probabilities if p > 0)


def synthetic_exact_metrics(task, sources: Sequence[Any], outputs: Sequence[Any]) -> dict[str, float]:
    """Exact metrics on the synthetic task, from its oracle (duck-typed: ``is_valid``, ``mode_of``,
    ``mode_probs``):

    - ``validity_rate``: fraction of valid outputs;
    - ``modes_covered``: number of distinct modes hit by valid outputs;
    - ``mode_entropy``: entropy (nats) of the empirical mode distribution among outputs with a mode
      (``mode_entropy_true``: entropy of ``task.mode_probs``);
    - ``mode_tv``: total variation between the empirical distribution over {modes, no mode} and the
      true one (invalid or mode-less outputs count as mass on "no mode", whose true mass is 0).
    """
    if len(sources) != len(outputs) or not outputs:
        raise ValueError(f"need one output per source and at least one: got {len(sources)} sources, "
                         f"{len(outputs)} outputs")
    true_probs = [float(p) for p in task.mode_probs]
    valid = [bool(task.is_valid(source, output)) for source, output in zip(sources, outputs, strict=True)]
    modes = [task.mode_of(source, output) if is_valid else None
             for source, output, is_valid in zip(sources, outputs, valid, strict=True)]
    mode_counts = Counter(mode for mode in modes if mode is not None)
    unknown = [mode for mode in mode_counts if not 0 <= mode < len(true_probs)]
    if unknown:
        raise ValueError(f"task.mode_of returned modes {unknown} outside 0..{len(true_probs) - 1} (mode_probs)")
    total = len(outputs)
    empirical = [mode_counts[mode] / total for mode in range(len(true_probs))]
    no_mode_mass = 1.0 - sum(empirical)
    with_mode = sum(mode_counts.values())
    return {
        "validity_rate": sum(valid) / total,
        "modes_covered": float(len(mode_counts)),
        "mode_entropy": _entropy([count / with_mode for count in mode_counts.values()]) if with_mode else 0.0,
        "mode_entropy_true": _entropy(true_probs),
        "mode_tv": 0.5 * (sum(abs(e - p) for e, p in zip(empirical, true_probs, strict=True)) + no_mode_mass),
    }
