"""Several teachers as one (the KD tutorial's multi-teacher part, `../shared/papers/kd_tutorial_wen2026.md`).

:class:`Ensemble` is a teacher like any other for the rest of fdistill:

* **its distribution** (what token-level divergences, pre-distillation's KL and the analyses read) is the weighted
  average of the teachers', p(v | ·) = Σ_k w_k p_k(v | ·) (AvgKD), returned as log-probabilities by its forward;
* **its outputs** (its offline samples, and its own decoding when it is evaluated) follow ``method``:
    - ``average``: ancestral sampling, greedy or beam search over that mixture;
    - ``vote``: word-level 0/1 voting, greedy: each teacher's argmax gets its weight as a vote, the most voted
      token wins (ties: the larger mixture probability);
    - ``union``: each teacher's own samples, all of them (UnionKD: the union of the teachers' outputs);
    - ``mbr``: each teacher's own output (greedy or beam, as decoding says; plus ``candidates`` - 1
      temperature-1 samples of each), then per input the candidate with the highest expected metric against the
      others (minimum Bayes risk, sequence-level voting);
    - ``ebbs``: the bi-level beam search of EBBS: per step each teacher extends the shared beam by its top-Z
      continuations scored p(y) · p_k(v | y) (its lower beam); the upper level merges the lower beams, scoring
      each candidate by the weighted sum of the probabilities the lower beams give it, and keeps the top Z. With
      Σ w_k = 1 the scores stay probabilities of sequences (the summed-probability recursion
      p(y_{≤t}) = p(y_{<t}) · Σ_k w_k p_k(y_t | y_{<t}) wherever every teacher keeps the candidate).
  All decoders are batched across inputs and beams with each teacher's KV cache (reordered between steps).

Only ``average`` defines a distribution to distil token by token; the others define outputs for sequence-level
KD (MLE on them), which the preflight enforces.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

METHODS = ("average", "vote", "union", "mbr", "ebbs")


@dataclass(frozen=True)
class EnsembleSpec:
    method: str = "average"
    weights: tuple[float, ...] = ()
    beam_size: int = 4
    candidates: int = 1
    metric: str = "bleu"


def normalised_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """The teachers' weights, summing to 1 (uniform when not given)."""
    if not weights:
        return [1.0 / count] * count
    if len(weights) != count or any(weight < 0 for weight in weights) or sum(weights) <= 0:
        raise ValueError(f"ensemble weights {list(weights)} must be {count} non-negative numbers, not all zero")
    total = float(sum(weights))
    return [float(weight) / total for weight in weights]


class Ensemble(nn.Module):
    """The teachers as one teacher (see the module docstring)."""

    def __init__(self, teachers: Sequence[nn.Module], spec: EnsembleSpec, vocab_size: int | None = None) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("an ensemble needs at least one teacher")
        self.teachers = nn.ModuleList(teachers)
        self.spec = spec
        self.weights = normalised_weights(spec.weights, len(teachers))
        self.vocab_size = vocab_size or min(t.get_output_embeddings().weight.shape[0] for t in teachers)
        self.config = teachers[0].config

    def get_output_embeddings(self):
        """The first teacher's head (its rows: the vocabulary the ensemble's log-probabilities cover)."""
        return self.teachers[0].get_output_embeddings()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, output_hidden_states: bool = False, **inputs):
        """The mixture's log-probabilities as ``logits`` (the first `vocab_size` entries of every teacher); the hidden
        states, where asked for, are the first teacher's (pre-distillation pairs the student's layers with them)."""
        outputs = [teacher(**inputs, output_hidden_states=output_hidden_states and index == 0)
                   for index, teacher in enumerate(self.teachers)]
        log_probs = torch.stack([torch.log_softmax(output.logits[..., : self.vocab_size].float(), dim=-1)
                                 + math.log(weight) for output, weight in zip(outputs, self.weights, strict=True)
                                 if weight > 0])
        first = outputs[0]
        return SimpleNamespace(logits=torch.logsumexp(log_probs, dim=0),
                               hidden_states=getattr(first, "hidden_states", None),
                               encoder_hidden_states=getattr(first, "encoder_hidden_states", None),
                               decoder_hidden_states=getattr(first, "decoder_hidden_states", None))

    # ------------------------------------------------------------------ outputs
    @torch.no_grad()
    def targets(self, collator, source_ids: Sequence[Sequence[int]], decoding, num_samples: int = 1,
                seed: int | None = None, batch_size: int | None = None, desc: str | None = None,
                row_keys: Sequence[object] | None = None, parallel=None) -> list[list[int]]:
        """The ensemble's outputs for `source_ids` (`fdistill.sampling.sample_targets`'s contract): sampling draws from
        the mixture (any method: the analyses' temperature-1 samples); greedy and beam decoding follow ``method``;
        ``union`` returns every teacher's `num_samples` outputs per input (K × `num_samples`, grouped per input)."""
        from fdistill.sampling import length_sorted_batches, row_seed

        method = self.spec.method
        if method == "union":
            return _union(self, collator, source_ids, decoding, num_samples, seed, batch_size, row_keys, parallel)
        if method == "mbr" and decoding.strategy != "sample":
            return _mbr(self, collator, source_ids, decoding, seed, batch_size, row_keys, parallel)
        keys = list(range(len(source_ids))) if row_keys is None else list(row_keys)
        base_seed = seed if seed is not None else int(torch.randint(0, 2**62, ()).item())
        eos = collator.tokenizer.eos_token_id

        def run(rows: list[int]) -> list[list[list[int]]]:
            prompts = collator.prompts([source_ids[row] for row in rows])
            if decoding.strategy == "sample":
                seeds = [[row_seed(base_seed, keys[row], index) for index in range(num_samples)] for row in rows]
                found = [self._sample(prompts, [group[index] for group in seeds], decoding, eos)
                         for index in range(num_samples)]
                return [[found[index][offset] for index in range(num_samples)] for offset in range(len(rows))]
            if method == "vote":
                return [[target] for target in self._vote(prompts, decoding.max_new_tokens, eos)]
            width = self.spec.beam_size if method == "ebbs" else (decoding.num_beams if decoding.strategy == "beam" else 1)
            outputs = bilevel_beam_search(self, prompts, width, decoding.max_new_tokens, eos,
                                          lower_beams=method == "ebbs")
            return [[target] * num_samples for target in outputs]

        batches = length_sorted_batches([len(ids) for ids in source_ids], batch_size or max(1, len(source_ids)))
        if parallel is not None:
            grouped = parallel.map_batches(batches, run, progress=desc)
        else:
            grouped = _in_order(batches, run, len(source_ids))
        return [target for group in grouped for target in group]

    def _steppers(self, prompts: dict, expand: int) -> list[_Stepper]:
        return [_Stepper(teacher, prompts, self.vocab_size, expand) for teacher in self.teachers]

    def _sample(self, prompts: dict, seeds: Sequence[int], decoding, eos: int) -> list[list[int]]:
        """One ancestral sample per row from the mixture, each row drawing from its own seed (Gumbel-max)."""
        from fdistill.sampling import RowSeededSampling

        steppers = self._steppers(prompts, 1)
        processor = RowSeededSampling(seeds, decoding.temperature, decoding.top_k, decoding.top_p)
        rows = prompts["input_ids"].shape[0]
        tokens = torch.zeros(rows, 0, dtype=torch.long, device=self.device)
        done = torch.zeros(rows, dtype=torch.bool, device=self.device)
        processor.start = 0
        log_probs = self._mixture([stepper.first() for stepper in steppers])
        for _ in range(decoding.max_new_tokens):
            scores = processor(tokens, log_probs.clone())
            token = scores.argmax(-1).masked_fill(done, eos)
            tokens = torch.cat([tokens, token[:, None]], dim=1)
            done |= token == eos
            if bool(done.all()):
                break
            log_probs = self._mixture([stepper.step(token) for stepper in steppers])
        return [_cut(row, eos) for row in tokens.tolist()]

    def _vote(self, prompts: dict, max_new_tokens: int, eos: int) -> list[list[int]]:
        """Greedy decoding by word-level voting: each teacher's argmax gets its weight as a vote."""
        steppers = self._steppers(prompts, 1)
        rows = prompts["input_ids"].shape[0]
        tokens = torch.zeros(rows, 0, dtype=torch.long, device=self.device)
        done = torch.zeros(rows, dtype=torch.bool, device=self.device)
        per_teacher = [stepper.first() for stepper in steppers]
        for _ in range(max_new_tokens):
            votes = torch.zeros_like(per_teacher[0])
            for log_probs, weight in zip(per_teacher, self.weights, strict=True):
                votes.scatter_add_(-1, log_probs.argmax(-1, keepdim=True), torch.full((rows, 1), weight,
                                                                                      device=votes.device))
            mixture = self._mixture(per_teacher).exp()
            token = (votes + 1e-6 * mixture).argmax(-1).masked_fill(done, eos)  # ties: the larger mixture mass
            tokens = torch.cat([tokens, token[:, None]], dim=1)
            done |= token == eos
            if bool(done.all()):
                break
            per_teacher = [stepper.step(token) for stepper in steppers]
        return [_cut(row, eos) for row in tokens.tolist()]

    def _mixture(self, per_teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.logsumexp(torch.stack([log_probs + math.log(weight) for log_probs, weight in
                                            zip(per_teacher, self.weights, strict=True) if weight > 0]), dim=0)


def _in_order(batches: list[list[int]], run, count: int) -> list:
    found: dict[int, object] = {}
    for rows in batches:
        found.update(zip(rows, run(rows), strict=True))
    return [found[row] for row in range(count)]


def _cut(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


class _Stepper:
    """Next-token log-probabilities of one teacher for `expand` rows per prompt, with its KV cache (reordered with
    the beams). Decoder-only: the left-padded prompt, then one token per step; encoder-decoder: the encoder once,
    then the decoder from its start token."""

    def __init__(self, model: nn.Module, prompts: dict, vocab: int, expand: int) -> None:
        self.model, self.vocab = model, vocab
        device = next(model.parameters()).device
        self.mask = prompts["attention_mask"].to(device).repeat_interleave(expand, dim=0)
        ids = prompts["input_ids"].to(device).repeat_interleave(expand, dim=0)
        self.encoder_decoder = model.config.is_encoder_decoder
        self.cache = None
        # transformers renamed past_key_values to cache (5.x; the old name warns, then goes)
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        if self.encoder_decoder:
            self.encoder = model.get_encoder()(input_ids=ids, attention_mask=self.mask)
            self.next_input = torch.full((ids.shape[0], 1), model.config.decoder_start_token_id, device=device)
        else:
            self.next_input = ids
            self.positions = (self.mask.cumsum(-1) - 1).clamp_min(0)

    def _run(self) -> torch.Tensor:
        cache = {self.cache_arg: self.cache}
        if self.encoder_decoder:
            out = self.model(encoder_outputs=self.encoder, attention_mask=self.mask,
                             decoder_input_ids=self.next_input, use_cache=True, **cache)
        else:
            out = self.model(input_ids=self.next_input, attention_mask=self.mask, position_ids=self.positions,
                             use_cache=True, **cache)
        self.cache = getattr(out, self.cache_arg)
        return torch.log_softmax(out.logits[:, -1, : self.vocab].float(), dim=-1)

    def first(self) -> torch.Tensor:
        return self._run()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.next_input = tokens[:, None]
        if not self.encoder_decoder:
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
            self.positions = self.positions[:, -1:] + 1
        return self._run()

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder_cache(index)
        self.mask = self.mask.index_select(0, index)
        if self.encoder_decoder:
            self.encoder.last_hidden_state = self.encoder.last_hidden_state.index_select(0, index)
        else:
            self.positions = self.positions.index_select(0, index)


@torch.no_grad()
def bilevel_beam_search(ensemble: Ensemble, prompts: dict, beam_size: int, max_new_tokens: int, eos: int,
                        lower_beams: bool = True) -> list[list[int]]:
    """The best sequence per prompt of :func:`bilevel_beams`."""
    return [beams[0][0] for beams in bilevel_beams(ensemble, prompts, beam_size, max_new_tokens, eos, lower_beams)]


@torch.no_grad()
def bilevel_beams(ensemble: Ensemble, prompts: dict, beam_size: int, max_new_tokens: int, eos: int,
                  lower_beams: bool = True) -> list[list[tuple[list[int], float]]]:
    """The final beam per prompt, best first, as (tokens up to and including eos, log-score), of the bi-level beam
    search (EBBS) with `lower_beams`, or of beam search over the mixture without them (every teacher scores every
    candidate): see the module docstring. A finished hypothesis (ended by eos) is carried unchanged: each teacher
    proposes it with its own score, so it keeps p(y). Hypotheses of score 0 (fewer than Z exist) are left out."""
    steppers = ensemble._steppers(prompts, beam_size)
    prompts_count, width = prompts["input_ids"].shape[0], beam_size
    device = ensemble.device
    rows = prompts_count * width
    scores = torch.full((prompts_count, width), float("-inf"), device=device)
    scores[:, 0] = 0.0  # log p of the empty prefix; the other beams start empty (dead)
    tokens = torch.zeros(rows, 0, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    per_teacher = [stepper.first() for stepper in steppers]
    log_weights = [math.log(weight) if weight > 0 else float("-inf") for weight in ensemble.weights]
    for _ in range(max_new_tokens):
        vocab = per_teacher[0].shape[-1]
        carried = torch.full((vocab,), float("-inf"), device=device)
        carried[eos] = 0.0
        per_teacher = [torch.where(finished[:, None], carried, log_probs) for log_probs in per_teacher]
        candidates = [(scores.reshape(rows, 1) + log_probs).reshape(prompts_count, width * vocab)
                      for log_probs in per_teacher]  # log p(y) + log p_k(v | y)
        if lower_beams:  # each teacher keeps its own top-Z; the upper level sums what they kept
            top = scores.amax(dim=-1, keepdim=True).clamp_min(-1e30)
            merged = torch.zeros(prompts_count, width * vocab, dtype=torch.float64, device=device)
            for candidate, log_weight in zip(candidates, log_weights, strict=True):
                values, index = candidate.topk(width, dim=-1)
                merged.scatter_add_(-1, index, torch.exp((values - top + log_weight).double()))
            merged = torch.where(merged > 0, merged.log() + top.double(), torch.full_like(merged, float("-inf")))
        else:  # beam search over the mixture
            merged = torch.logsumexp(torch.stack([candidate + log_weight for candidate, log_weight in
                                                  zip(candidates, log_weights, strict=True)]), dim=0).double()
        values, index = merged.topk(width, dim=-1)
        source = (index // vocab) + torch.arange(prompts_count, device=device)[:, None] * width
        token = (index % vocab).reshape(rows)
        source = source.reshape(rows)
        scores = values.float()
        tokens = torch.cat([tokens.index_select(0, source), token[:, None]], dim=1)
        finished = finished.index_select(0, source) | (token == eos)
        if bool(finished.reshape(prompts_count, width)[torch.isfinite(scores)].all()):
            break
        for stepper in steppers:
            stepper.reorder(source)
        per_teacher = [stepper.step(token) for stepper in steppers]
    order = scores.argsort(dim=-1, descending=True)
    found = []
    for prompt in range(prompts_count):
        found.append([(_cut(tokens[prompt * width + beam].tolist(), eos), float(scores[prompt, beam]))
                      for beam in order[prompt].tolist() if math.isfinite(float(scores[prompt, beam]))])
    return found


def _teacher_targets(ensemble: Ensemble, collator, source_ids, decoding, num_samples, seed, batch_size, row_keys,
                     parallel) -> list[list[list[int]]]:
    """Each teacher's own `num_samples` outputs per input: [teacher][input] -> targets."""
    from fdistill.sampling import sample_targets

    found = []
    for index, teacher in enumerate(ensemble.teachers):
        flat = sample_targets(teacher, collator, source_ids, decoding, num_samples,
                              seed=None if seed is None else seed + 7919 * index, batch_size=batch_size,
                              row_keys=row_keys, parallel=parallel)
        found.append([flat[row * num_samples : (row + 1) * num_samples] for row in range(len(source_ids))])
    return found


def _union(ensemble, collator, source_ids, decoding, num_samples, seed, batch_size, row_keys, parallel):
    per_teacher = _teacher_targets(ensemble, collator, source_ids, decoding, num_samples, seed, batch_size, row_keys,
                                   parallel)
    return [target for row in range(len(source_ids)) for teacher in per_teacher for target in teacher[row]]


def mbr_utilities(candidates: Sequence[str], metric: str = "bleu") -> list[float]:
    """Each candidate's expected utility: its mean `metric` score against each of the other candidates taken as the
    reference (minimum Bayes risk with the candidates as uniform evidence). ``bleu`` is sentence-level BLEU with
    the effective n-gram order (sacrebleu.sentence_bleu, as MBR decoding uses it: corpus BLEU of one short
    sentence is 0 whenever it has no 4-gram); every other metric is the registry's."""
    import sacrebleu

    from fdistill.evaluation import evaluate_predictions

    def utility(hypothesis: str, reference: str) -> float:  # an empty candidate supports nothing
        if not reference.strip():
            return 0.0
        if metric == "bleu":
            return float(sacrebleu.sentence_bleu(hypothesis, [reference]).score)
        return float(evaluate_predictions([hypothesis], [[reference]], [metric])[0][metric])

    if len(candidates) == 1:
        return [0.0]
    return [sum(utility(hypothesis, reference) for other, reference in enumerate(candidates) if other != index)
            / (len(candidates) - 1) for index, hypothesis in enumerate(candidates)]


def mbr_select(candidates: Sequence[str], metric: str = "bleu") -> int:
    """The index of the candidate with the highest expected utility (the first on ties)."""
    utilities = mbr_utilities(candidates, metric)
    return max(range(len(candidates)), key=lambda index: (utilities[index], -index))


def _mbr(ensemble, collator, source_ids, decoding, seed, batch_size, row_keys, parallel) -> list[list[int]]:
    """Each teacher's own output under `decoding` (greedy or beam), plus `candidates` - 1 temperature-1 samples of
    each teacher; per input the candidate of highest expected utility."""
    from fdistill.config import DecodingConfig

    per_teacher = _teacher_targets(ensemble, collator, source_ids, decoding, 1, seed, batch_size, row_keys, parallel)
    extra = ensemble.spec.candidates - 1
    if extra > 0:
        sampling = DecodingConfig(strategy="sample", temperature=1.0, max_new_tokens=decoding.max_new_tokens)
        samples = _teacher_targets(ensemble, collator, source_ids, sampling, extra, seed, batch_size, row_keys,
                                   parallel)
        per_teacher = [[own + drawn for own, drawn in zip(outputs, more, strict=True)]
                       for outputs, more in zip(per_teacher, samples, strict=True)]
    tokenizer = collator.tokenizer
    chosen = []
    for row in range(len(source_ids)):
        candidates = [target for teacher in per_teacher for target in teacher[row]]
        texts = [text.strip() for text in tokenizer.batch_decode(candidates, skip_special_tokens=True)]
        chosen.append(candidates[mbr_select(texts, ensemble.spec.metric)])
    return chosen
