"""Memory/time benchmark of the divergence kernels: straightforward PyTorch vs fdistill (vs Liger for jsd).

Every (size, divergence, implementation) case runs in a fresh subprocess, so one case's allocator state
cannot flatter another. In it: the inputs are created (student logits require grad, teacher logits do
not), a tiny warm-up runs the same code, then ``repeats`` forward+backward passes (``per_token(...).sum()``
and ``backward``) are timed (median reported). Peak extra memory = peak resident set size of the process
(``resource.getrusage(...).ru_maxrss``) minus its resident size right before the timed passes (inputs,
libraries and warm-up already resident): what the loss and its backward (student gradient included) add.

Usage: python scripts/bench_divergences.py --out results/bench/divergences.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fdistill.divergences import get_divergence

#: (table label, registry key, parameters)
CASES = [
    ("kl", "kl", {}),
    ("rkl", "rkl", {}),
    ("js", "js", {}),
    ("tvd", "tvd", {}),
    ("jsd(0.5)", "jsd", {"beta": 0.5}),
    ("akl", "akl", {}),
]
LIGER_HIDDEN = 768  # hidden size fed to Liger's fused linear loss (GPT-2 small, whose vocabulary is 50257)


def naive_per_token(key: str, params: dict, student_logits: torch.Tensor, teacher_logits: torch.Tensor):
    """Straightforward full-tensor PyTorch versions (what one writes without chunking)."""
    log_q = F.log_softmax(student_logits, dim=-1)
    log_p = F.log_softmax(teacher_logits, dim=-1)
    if key == "kl":
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    if key == "rkl":
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    if key == "tvd":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    if key in ("js", "jsd"):  # TRL GKDTrainer.generalized_jsd_loss style (GKD Eq. 1)
        beta = params.get("beta", 0.5)
        log_m = torch.logsumexp(torch.stack([log_q + math.log1p(-beta), log_p + math.log(beta)]), dim=0)
        teacher_kl = F.kl_div(log_m, log_p, reduction="none", log_target=True)
        student_kl = F.kl_div(log_m, log_q, reduction="none", log_target=True)
        return (beta * teacher_kl + (1 - beta) * student_kl).sum(-1)
    if key == "akl":  # the AKL reference code's recipe (Wu et al. 2024), weights from detached student probs
        p, q = log_p.exp(), log_q.exp()
        p_sorted, order = p.sort(dim=-1, descending=True)
        gap = (p_sorted - q.detach().gather(-1, order)).abs()
        head = (p_sorted.cumsum(-1) - p_sorted) < params.get("mu", 0.5)
        head_gap, tail_gap = (gap * head).sum(-1), (gap * ~head).sum(-1)
        forward_kl, reverse_kl = (p * (log_p - log_q)).sum(-1), (q * (log_q - log_p)).sum(-1)
        return (head_gap * forward_kl + tail_gap * reverse_kl) / (head_gap + tail_gap)
    raise KeyError(key)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_case(impl: str, label: str, tokens: int, vocab: int, repeats: int) -> dict:
    """Measure one case in this process (called in a fresh subprocess by :func:`main`)."""
    key, params = next((k, p) for name, k, p in CASES if name == label)
    torch.manual_seed(0)
    if impl == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        loss_module = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=params["beta"], compiled=False)
        student_hidden = torch.randn(tokens, LIGER_HIDDEN, requires_grad=True)
        teacher_hidden = torch.randn(tokens, LIGER_HIDDEN)
        student_weight = torch.randn(vocab, LIGER_HIDDEN) / LIGER_HIDDEN**0.5
        teacher_weight = torch.randn(vocab, LIGER_HIDDEN) / LIGER_HIDDEN**0.5
        labels = torch.zeros(tokens, dtype=torch.long)

        def step(rows: int) -> None:
            inputs = student_hidden if rows == tokens else student_hidden[:rows].detach().requires_grad_()
            loss = loss_module(inputs, student_weight, teacher_hidden[:rows], teacher_weight, labels[:rows])
            loss.backward()
            student_hidden.grad = None
    else:
        student_logits = torch.randn(tokens, vocab, requires_grad=True)
        teacher_logits = torch.randn(tokens, vocab)
        divergence = get_divergence(key, **params)

        def step(rows: int) -> None:
            # the full tensors in the timed passes: a slice's backward would add a full-size gradient copy
            s = student_logits if rows == tokens else student_logits[:rows].detach().requires_grad_()
            t = teacher_logits[:rows]
            values = naive_per_token(key, params, s, t) if impl == "naive" else divergence.per_token(s, t)
            values.sum().backward()
            student_logits.grad = None

    step(2)  # warm-up (kernels, lazy imports) on two rows
    baseline = _rss_bytes()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(tokens)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"time_s": statistics.median(times), "peak_extra_bytes": max(0, peak - baseline)}


def _subprocess_case(impl: str, label: str, tokens: int, vocab: int, repeats: int) -> dict:
    command = [sys.executable, __file__, "--worker", impl, "--case", label, "--tokens", str(tokens),
               "--vocab", str(vocab), "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {reason}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _liger_unavailable_reason() -> str | None:
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss  # noqa: F401
    except Exception as error:  # any import failure is reported as the row's reason
        return f"liger-kernel not importable ({type(error).__name__}: {error}); `pip install liger-kernel`"
    return None


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def build_table(sizes: list[tuple[int, int]], labels: list[str], repeats: int, with_liger: bool) -> list[str]:
    liger_reason = _liger_unavailable_reason() if with_liger else "skipped (--no-liger)"
    jobs = [(size, label, impl) for size in sizes for label in labels for impl in ("naive", "fdistill")]
    jobs += [(size, "jsd(0.5)", "liger") for size in sizes if "jsd(0.5)" in labels]
    results = {}
    for (tokens, vocab), label, impl in tqdm(jobs, desc="benchmark cases", file=sys.stderr):
        if impl == "liger" and liger_reason:
            results[(tokens, vocab, label, impl)] = {"error": liger_reason}
        else:
            results[(tokens, vocab, label, impl)] = _subprocess_case(impl, label, tokens, vocab, repeats)
    lines = [
        "| tokens × V | divergence | naive time (s) | fdistill time (s) | time ratio | naive peak extra (MiB) "
        "| fdistill peak extra (MiB) | memory ratio | inputs (MiB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    liger_lines = []
    for tokens, vocab in sizes:
        inputs = _mib(2 * tokens * vocab * 4)
        for label in labels:
            naive, ours = results[(tokens, vocab, label, "naive")], results[(tokens, vocab, label, "fdistill")]
            if "error" in naive or "error" in ours:
                lines.append(f"| {tokens} × {vocab} | {label} | {naive.get('error', '')} | {ours.get('error', '')} | | | | | |")
                continue
            lines.append(
                f"| {tokens} × {vocab} | {label} | {naive['time_s']:.3f} | {ours['time_s']:.3f} | "
                f"{ours['time_s'] / naive['time_s']:.2f} | {_mib(naive['peak_extra_bytes'])} | "
                f"{_mib(ours['peak_extra_bytes'])} | {ours['peak_extra_bytes'] / max(1, naive['peak_extra_bytes']):.2f} | {inputs} |"
            )
        liger = results.get((tokens, vocab, "jsd(0.5)", "liger"), {"error": "jsd(0.5) not among --cases"})
        if "error" in liger:
            liger_lines.append(f"| {tokens} × {vocab} | jsd(0.5) | n/a | n/a | {liger['error']} |")
        else:
            liger_lines.append(
                f"| {tokens} × {vocab} | jsd(0.5) | {liger['time_s']:.3f} | {_mib(liger['peak_extra_bytes'])} | "
                f"LigerFusedLinearJSDLoss(compiled=False), hidden {LIGER_HIDDEN}: includes both lm-head matmuls |"
            )
    lines += ["", "Liger-Kernel (c): fused linear + JSD, inputs are hidden states and lm-head weights, not logits.", "",
              "| tokens × V | divergence | time (s) | peak extra (MiB) | note |", "| --- | --- | ---: | ---: | --- |"]
    return lines + liger_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="markdown file to write (atomically); stdout when omitted")
    parser.add_argument("--sizes", default="4096x50257,1024x32000", help="comma-separated TOKENSxVOCAB")
    parser.add_argument("--cases", default=",".join(label for label, _, _ in CASES), help="comma-separated labels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-liger", action="store_true", help="skip the Liger-Kernel row")
    parser.add_argument("--worker", choices=("naive", "fdistill", "liger"), help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_case(args.worker, args.case, args.tokens, args.vocab, args.repeats)))
        return
    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]
    command = "python scripts/bench_divergences.py " + " ".join(sys.argv[1:])
    labels = args.cases.split(",")
    unknown = sorted(set(labels) - {label for label, _, _ in CASES})
    if unknown:
        parser.error(f"unknown --cases {unknown}; choose from {[label for label, _, _ in CASES]}")
    table = build_table(sizes, labels, args.repeats, with_liger=not args.no_liger)
    text = "\n".join(
        ["# Divergence kernels: memory and time (forward + backward, float32, CPU)", "",
         f"Command: `{command}`  ", f"Machine: {_machine()}  ",
         f"Repeats: median of {args.repeats} timed passes per case, each case in a fresh subprocess.", "",
         "Peak extra = peak RSS (getrusage ru_maxrss) minus RSS right before the timed passes, i.e. what the loss",
         "and its backward add on top of the inputs (the student-logit gradient, the size of one input, included).",
         "Ratios are fdistill / naive; targets: memory ratio ≤ 0.25, time ratio ≤ 1.1.", "", *table, ""]
    )
    if args.out is None:
        print(text)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, args.out)


if __name__ == "__main__":
    main()
