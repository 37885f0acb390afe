"""Benchmark the sparse teacher signal against the dense teacher (issue: teacher signal; `make bench-teacher-signal`).

On the real pair (`+experiment=real_dart`: the fine-tuned SmolLM2 teacher and its pre-distilled student, DART),
with every artifact the sweep shares taken from the artifact cache (built first if missing, before any timing):

(a) approximation on one batch of cached teacher samples: for top-k k in {8, 32, 128} x tail {renormalize,
    bucket, zero} and sampled (RSKD) m in {8, 32}, the token-mean KL(p || q) and its gradient with respect to every
    student parameter against the exact dense loss: relative error of the value, cosine of the gradients (the
    stored float16 log-probabilities included; sampled: mean and std over `--draws` independent draws);
(b) bytes per target token of each stored signal (the cached artifacts, or shards written here);
(c) distillation step time with the cached signal (the teacher is not loaded) against the dense teacher in the
    loop, f-DISTILL KL on teacher samples: each variant a separate process, interleaved over `--repeats` rounds,
    median s/step of each round's log; and the peak resident memory of each process;
(d) a short distillation (`--short-steps` steps, same seed) with each signal and with the dense teacher: the
    student's KL to the teacher on teacher prefixes (exposure_kl_teacher_prefixes) and its coverage risk R_cvg
    on `--analysis-limit` test inputs.

    python scripts/bench_teacher_signal.py --out results/bench/teacher_signal.md     # quiet machine!
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOPK = (8, 32, 128)
TAILS = ("renormalize", "bucket", "zero")
SAMPLED = (8, 32)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from fdistill.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=[f"paths.root={REPO}", *overrides])


# ------------------------------------------------------------------ one pipeline run in its own process
def child(run_dir: Path, overrides: list[str]) -> None:
    """Run the pipeline; print one JSON line: peak RSS, distill seconds, median s/step, metrics."""
    import csv

    from fdistill.pipeline import run_pipeline
    from fdistill.pipeline.cache import read_stage_marker

    run_pipeline(compose(overrides), run_dir)
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text())["metrics"] if metrics_file.is_file() else {}
    marker = read_stage_marker(run_dir, "distill") or {}
    steps = []
    log = run_dir / "distill" / "log.csv"
    if log.is_file():
        steps = [float(row["step_seconds"]) for row in csv.DictReader(log.open()) if row.get("step_seconds")]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print("BENCH " + json.dumps({"peak_rss_mib": peak, "distill_seconds": marker.get("seconds"),
                                 "step_seconds": statistics.median(steps) if steps else None,
                                 "metrics": metrics}))


def run_child(work: Path, name: str, overrides: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", str(work / name), *overrides]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH "):])


# ------------------------------------------------------------------ (a) and (b): one batch, in process
def approximation(run_dir: Path, batch_size: int, draws: int, work: Path) -> tuple[list[dict], dict]:
    import datasets
    import torch

    from fdistill.divergences import get_divergence
    from fdistill.divergences.sparse import SparseSignal, sparse_per_token
    from fdistill.models import SeqCollator, load_teacher, load_tokenizer, token_logits
    from fdistill.pipeline.cache import read_stage_marker
    from fdistill.sampling.signal import SignalSpec, SignalStore, extract, signal_record, write_shard

    cfg = json.loads((run_dir / "config.json").read_text())
    teacher_dir = Path(read_stage_marker(run_dir, "teacher_sft")["artifact"]) / "model"
    student_dir = Path(read_stage_marker(run_dir, "predistill")["artifact"]) / "model"
    samples_dir = Path(read_stage_marker(run_dir, "teacher_sampling")["artifact"]) / "samples"
    tokenizer = load_tokenizer(teacher_dir)
    dataset = cfg["dataset"]
    collator = SeqCollator(tokenizer, False, dataset["max_source_length"], dataset["max_target_length"],
                           cfg["pair"]["prompt_format"], dataset["instruction"])
    from fdistill.data import load_from_config

    examples = load_from_config(dataset, "train")
    samples = datasets.load_from_disk(str(samples_dir))
    rows = [samples[index] for index in range(batch_size)]
    batch = collator.from_ids(collator.encode_sources([examples[row["example_index"]].source for row in rows]),
                              [row["target_ids"] for row in rows])
    teacher = load_teacher(teacher_dir, "decoder_only").eval()
    student = load_teacher(student_dir, "decoder_only").train()
    valid = batch["labels"] != -100
    with torch.no_grad():
        teacher_logits = token_logits(teacher, batch)[valid].float()
    vocab = len(tokenizer)
    teacher_logits = teacher_logits[:, :vocab]
    kl = get_divergence("kl")
    parameters = [parameter for parameter in student.parameters() if parameter.requires_grad]

    def loss_and_grad(loss_of_logits) -> tuple[float, torch.Tensor]:
        student.zero_grad(set_to_none=True)
        logits = token_logits(student, batch)[valid][:, :vocab].float()
        loss = loss_of_logits(logits)
        loss.backward()
        grad = torch.cat([parameter.grad.reshape(-1) for parameter in parameters if parameter.grad is not None])
        return float(loss.detach()), grad

    exact, exact_grad = loss_and_grad(lambda logits: kl.per_token(logits, teacher_logits).mean())

    def stored(signal: SparseSignal) -> SparseSignal:  # what the float16 store gives back
        half = signal.logp.half().float()
        proposal = None if signal.log_proposal is None else signal.log_proposal.half().float()
        return SparseSignal(signal.kind, signal.ids, half, log_tail=signal.log_tail, log_proposal=proposal)

    def compare(signal: SparseSignal, tail: str) -> tuple[float, float]:
        value, grad = loss_and_grad(lambda logits: sparse_per_token(kl, "both", logits, signal, tail).mean())
        cosine = float(torch.nn.functional.cosine_similarity(grad, exact_grad, dim=0))
        return (value - exact) / exact, cosine

    results = []
    for k in TOPK:
        signal = stored(extract(teacher_logits, SignalSpec("topk", k)))
        for tail in TAILS:
            error, cosine = compare(signal, tail)
            results.append({"signal": f"top-{k}", "tail": tail, "rel_error": error, "cosine": cosine, "spread": None})
    for m in SAMPLED:
        errors, cosines = [], []
        for draw in range(draws):
            generator = torch.Generator().manual_seed(draw)
            error, cosine = compare(stored(extract(teacher_logits, SignalSpec("sampled", m), generator)), "bucket")
            errors.append(error)
            cosines.append(cosine)
        results.append({"signal": f"sampled m={m}", "tail": "(importance weights)",
                        "rel_error": statistics.mean(errors), "cosine": statistics.mean(cosines),
                        "spread": (statistics.stdev(errors), statistics.stdev(cosines))})

    # (b) bytes per target token, as stored (one shard over this batch, float16 log-probabilities)
    sizes = {}
    counts = valid.sum(-1).tolist()
    for name, spec in [*((f"top-{k}", SignalSpec("topk", k)) for k in TOPK),
                       *((f"sampled m={m}", SignalSpec("sampled", m)) for m in SAMPLED)]:
        directory = work / "stores" / name.replace(" ", "_").replace("=", "")
        start, records = 0, []
        generator = torch.Generator().manual_seed(0)
        for row, count in enumerate(counts):
            records.append(signal_record("samples", row, extract(teacher_logits[start:start + count], spec, generator),
                                         "float16"))
            start += count
        write_shard(directory, 0, records, spec)
        sizes[name] = SignalStore(directory, spec.method, spec.k).bytes_per_token(directory)
    return results, {"exact_loss": exact, "tokens": int(valid.sum()), "sequences": batch_size, "bytes": sizes}


# ------------------------------------------------------------------ the report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO / "results/bench/teacher_signal.md")
    parser.add_argument("--work", type=Path, default=REPO / "outputs/bench_teacher_signal")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache/fdistill")
    parser.add_argument("--timing-steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--short-steps", type=int, default=30)
    parser.add_argument("--analysis-limit", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args, unknown = parser.parse_known_args()
    if args.child is not None:
        child(args.child, [*args.overrides, *unknown])
        return

    from fdistill.files import atomic_write_text
    from fdistill.reporting.provenance import git_commit, machine_description

    common = ["+experiment=real_dart", "divergence=kl", f"paths.cache_dir={args.cache}",
              f"paths.output_dir={args.work}/outputs", "dataset.metrics=[bleu]", *args.overrides]
    timing = [*common, f"pipeline.distill.max_steps={args.timing_steps}", "pipeline.distill.checkpoint_every=1000",
              "pipeline.evaluate.enabled=false", "pipeline.distill.log_every=1"]
    dense = ["pipeline.distill.teacher_signal=dense"]
    offline = ["pipeline.distill.teacher_signal=offline", "pipeline.teacher_signal.method=topk",
               "pipeline.teacher_signal.k=128", "pipeline.teacher_signal.tail=bucket"]
    load = os.getloadavg()
    started = time.time()
    # every shared artifact (teacher, pre-distilled student, samples, the top-128 signal) before any timing
    prepared = args.work / "prepare"
    run_child(args.work, "prepare", [*timing, *offline])
    approx, facts = approximation(prepared, args.batch, args.draws, args.work)

    rounds = []
    for round_index in range(args.repeats):  # interleaved: dense, offline, dense, offline, ...
        found = {}
        for name, variant in (("dense", dense), ("offline", offline)):
            found[name] = run_child(args.work, f"time_{name}_{round_index}", [*timing, *variant])
        rounds.append(found)
    dense_steps = [found["dense"]["step_seconds"] for found in rounds]
    offline_steps = [found["offline"]["step_seconds"] for found in rounds]

    short = [*common, f"pipeline.distill.max_steps={args.short_steps}", "pipeline.distill.checkpoint_every=1000",
             f"pipeline.evaluate.analysis_limit={args.analysis_limit}", "pipeline.evaluate.analyses=[risks,exposure_bias]"]
    variants = [("dense teacher (exact)", dense)]
    for k in TOPK:
        variants.append((f"top-{k}, bucket", ["pipeline.distill.teacher_signal=offline", "pipeline.teacher_signal.method=topk",
                                              f"pipeline.teacher_signal.k={k}", "pipeline.teacher_signal.tail=bucket"]))
    for tail in ("renormalize", "zero"):
        variants.append((f"top-128, {tail}", ["pipeline.distill.teacher_signal=offline", "pipeline.teacher_signal.method=topk",
                                              "pipeline.teacher_signal.k=128", f"pipeline.teacher_signal.tail={tail}"]))
    for m in SAMPLED:
        variants.append((f"sampled m={m}", ["pipeline.distill.teacher_signal=offline", "pipeline.teacher_signal.method=sampled",
                                            f"pipeline.teacher_signal.k={m}"]))
    short_results = [(name, run_child(args.work, f"short_{index}", [*short, *variant]))
                     for index, (name, variant) in enumerate(variants)]
    load_after = os.getloadavg()

    lines = ["# Teacher signal: dense, top-k, sampled (real SmolLM2 pair, DART)", "",
             f"`python scripts/bench_teacher_signal.py {' '.join(sys.argv[1:])}` (`make bench-teacher-signal`); "
             f"commit {git_commit(REPO)}; {machine_description()}; OMP_NUM_THREADS="
             f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; load average {load[0]:.2f} before, "
             f"{load_after[0]:.2f} after; {time.time() - started:.0f} s in all. The pair, data and budgets are "
             "`+experiment=real_dart`'s; f-DISTILL KL (teacher side on the cached teacher samples).", "",
             f"## (a) Loss and gradient against the exact dense loss (one batch: {facts['sequences']} teacher samples, "
             f"{facts['tokens']} target tokens; exact token-mean KL {facts['exact_loss']:.4f} nats)", "",
             "Relative error of the loss value, and cosine between the gradients with respect to every student "
             "parameter (1 = the same direction). Log-probabilities as stored (float16). `sampled`: mean over "
             f"{args.draws} independent draws, ± their standard deviation (the estimator is unbiased; one draw is "
             "noisy).", "",
             "| signal | tail | rel. error of the loss | gradient cosine |", "| --- | --- | ---: | ---: |"]
    for row in approx:
        if row["spread"] is None:
            lines.append(f"| {row['signal']} | {row['tail']} | {row['rel_error']:+.4%} | {row['cosine']:.5f} |")
        else:
            lines.append(f"| {row['signal']} | {row['tail']} | {row['rel_error']:+.3%} ± {row['spread'][0]:.3%} | "
                         f"{row['cosine']:.4f} ± {row['spread'][1]:.4f} |")
    lines += ["", "## (b) Bytes per target token on disk (Arrow, float16 log-probabilities, int32 ids)", "",
              "| signal | bytes / token | 6k + 4 (ideal fixed-width) |", "| --- | ---: | ---: |"]
    for name, size in facts["bytes"].items():
        k = int(name.split("-")[-1]) if name.startswith("top") else int(name.split("=")[-1])
        ideal = 6 * k + 4 if name.startswith("top") else 10 * k
        lines.append(f"| {name} | {size:,.0f} | {ideal:,} |")
    lines += ["", "Sampled signals store the proposal's log-probability too: 10m bytes per token.", "",
              f"## (c) Distillation step time and memory ({args.timing_steps} steps per run, {args.repeats} rounds, "
              "interleaved, each run its own process)", "",
              "| round | dense teacher s/step | cached top-128 s/step | speed-up | dense peak RSS MiB | cached peak RSS MiB |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for index, found in enumerate(rounds):
        lines.append(f"| {index + 1} | {found['dense']['step_seconds']:.2f} | {found['offline']['step_seconds']:.2f} | "
                     f"{found['dense']['step_seconds'] / found['offline']['step_seconds']:.2f}× | "
                     f"{found['dense']['peak_rss_mib']:,.0f} | {found['offline']['peak_rss_mib']:,.0f} |")
    lines.append(f"| median | {statistics.median(dense_steps):.2f} | {statistics.median(offline_steps):.2f} | "
                 f"{statistics.median(dense_steps) / statistics.median(offline_steps):.2f}× | | |")
    lines += ["", "The cached run never loads the teacher in the distill stage (tested); its peak RSS is the "
              "training process's (student, optimizer, data, signal).", "",
              f"## (d) A short distillation with each signal ({args.short_steps} steps, seed 0, the same batches)", "",
              f"Evaluated on {args.analysis_limit} test inputs: the student's KL to the teacher on teacher prefixes "
              "(exposure_kl_teacher_prefixes), its coverage risk R_cvg per token, and greedy BLEU on the test split.", "",
              "| signal | KL to the teacher | R_cvg per token | BLEU | distill s |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, found in short_results:
        metrics = found["metrics"]
        lines.append(f"| {name} | {metrics.get('exposure/exposure_kl_teacher_prefixes', float('nan')):.4f} | "
                     f"{metrics.get('risk/coverage_risk_per_token', float('nan')):.4f} | "
                     f"{metrics.get('bleu', float('nan')):.2f} | "
                     f"{float('nan') if found['distill_seconds'] is None else found['distill_seconds']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
