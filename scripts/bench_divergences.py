"""Memory/time benchmark of the divergence kernels: straightforward PyTorch vs fdistill, and the fused
lm-head path vs the materialised-logits path vs Liger-Kernel's LigerFusedLinearJSDLoss.

Every (size, case, implementation) measurement runs in a fresh subprocess with ``--threads`` torch threads,
so one case's allocator state cannot flatter another. In it: the inputs are created (student tensors
require grad, teacher tensors do not), a two-row warm-up runs the same code, then ``--repeats`` full forward +
backward passes are timed and the fastest is kept (the first pass also pays the page faults of fresh
memory). Peak extra memory = peak resident set size of the process (``ru_maxrss``) minus its resident size
right before the timed passes (inputs, libraries and warm-up already resident): what the loss and its
backward (the gradients included) add. Cases are interleaved: each of ``--rounds`` rounds runs every
measurement once, in the same order, and the table reports the best (smallest) time and peak of the rounds.
Check ``uptime`` first: only a quiet machine gives readable ratios.

    python scripts/bench_divergences.py --out results/bench/divergences.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fdistill.divergences import get_divergence
from fdistill.reporting.io import atomic_write_text
from fdistill.reporting.provenance import cpu_model, git_commit

REPO = Path(__file__).resolve().parents[1]

#: (table label, registry key, parameters)
CASES = [
    ("kl", "kl", {}),
    ("rkl", "rkl", {}),
    ("js", "js", {}),
    ("tvd", "tvd", {}),
    ("jsd(0.9)", "jsd", {"beta": 0.9}),
    ("skl", "skl", {"alpha": 0.1}),
    ("srkl", "srkl", {"alpha": 0.1}),
    ("fkl_rkl", "fkl_rkl", {"weight": 0.5}),
    ("akl", "akl", {}),
    ("engine", "engine", {}),
]
FUSED_IMPLS = ("fused", "materialised", "liger")


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
    if key == "fkl_rkl":
        w = params["weight"]
        return w * (log_p.exp() * (log_p - log_q)).sum(-1) + (1 - w) * (log_q.exp() * (log_q - log_p)).sum(-1)
    if key == "engine":
        return -(log_q.exp() * log_p).sum(-1)
    if key in ("skl", "srkl"):  # DistiLLM's recipe: the skewed mixture in probability space
        alpha = params["alpha"]
        p, q = log_p.exp(), log_q.exp()
        if key == "skl":
            return (p * (log_p - torch.log(alpha * p + (1 - alpha) * q))).sum(-1)
        return (q * (log_q - torch.log(alpha * q + (1 - alpha) * p))).sum(-1)
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


def _logit_step(impl: str, label: str, tokens: int, vocab: int, device: str = "cpu", dtype=torch.float32):
    key, params = next((k, p) for name, k, p in CASES if name == label)
    student_logits = torch.randn(tokens, vocab, device=device, dtype=dtype, requires_grad=True)
    teacher_logits = torch.randn(tokens, vocab, device=device, dtype=dtype)
    divergence = get_divergence(key, **params)

    def step(rows: int) -> None:
        # the full tensors in the timed pass: a slice's backward would add a full-size gradient copy
        s = student_logits if rows == tokens else student_logits[:rows].detach().requires_grad_()
        t = teacher_logits[:rows]
        values = naive_per_token(key, params, s, t) if impl == "naive" else divergence.per_token(s, t)
        values.sum().backward()
        student_logits.grad = None

    return step


def _fused_step(impl: str, tokens: int, vocab: int, hidden: int, head_dir: str | None, device: str = "cpu",
                dtype=torch.float32):
    """JSD(0.5) from hidden states and heads: fdistill fused, materialised logits + fdistill, Liger."""
    if head_dir:  # a real model's tied head (the SmolLM2 teacher converted by fdistill.models.gguf)
        from safetensors.torch import load_file

        weights = load_file(str(Path(head_dir) / "model.safetensors"))
        student_weight = next(value for key, value in weights.items() if key.endswith("embed_tokens.weight")).float()
        teacher_weight = student_weight.clone()
    else:
        student_weight = torch.randn(vocab, hidden) / hidden**0.5
        teacher_weight = torch.randn(vocab, hidden) / hidden**0.5
    student_weight = student_weight.to(device, dtype).requires_grad_()
    teacher_weight = teacher_weight.to(device, dtype)
    hidden = student_weight.shape[1]
    student_hidden = torch.randn(tokens, hidden, device=device, dtype=dtype, requires_grad=True)
    teacher_hidden = torch.randn(tokens, hidden, device=device, dtype=dtype)
    divergence = get_divergence("js")
    if impl == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        liger = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5, compiled=False)
        labels = torch.zeros(tokens, dtype=torch.long, device=device)

    def step(rows: int) -> None:
        s = student_hidden if rows == tokens else student_hidden[:rows].detach().requires_grad_()
        t = teacher_hidden[:rows]
        if impl == "liger":
            loss = liger(s, student_weight, t, teacher_weight, labels[:rows])
        elif impl == "fused":
            loss = divergence.fused(s, student_weight, t, teacher_weight).mean()
        else:
            loss = divergence.per_token(s @ student_weight.T, (t @ teacher_weight.T)).mean()
        loss.backward()
        student_hidden.grad = student_weight.grad = None

    return step


def run_case(impl: str, label: str, tokens: int, vocab: int, hidden: int, threads: int, head_dir: str | None,
             repeats: int = 3, device: str = "cpu", dtype: str = "float32") -> dict:
    """Measure one case in this process (called in a fresh subprocess by :func:`main`). On CUDA the peak is the
    allocator's (max_memory_allocated over what was allocated before the timed passes) and every pass is
    synchronised."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = getattr(torch, dtype)
    step = _fused_step(impl, tokens, vocab, hidden, head_dir, device, dtype) if impl in FUSED_IMPLS else \
        _logit_step(impl, label, tokens, vocab, device, dtype)
    cuda = device.startswith("cuda")
    step(2)  # warm-up (kernels, lazy imports) on two rows
    if cuda:
        step(tokens)  # and the full size once: the allocator's pools, cuBLAS workspaces
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _rss_bytes()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(tokens)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"time_s": min(times), "peak_extra_bytes": max(0, peak - baseline)}


def _subprocess_case(args: argparse.Namespace, impl: str, label: str, tokens: int, vocab: int, hidden: int) -> dict:
    command = [sys.executable, __file__, "--worker", impl, "--case", label, "--tokens", str(tokens), "--vocab",
               str(vocab), "--hidden", str(hidden), "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--device", args.device, "--dtype", args.dtype]
    if args.real_head and vocab == 0:  # the real-head row (V, H come from the checkpoint)
        command += ["--real-head", args.real_head]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {reason}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _liger_unavailable_reason() -> str | None:
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss  # noqa: F401
    except Exception as error:  # any import failure is reported as the row's reason
        return (f"liger-kernel not importable ({type(error).__name__}: {error}); "
                "`pip install --no-deps liger-kernel==0.8.5` (make bench-deps)")
    return None


def _machine(threads: int, device: str = "cpu") -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return f"{cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__}, {threads} torch threads per case"


def _head_shape(head_dir: str | None) -> tuple[int, int] | None:
    """(V, H) of a converted checkpoint's head, from its config.json."""
    if not head_dir:
        return None
    config = json.loads((Path(head_dir) / "config.json").read_text())
    return config["vocab_size"], config["hidden_size"]


def _load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def _best(runs: list[dict]) -> dict:
    done = [run for run in runs if "error" not in run]
    if not done:
        return runs[0]
    return {"time_s": min(run["time_s"] for run in done), "peak_extra_bytes": min(run["peak_extra_bytes"] for run in done),
            "times": [run["time_s"] for run in done]}


def measure(args: argparse.Namespace, jobs: list[tuple]) -> dict:
    results: dict[tuple, list[dict]] = {job: [] for job in jobs}
    liger_reason = _liger_unavailable_reason() if not args.no_liger else "skipped (--no-liger)"
    with tqdm(total=len(jobs) * args.rounds, desc="benchmark cases", file=sys.stderr) as progress:
        for _ in range(args.rounds):
            for job in jobs:  # interleaved: every case once per round, in one fixed order
                impl, label, tokens, vocab, hidden = job
                if impl == "liger" and liger_reason:
                    results[job].append({"error": liger_reason})
                else:
                    results[job].append(_subprocess_case(args, impl, label, tokens, vocab, hidden))
                progress.update()
    return {job: _best(runs) for job, runs in results.items()}


def logit_table(best: dict, sizes: list[tuple[int, int]], labels: list[str]) -> list[str]:
    lines = ["| tokens × V | divergence | naive time (s) | fdistill time (s) | time ratio | naive peak extra (MiB) "
             "| fdistill peak extra (MiB) | memory ratio |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for tokens, vocab in sizes:
        for label in labels:
            naive, ours = best[("naive", label, tokens, vocab, 0)], best[("fdistill", label, tokens, vocab, 0)]
            if "error" in naive or "error" in ours:
                lines.append(f"| {tokens} × {vocab} | {label} | {naive.get('error', '')} | {ours.get('error', '')} | | | | |")
                continue
            lines.append(
                f"| {tokens} × {vocab} | {label} | {naive['time_s']:.3f} | {ours['time_s']:.3f} | "
                f"{ours['time_s'] / naive['time_s']:.2f} | {_mib(naive['peak_extra_bytes'])} | "
                f"{_mib(ours['peak_extra_bytes'])} | {ours['peak_extra_bytes'] / max(1, naive['peak_extra_bytes']):.2f} |")
    return lines


def fused_table(best: dict, sizes: list[tuple[int, int, int]], real_head: tuple[int, int] | None = None) -> list[str]:
    """The fused section; the row with V = H = 0 is the real head's, labelled with its (V, H)."""
    lines = ["| tokens × V × H | fused time (s) | materialised time (s) | Liger time (s) | fused / Liger time | "
             "fused peak extra (MiB) | materialised peak extra (MiB) | Liger peak extra (MiB) | fused / materialised peak |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for tokens, vocab, hidden in sizes:
        fused, logits, liger = (best[(impl, "js", tokens, vocab, hidden)] for impl in FUSED_IMPLS)
        shape = f"{tokens} × {vocab} × {hidden}" if vocab or real_head is None else \
            f"{tokens} × {real_head[0]} × {real_head[1]} (real head)"
        if "error" in fused or "error" in logits:
            lines.append(f"| {shape} | {fused.get('error', '')} | {logits.get('error', '')} | | | | | | |")
            continue
        liger_time = f"{liger['time_s']:.3f}" if "error" not in liger else liger["error"]
        ratio = f"{fused['time_s'] / liger['time_s']:.2f}" if "error" not in liger else "n/a"
        liger_peak = _mib(liger["peak_extra_bytes"]) if "error" not in liger else "n/a"
        lines.append(f"| {shape} | {fused['time_s']:.3f} | {logits['time_s']:.3f} | {liger_time} | "
                     f"{ratio} | {_mib(fused['peak_extra_bytes'])} | {_mib(logits['peak_extra_bytes'])} | {liger_peak} | "
                     f"{fused['peak_extra_bytes'] / max(1, logits['peak_extra_bytes']):.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="markdown file to write (atomically); stdout when omitted")
    parser.add_argument("--sizes", default="2048x50257,4096x50257", help="comma-separated TOKENSxVOCAB (logits)")
    parser.add_argument("--fused-sizes", default="2048x50257x576,2048x50257x768,4096x50257x576,4096x50257x768",
                        help="comma-separated TOKENSxVOCABxHIDDEN (fused section); empty to skip")
    parser.add_argument("--cases", default=",".join(label for label, _, _ in CASES), help="comma-separated labels")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of them is reported")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per measurement; the fastest is kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--real-head", help="a converted checkpoint dir whose tied head replaces the random one "
                                            "in an extra fused row (e.g. the SmolLM2 teacher)")
    parser.add_argument("--no-liger", action="store_true", help="skip the Liger-Kernel rows")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak from the CUDA allocator there)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="dtype of the inputs (logits, hidden states, head weights); the math is float32")
    parser.add_argument("--worker", choices=("naive", "fdistill", *FUSED_IMPLS), help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_case(args.worker, args.case, args.tokens, args.vocab, args.hidden, args.threads,
                                  args.real_head, args.repeats, args.device, args.dtype)))
        return
    labels = args.cases.split(",")
    unknown = sorted(set(labels) - {label for label, _, _ in CASES})
    if unknown:
        parser.error(f"unknown --cases {unknown}; choose from {[label for label, _, _ in CASES]}")
    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",") if size]
    fused_sizes = [tuple(int(n) for n in size.split("x")) for size in args.fused_sizes.split(",") if size]
    if args.real_head:
        fused_sizes.append((fused_sizes[0][0] if fused_sizes else 2048, 0, 0))  # V, H from the checkpoint
    jobs = [(impl, label, tokens, vocab, 0) for tokens, vocab in sizes for label in labels for impl in ("naive", "fdistill")]
    jobs += [(impl, "js", tokens, vocab, hidden) for tokens, vocab, hidden in fused_sizes for impl in FUSED_IMPLS]
    load_before = _load()
    best = measure(args, jobs)
    command = "python scripts/bench_divergences.py " + " ".join(sys.argv[1:])
    text = "\n".join([
        f"# Divergence kernels: memory and time (forward + backward, {args.dtype} inputs, {args.device})", "",
        f"Command: `{command}` (commit {git_commit(REPO)})  ", f"Machine: {_machine(args.threads, args.device)}  ",
        f"Load average (1, 5, 15 min) before: {load_before}; after: {_load()}  ",
        f"Best of {args.rounds} interleaved rounds per case, each measurement in a fresh subprocess timing "
        f"{args.repeats} passes (fastest kept).", "",
        ("Peak extra = the CUDA allocator's max_memory_allocated minus what was allocated before the timed passes: "
         "what the loss and its" if args.device.startswith("cuda") else
         "Peak extra = peak RSS (getrusage ru_maxrss) minus RSS right before the timed pass: what the loss and its"),
        "backward add on top of the inputs (the gradients included). Ratios are fdistill / naive.", "",
        *(["## Losses on logits: fdistill's chunked closed-form kernels vs straightforward PyTorch", "",
           "Targets: time ratio ≤ 0.5, memory ratio ≤ 0.25.", "",
           *logit_table(best, sizes, labels), ""] if sizes else []),
        *(["## Fused lm-head JS: hidden states and head weights in, the logits never exist in full", "",
           "fused = `Divergence.fused` (fdistill); materialised = `hidden @ W.T` for both models then fdistill's "
           "chunked", "`per_token`; Liger = `LigerFusedLinearJSDLoss(compiled=False)` (liger-kernel 0.8.5, CPU). "
           "Student hidden and", "weight both get gradients. Goals: fused peak ≤ 0.2 × materialised, time ≤ 1.0 × Liger."
           + (f" The last row uses the tied head of `{args.real_head}` (V, H from the checkpoint)." if args.real_head
              else ""), "", *fused_table(best, fused_sizes, _head_shape(args.real_head)), ""] if fused_sizes else [])])
    if args.out is None:
        print(text)
        return
    atomic_write_text(args.out, text)
    print(args.out)


if __name__ == "__main__":
    main()
