"""Per-GPU memory plan of a distillation step on 8 GPUs: what the README's "Multi-GPU and multi-node" table says,
computed from published parameter counts and shapes (an estimate to plan with, not a measurement).

    python scripts/memory_plan.py [--gpus 8] [--tokens 4096]

Per GPU, bf16 autocast, `tokens` target tokens per micro-batch: teacher weights in bf16 (sharded over the GPUs,
or replicated), the student's fp32 weights + gradients + two AdamW states (sharded or replicated), what FSDP
gathers while computing (the student's root unit with its tied embeddings in fp32, the teacher's untied head,
one teacher block), the student's activations (≈ 34·H + 8·I bytes per token and layer for a SwiGLU block
with flash/sdpa attention; with activation checkpointing, the block inputs alone) and the fused loss's
temporaries (about five [chunk, V] fp32 tensors at fdistill's GPU chunk size, plus the fp32 head gradient).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from fdistill.divergences.chunked import default_chunk_rows


@dataclass(frozen=True)
class Pair:
    name: str
    teacher_params: float          # all parameters
    teacher_embedding_rows: int    # the teacher's (padded) vocabulary rows
    teacher_hidden: int
    teacher_layers: int
    teacher_head_untied: bool
    student_params: float
    student_embedding_rows: int
    student_hidden: int
    student_layers: int
    student_intermediate: int
    vocabulary: int                # the tokenizer's entries: the distilled distribution


PAIRS = (
    Pair("Llama-3.1-8B → Llama-3.2-1B", 8.03e9, 128_256, 4096, 32, True, 1.236e9, 128_256, 2048, 16, 8192, 128_256),
    Pair("Qwen2.5-7B → Qwen2.5-0.5B", 7.62e9, 152_064, 3584, 28, True, 0.494e9, 151_936, 896, 24, 4864, 151_665),
)
GB = 1e9


def plan(pair: Pair, gpus: int, tokens: int) -> dict[str, float]:
    teacher = pair.teacher_params * 2
    student_states = pair.student_params * (4 + 4 + 8)
    embedding = pair.teacher_embedding_rows * pair.teacher_hidden
    teacher_block = (pair.teacher_params - embedding * (2 if pair.teacher_head_untied else 1)) / pair.teacher_layers * 2
    student_root = pair.student_embedding_rows * pair.student_hidden * 4
    teacher_head = embedding * 2
    activations = pair.student_layers * tokens * (34 * pair.student_hidden + 8 * pair.student_intermediate)
    checkpointed = pair.student_layers * tokens * pair.student_hidden * 2
    chunk = default_chunk_rows(pair.vocabulary, "cuda")
    temporaries = 5 * chunk * pair.vocabulary * 4
    head_gradient = pair.vocabulary * pair.student_hidden * 4
    gathered = student_root + teacher_head + teacher_block
    return {"teacher_sharded": teacher / gpus, "teacher_replicated": teacher,
            "student_sharded": student_states / gpus, "student_replicated": student_states,
            "student_root": student_root, "teacher_head": teacher_head, "teacher_block": teacher_block,
            "activations": activations, "activations_checkpointed": checkpointed, "chunk": chunk,
            "temporaries": temporaries, "head_gradient": head_gradient,
            "fsdp": teacher / gpus + student_states / gpus + gathered + activations + temporaries + head_gradient,
            "ddp": teacher + student_states + activations + temporaries + head_gradient,
            "materialised_logits": tokens * pair.vocabulary * 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=4096)
    args = parser.parse_args()
    plans = [(pair, plan(pair, args.gpus, args.tokens)) for pair in PAIRS]
    rows = [
        ("teacher weights, bf16 (sharded / replicated)", lambda p, q: f"{q['teacher_sharded']/GB:.1f} / {q['teacher_replicated']/GB:.1f} GB"),
        ("student fp32 weights + gradients + AdamW (sharded / replicated)",
         lambda p, q: f"{q['student_sharded']/GB:.1f} / {q['student_replicated']/GB:.1f} GB"),
        ("gathered while computing (FSDP): student root, teacher head, one teacher block",
         lambda p, q: f"{q['student_root']/GB:.2f} + {q['teacher_head']/GB:.2f} + {q['teacher_block']/GB:.2f} GB"),
        ("student activations (checkpointing off / on)",
         lambda p, q: f"≈ {q['activations']/GB:.1f} / {q['activations_checkpointed']/GB:.1f} GB"),
        ("fused loss: 5 chunk temporaries fp32 + fp32 head gradient",
         lambda p, q: f"{q['chunk']:,} × {p.vocabulary:,}: {q['temporaries']/GB:.1f} + {q['head_gradient']/GB:.2f} GB"),
        ("**total, FSDP + sharded teacher / DDP**", lambda p, q: f"**≈ {q['fsdp']/GB:.0f} GB / {q['ddp']/GB:.0f} GB**"),
        ("(materialised logits instead: one [tokens, V] fp32 tensor)", lambda p, q: f"{q['materialised_logits']/GB:.1f} GB each"),
    ]
    print(f"| per GPU ({args.gpus} GPUs, {args.tokens:,} tokens) | " + " | ".join(p.name for p, _ in plans) + " |")
    print("| --- |" + " --- |" * len(plans))
    for label, value in rows:
        print(f"| {label} | " + " | ".join(value(p, q) for p, q in plans) + " |")
    large = 70.6e9 * 2  # Llama-3.1-70B in bf16; 80 blocks, untied 128,256 x 8,192 embeddings and head
    block = (70.6e9 - 2 * 128_256 * 8192) / 80 * 2
    print(f"\nLlama-3.1-70B teacher: {large / GB:.0f} GB in bf16, {large / args.gpus / GB:.1f} GB per GPU sharded over "
          f"{args.gpus}, one block {block / GB:.2f} GB")


if __name__ == "__main__":
    main()
