"""Sequence sampling from teacher and student (f-DISTILL Sec. 2.3; GKD Algorithm 1).

* Offline teacher samples: generated once per training input (n per input, batched, KV cache),
  stored as a `datasets.Dataset` on disk and reused every epoch and by every divergence of a sweep.
* Online samples: generated on the fly for one batch without gradient — the student's on-policy
  samples, and the teacher's when `distill.teacher_sampling=online` (f-DISTILL Table 4 baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm

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


#: how sample_targets orders and seeds its batches; part of the keys of cached samples
SAMPLER_VERSION = "length-sorted-v1"


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of `batch_size`, sorted by length (stable), so a batch pads little."""
    order = sorted(range(len(lengths)), key=lambda row: lengths[row])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def sample_targets(model, collator, source_ids: Sequence[Sequence[int]], decoding: DecodingConfig,
                   num_samples: int = 1, seed: int | None = None, batch_size: int | None = None,
                   desc: str | None = None) -> list[list[int]]:
    """Generate `num_samples` targets per source (grouped per source, in input order) with the model in eval
    mode. Sources are batched `batch_size` at a time (all at once when None) in order of prompt length, so
    left padding stays short (prefill and attention cost follow the longest prompt of a batch); batch i is
    seeded with `seed + i`. The model's train/eval mode is restored afterwards, so this can run inside a
    training step. `desc` shows a progress bar."""
    was_training = model.training
    model.eval()
    batches = length_sorted_batches([len(ids) for ids in source_ids], batch_size or max(1, len(source_ids)))
    grouped: list[list[list[int]]] = [[] for _ in source_ids]
    try:
        for batch_no, rows in enumerate(tqdm(batches, desc=desc, disable=desc is None)):
            if seed is not None:
                torch.manual_seed(seed + batch_no)
            prompts = collator.prompts([source_ids[row] for row in rows])
            targets = generate_targets(model, prompts, tokenizer=collator.tokenizer, num_return_sequences=num_samples,
                                       **decoding_kwargs(decoding))
            for offset, row in enumerate(rows):
                grouped[row] = targets[offset * num_samples : (offset + 1) * num_samples]
        return [target for group in grouped for target in group]
    finally:
        model.train(was_training)


def sample_teacher_offline(teacher, collator, source_ids: Sequence[Sequence[int]], ids: Sequence[str],
                           decoding: DecodingConfig, num_samples: int, batch_size: int, seed: int,
                           out_dir: Path) -> datasets.Dataset:
    """Sample the teacher for every training input and save ``out_dir/samples`` (a datasets.Dataset).

    Rows: `example_index` (position in the training list), `id`, `sample_index`, `target_ids`.
    """
    targets = sample_targets(teacher, collator, source_ids, decoding, num_samples, seed=seed, batch_size=batch_size,
                             desc="teacher sampling")
    dataset = datasets.Dataset.from_dict({
        "example_index": [row // num_samples for row in range(len(targets))],
        "id": [ids[row // num_samples] for row in range(len(targets))],
        "sample_index": [row % num_samples for row in range(len(targets))],
        "target_ids": [list(target) for target in targets]})
    dataset.save_to_disk(str(out_dir / SAMPLES_DIR))
    return dataset


def load_teacher_samples(artifact_dir: Path) -> datasets.Dataset:
    return datasets.load_from_disk(str(artifact_dir / SAMPLES_DIR))
