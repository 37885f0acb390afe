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


@torch.no_grad()
def sample_targets(model, collator, source_ids: Sequence[Sequence[int]], decoding: DecodingConfig,
                   num_samples: int = 1, seed: int | None = None, batch_size: int | None = None) -> list[list[int]]:
    """Generate `num_samples` targets per source (grouped per source) with the model in eval mode, in
    batches of `batch_size` sources (all at once when None). The model's train/eval mode is restored
    afterwards, so this can run inside a training step."""
    was_training = model.training
    model.eval()
    if seed is not None:
        torch.manual_seed(seed)
    step = batch_size or max(1, len(source_ids))
    targets: list[list[int]] = []
    try:
        for start in range(0, len(source_ids), step):
            prompts = collator.prompts(list(source_ids[start : start + step]))
            targets += generate_targets(model, prompts, tokenizer=collator.tokenizer, num_return_sequences=num_samples,
                                        **decoding_kwargs(decoding))
        return targets
    finally:
        model.train(was_training)


def sample_teacher_offline(teacher, collator, source_ids: Sequence[Sequence[int]], ids: Sequence[str],
                           decoding: DecodingConfig, num_samples: int, batch_size: int, seed: int,
                           out_dir: Path) -> datasets.Dataset:
    """Sample the teacher for every training input and save ``out_dir/samples`` (a datasets.Dataset).

    Rows: `example_index` (position in the training list), `id`, `sample_index`, `target_ids`.
    """
    rows: dict[str, list] = {"example_index": [], "id": [], "sample_index": [], "target_ids": []}
    for batch_no, start in enumerate(tqdm(range(0, len(source_ids), batch_size), desc="teacher sampling")):
        chunk = source_ids[start : start + batch_size]
        targets = sample_targets(teacher, collator, chunk, decoding, num_samples, seed=seed + batch_no)
        for offset, target in enumerate(targets):
            example = start + offset // num_samples
            rows["example_index"].append(example)
            rows["id"].append(ids[example])
            rows["sample_index"].append(offset % num_samples)
            rows["target_ids"].append(list(target))
    dataset = datasets.Dataset.from_dict(rows)
    dataset.save_to_disk(str(out_dir / SAMPLES_DIR))
    return dataset


def load_teacher_samples(artifact_dir: Path) -> datasets.Dataset:
    return datasets.load_from_disk(str(artifact_dir / SAMPLES_DIR))
