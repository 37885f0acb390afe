"""f-DISTILL Table 4 speedup: distillation wall-clock time with online vs offline teacher sampling.

Reads a Hydra multirun of ``conf/sweep/fdistill_table4.yaml`` (divergence x
``pipeline.distill.teacher_sampling`` x seed), takes each job's ``metrics.json`` metadata
``timings_seconds.distill_seconds`` and writes ``<out>.csv`` and ``<out>.md``: mean ± std seconds per
(divergence, sampling) over seeds and the speedup = mean online time / mean offline time.
The offline time excludes the one-off teacher sampling, which the cache shares across the sweep (as in
the paper, where offline samples are generated once).

    python scripts/reproduce_speedup.py --multirun-dir outputs/multirun/fdistill_table4_dart_bart_dart \\
        --out results/fdistill/table4_dart_speedup --paper-csv results/paper/fdistill_table4.csv

With ``--paper-csv`` the paper's speed-up (f-DISTILL Table 4: 2.25× JS, 2.31× TVD on DART, BART-large, one
RTX A6000) stands beside ours, with the verdict on the paper's claim that offline sampling is faster.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from fdistill.reporting.collect import collect_jobs
from fdistill.reporting.io import atomic_write_text
from fdistill.reporting.paper import SAMPLING_KEY, paper_offline_speedups
from fdistill.reporting.provenance import project_relative
from fdistill.reporting.tables import frame_to_markdown

DIVERGENCE_KEY = "divergence"
SEED_KEY = "seed"


def distill_times(multirun_dir: str | Path) -> pd.DataFrame:
    """One row per finished job: divergence, sampling, seed, distill_seconds."""
    jobs, _ = collect_jobs(multirun_dir)
    rows = []
    for job in jobs:
        missing = [key for key in (SAMPLING_KEY, DIVERGENCE_KEY) if key not in job.overrides]
        if missing:
            raise ValueError(f"{job.job_dir}: overrides lack {missing}; is this an fdistill_table4 sweep?")
        seconds = job.metadata.get("timings_seconds", {}).get("distill_seconds")
        if seconds is None:
            raise ValueError(f"{job.job_dir}/metrics.json has no metadata timings_seconds.distill_seconds")
        rows.append({"divergence": job.overrides[DIVERGENCE_KEY], "sampling": job.overrides[SAMPLING_KEY],
                     "seed": job.overrides.get(SEED_KEY), "distill_seconds": float(seconds)})
    return pd.DataFrame(rows)


def speedup_table(times: pd.DataFrame) -> pd.DataFrame:
    """Per divergence: mean/std seconds for each sampling mode, number of seeds and online/offline ratio."""
    stats = times.groupby(["divergence", "sampling"])["distill_seconds"].agg(["mean", "std", "count"]).unstack()
    for sampling in ("online", "offline"):
        if sampling not in stats["mean"].columns:
            raise ValueError(f"no {sampling} jobs in the multirun; the speedup needs both sampling modes")
    table = pd.DataFrame({
        "online_seconds_mean": stats["mean"]["online"], "online_seconds_std": stats["std"]["online"],
        "offline_seconds_mean": stats["mean"]["offline"], "offline_seconds_std": stats["std"]["offline"],
        "seeds": stats["count"].min(axis=1),
    })
    table["speedup"] = table["online_seconds_mean"] / table["offline_seconds_mean"]
    return table.reset_index()


def with_paper(table: pd.DataFrame, speedups: dict[str, float]) -> pd.DataFrame:
    """Add the paper's speed-up and whether ours shows the paper's ordering (offline faster than online)."""
    table = table.copy()
    table["paper_speedup"] = table["divergence"].map(speedups)
    table["offline_faster (paper: yes)"] = table["speedup"].map(lambda value: "yes" if value > 1 else "no")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multirun-dir", required=True)
    parser.add_argument("--out", required=True, help="output path without suffix (writes .csv and .md)")
    parser.add_argument("--paper-csv", help="results/paper/fdistill_table4.csv: the paper's speed-ups beside ours")
    args = parser.parse_args()
    table = speedup_table(distill_times(args.multirun_dir))
    note = ""
    if args.paper_csv:
        table = with_paper(table, paper_offline_speedups(args.paper_csv))
        note = ("Paper: f-DISTILL Table 4 (shared/papers/fdistill_wen2023.md, Table 4), DART with a BART-large teacher "
                "on one RTX A6000. Our runs' setting (pair, hardware, budget) is in their metrics.json; the ratio "
                "depends on the teacher/student size ratio and the hardware, so compare the direction.\n\n")
    atomic_write_text(f"{args.out}.csv", table.to_csv(index=False))
    title = "f-DISTILL Table 4: distillation wall-clock seconds, online vs offline teacher sampling"
    atomic_write_text(f"{args.out}.md", f"# {title}\n\nMultirun: {project_relative(str(args.multirun_dir))}\n\n"
                      f"{note}{frame_to_markdown(table, digits=2)}\n")
    print(f"{args.out}.csv\n{args.out}.md")


if __name__ == "__main__":
    main()
