"""Sequence sampling from teacher and student (f-DISTILL Sec. 2.3; GKD Algorithm 1).

* Offline teacher samples: generated once per training input (n per input, batched, KV cache, split across
  the processes), stored as a `datasets.Dataset` on disk and reused every epoch and by every divergence of a
  sweep. A sample is seeded by its input and index alone (:class:`RowSeededSampling`): the cached samples do
  not depend on the batch size's rounding or on the number of processes, and their key does not hold it.
* Online samples: generated on the fly for one batch without gradient — the student's on-policy
  samples, and the teacher's when `distill.teacher_sampling=online` (f-DISTILL Table 4 baseline).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from fdistill.config import DecodingConfig
from fdistill.models import generate_targets

SAMPLES_DIR = "samples"


def decoding_kwargs(decoding: DecodingConfig) -> dict:
    """`generate_targets` keyword arguments for a decoding config."""
    kwargs: dict = {"max_new_tokens": decoding.max_new_tokens}
    if decoding.strategy == "sample":
        kwargs.update(do_sample=True, temperature=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p,
                      num_beams=1)
    elif decoding.strategy == "beam":
        kwargs.update(do_sample=False, num_beams=decoding.num_beams)
    else:
        kwargs.update(do_sample=False, num_beams=1)
    return kwargs


#: how sample_targets batches and seeds; part of the keys of cached samples
SAMPLER_VERSION = "row-seeded-gumbel-v2"


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of `batch_size`, sorted by length (stable), so a batch pads little."""
    order = sorted(range(len(lengths)), key=lambda row: lengths[row])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def row_seed(seed: int, key: object, sample_index: int) -> int:
    """The seed of one sample: a stable function of (seed, the input's key, the sample's index)."""
    blob = hashlib.sha256(f"{seed}:{key}:{sample_index}".encode()).digest()
    return int.from_bytes(blob[:8], "little") >> 1


class RowSeededSampling(LogitsProcessor):
    """Ancestral sampling in which each row draws from its own seed (Gumbel-max: the argmax of the warped,
    temperature-scaled logits plus i.i.d. Gumbel noise is exactly a sample of their softmax). The noise of row r
    at decoding step t comes from a generator seeded with (seed_r, t), so a sample depends on its input, its
    seed and its index only: not on the batch it is in, the batch size or the number of processes. Top-k and
    top-p filter as transformers' own warpers do (they are used here); greedy decoding takes the argmax."""

    def __init__(self, row_seeds: Sequence[int], temperature: float, top_k: int, top_p: float) -> None:
        self.row_seeds = list(row_seeds)
        self.warpers: list[LogitsProcessor] = []
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[-1]  # the step counts generated tokens, not the (padded) prompt
        step = input_ids.shape[-1] - self.start
        scores = scores.float()
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        uniform = torch.empty_like(scores)
        for row, seed in enumerate(self.row_seeds):
            generator = torch.Generator(device=scores.device).manual_seed((seed + step * 0x9E3779B97F4A7C15) % 2**63)
            uniform[row].uniform_(generator=generator)
        tiny = torch.finfo(uniform.dtype).tiny
        return scores - torch.log(-torch.log(uniform.clamp_(tiny, 1.0 - 1e-7)))


@torch.no_grad()
def sample_targets(model, collator, source_ids: Sequence[Sequence[int]], decoding: DecodingConfig,
                   num_samples: int = 1, seed: int | None = None, batch_size: int | None = None,
                   desc: str | None = None, row_keys: Sequence[object] | None = None, parallel=None
                   ) -> list[list[int]]:
    """Generate `num_samples` targets per source (grouped per source, in input order) with the model in eval
    mode. Sources are batched `batch_size` at a time (all at once when None) in order of prompt length, so
    left padding stays short. Sampling seeds every sample by (`seed`, the source's key in `row_keys`, default
    its position, the sample's index) (:class:`RowSeededSampling`). With `parallel` the batches are dealt out
    across the processes and every process gets all the targets: the same as one process would produce. The
    model's train/eval mode is restored afterwards, so this can run inside a training step. `desc` shows a
    progress bar."""
    from fdistill.models.ensemble import Ensemble
    from fdistill.parallel import is_sharded, unwrap

    if isinstance(model, Ensemble):  # several teachers: their outputs follow the ensemble's method
        return model.targets(collator, source_ids, decoding, num_samples, seed, batch_size, desc, row_keys, parallel)
    was_training = model.training
    model.eval()
    generator_model = model if is_sharded(model) else unwrap(model)
    keys = list(range(len(source_ids))) if row_keys is None else list(row_keys)
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    sampling = decoding.strategy == "sample"
    options = decoding_kwargs(decoding)
    if sampling:  # one row per sample, each with its own seed; greedy over the seeded scores
        options = {"max_new_tokens": decoding.max_new_tokens, "do_sample": False, "num_beams": 1}

    def run(rows: list[int]) -> list[list[list[int]]]:
        if sampling:
            prompts = collator.prompts([source_ids[row] for row in rows for _ in range(num_samples)])
            seeds = [row_seed(seed, keys[row], index) for row in rows for index in range(num_samples)]
            processor = RowSeededSampling(seeds, decoding.temperature, decoding.top_k, decoding.top_p)
            targets = generate_targets(generator_model, prompts, tokenizer=collator.tokenizer,
                                       logits_processor=LogitsProcessorList([processor]), **options)
        else:
            prompts = collator.prompts([source_ids[row] for row in rows])
            targets = generate_targets(generator_model, prompts, tokenizer=collator.tokenizer,
                                       num_return_sequences=num_samples, **options)
        return [targets[offset * num_samples : (offset + 1) * num_samples] for offset in range(len(rows))]

    batches = length_sorted_batches([len(ids) for ids in source_ids], batch_size or max(1, len(source_ids)))
    try:
        if parallel is None:
            grouped: dict[int, list[list[int]]] = {}
            for rows in tqdm(batches, desc=desc, disable=desc is None, dynamic_ncols=True):
                grouped.update(zip(rows, run(rows), strict=True))
            ordered = [grouped[row] for row in range(len(source_ids))]
        else:
            ordered = parallel.map_batches(batches, run, collective=is_sharded(model), progress=desc)
        return [target for group in ordered for target in group]
    finally:
        model.train(was_training)


def sample_teacher_offline(teacher, collator, source_ids: Sequence[Sequence[int]], ids: Sequence[str],
                           decoding: DecodingConfig, num_samples: int, batch_size: int, seed: int,
                           out_dir: Path | None, parallel=None) -> datasets.Dataset:
    """Sample the teacher for every training input (split across the processes with `parallel`) and save
    ``out_dir/samples`` (a datasets.Dataset; no file when `out_dir` is None, e.g. on a process that does not
    publish). Each sample is seeded by (seed, input id, sample index): the same samples for 1 or 8 processes.

    Rows: `example_index` (position in the training list), `id`, `sample_index`, `target_ids`.
    """
    targets = sample_targets(teacher, collator, source_ids, decoding, num_samples, seed=seed, batch_size=batch_size,
                             desc="teacher sampling", row_keys=ids, parallel=parallel)
    per_input = len(targets) // max(1, len(source_ids))  # num_samples, or K x num_samples for a union of K teachers
    dataset = datasets.Dataset.from_dict({
        "example_index": [row // per_input for row in range(len(targets))],
        "id": [ids[row // per_input] for row in range(len(targets))],
        "sample_index": [row % per_input for row in range(len(targets))],
        "target_ids": [list(target) for target in targets]})
    if out_dir is not None:
        dataset.save_to_disk(str(out_dir / SAMPLES_DIR))
    return dataset


def load_teacher_samples(artifact_dir: Path) -> datasets.Dataset:
    return datasets.load_from_disk(str(artifact_dir / SAMPLES_DIR))
