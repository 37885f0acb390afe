"""Work for `torchrun --nproc_per_node N tests/parallel_worker.py <case> <out dir>` (gloo, CPU): the parallel layer's
sharded paths run here exactly as a GPU node runs them, and each process writes what it found to <out dir>.

* ``fused <own|root>``: the fused lm-head loss of a tiny untied Llama sharded with FSDP2 (its head its own unit, or
  in the root) and the reference on the unsharded model, each process on its half of the batch: values and
  gradients of every parameter (the sharded ones gathered).
* ``sampling <sharded|plain>``: teacher samples of 7 inputs (divisible by neither 2 nor 3) through
  `sample_targets` with the parallel layer, from a model sharded across the processes or whole on each.
* ``shared_fs <shared|separate>``: the multi-node check of the cache dir.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from fdistill.config import DecodingConfig, PipelineConfig
from fdistill.divergences import get_divergence
from fdistill.models import SeqCollator, build_word_tokenizer
from fdistill.parallel import Parallel
from fdistill.training.objectives import TokenLoss

WORDS = [f"w{index}" for index in range(40)]


def tiny_llama(tokenizer, seed: int, tied: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=tied)
    return LlamaForCausalLM(config)


def parallel_layer(**distributed) -> Parallel:
    cfg = PipelineConfig()
    for key, value in distributed.items():
        setattr(cfg.distributed, key, value)
    return Parallel(Accelerator(cpu=True), cfg)


def batch_of(collator, rows: range) -> dict:
    sources = [" ".join(WORDS[(3 * row + k) % 40] for k in range(3 + row % 3)) for row in rows]
    targets = [" ".join(WORDS[(5 * row + k) % 40] for k in range(2 + row % 4)) for row in rows]
    return collator.from_text(sources, targets)


def fused(out: Path, head_unit: str) -> None:
    from torch.distributed.tensor import DTensor

    parallel = parallel_layer(strategy="fsdp", shard_teacher=True, head_unit=head_unit)
    tokenizer = build_word_tokenizer(WORDS, out / f"tokenizer-{parallel.rank}")
    collator = SeqCollator(tokenizer, False, 16, 8)
    student, teacher = tiny_llama(tokenizer, 0), tiny_llama(tokenizer, 1)
    reference = tiny_llama(tokenizer, 0)
    div = get_divergence("jsd", beta=0.3)
    rows = range(8)
    full = batch_of(collator, rows)
    expected, _, _ = TokenLoss(teacher, fused=True).divergence(div, "both", reference, full, "token", ce_weight=0.5)
    expected.backward()

    parallel.prepare_frozen(teacher)  # sharded teacher
    student, _ = parallel.prepare_training(student, lambda model: torch.optim.SGD(model.parameters(), lr=0.0))
    half = batch_of(collator, rows[parallel.rank * 4 : (parallel.rank + 1) * 4])
    loss, _, _ = TokenLoss(teacher, fused=True, parallel=parallel).divergence(div, "both", student, half, "token",
                                                                              ce_weight=0.5)
    loss.backward()
    found = {"loss": float(parallel.global_sum(loss.detach())) / parallel.world_size, "expected": float(expected.detach()),
             "head_is_unit": hasattr(student.lm_head, "fdistill_head"), "grads": {}}
    for (name, parameter), (_, reference_parameter) in zip(student.named_parameters(), reference.named_parameters(),
                                                           strict=True):
        grad = parameter.grad.full_tensor() if isinstance(parameter.grad, DTensor) else parameter.grad
        found["grads"][name] = float((grad - reference_parameter.grad).abs().max() /
                                     reference_parameter.grad.abs().max().clamp_min(1e-12))
    (out / f"fused-{parallel.rank}.json").write_text(json.dumps(found))


def sampling(out: Path, layout: str) -> None:
    parallel = parallel_layer(shard_teacher=layout == "sharded")
    tokenizer = build_word_tokenizer(WORDS, out / f"tokenizer-{parallel.rank}")
    collator = SeqCollator(tokenizer, False, 16, 8)
    model = parallel.prepare_frozen(tiny_llama(tokenizer, 3))
    sources = [collator.encode_sources([" ".join(WORDS[(7 * row + k) % 40] for k in range(2 + row % 5))])[0]
               for row in range(7)]
    decoding = DecodingConfig(strategy="sample", temperature=1.3, top_k=20, max_new_tokens=6)
    from fdistill.sampling import sample_targets

    samples = sample_targets(model, collator, sources, decoding, num_samples=2, seed=11, batch_size=2,
                             row_keys=[f"input-{row}" for row in range(7)], parallel=parallel)
    greedy = sample_targets(model, collator, sources, DecodingConfig(strategy="greedy", max_new_tokens=6),
                            batch_size=3, parallel=parallel)
    (out / f"sampling-{parallel.world_size}-{layout}-{parallel.rank}.json").write_text(
        json.dumps({"samples": samples, "greedy": greedy}))


def shared_fs(out: Path, layout: str) -> None:
    """The multi-node check on a directory every process sees (`shared`) or one each (`separate`, as two nodes
    with node-local disks would have)."""
    from fdistill.errors import ConfigError

    parallel = parallel_layer()
    directory = out / "cache" if layout == "shared" else out / f"node-{parallel.rank}"
    try:
        parallel.check_shared_filesystem(directory)
        outcome = "passed"
    except ConfigError as error:
        outcome = str(error)
    (out / f"shared-{layout}-{parallel.rank}.txt").write_text(outcome)


if __name__ == "__main__":
    case, out, option = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    {"fused": fused, "sampling": sampling, "shared_fs": shared_fs}[case](out, option)
