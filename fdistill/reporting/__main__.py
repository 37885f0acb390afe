"""Aggregate a Hydra multirun directory into ``<out>.{csv,md,tex}`` (and optional figures).

Usage::

    python -m fdistill.reporting --multirun-dir multirun/2026-01-01/12-00-00 --table "f-DISTILL Table 2 (DART)" \\
        --paper-csv results/paper/fdistill_table2.csv --paper-dataset dart --paper-pair bart_dart \\
        --claims fdistill_table2 --method-key divergence --out results/fdistill/table2_dart \\
        [--figure lambda-grid --figure-metric rougeL]

Flags:
  --multirun-dir DIR     Hydra multirun folder (jobs with .hydra/overrides.yaml + metrics.json); required.
  --table NAME           table title (written in every output); required.
  --out STEM             output path without suffix; writes STEM.csv, STEM.md, STEM.tex; required.
  --paper-csv PATH       published numbers (results/paper/*.csv; repeatable): the paper's column, the
                         difference ours − paper, and the paper side of the claims.
  --paper-dataset NAME   keep only this dataset's rows of --paper-csv (fdistill's dataset name, e.g. dart).
  --paper-pair NAME      keep only this teacher → student pair's rows (fdistill's pair name, e.g. bart_dart).
                         When our runs used another dataset or pair, the table says so in bold at the top.
  --setting-note TEXT    more of how our setting differs (e.g. "120 distillation steps on CPU"); repeatable.
  --claims NAME          check the directional claims of fdistill.reporting.claims.CLAIMS[NAME] (e.g.
                         fdistill_table2): a verdict table below the main one and <out>_claims.csv.
  --method-key KEY       override whose value names the method (e.g. divergence); default: all varying
                         non-seed overrides form the row label.
  --seed-key KEY         override that is the seed axis (default: seed).
  --metrics M [M ...]    metrics (columns) to show, in order; default: all.
  --lower-is-better M    extra metric names where smaller is better (repeatable); TER, R_llh, R_cvg, losses,
                         risks, KLs, errors, perplexity, time, Self-BLEU are already known.
  --digits N             decimals in md/tex (default 2).
  --figure KIND          lambda-grid | student-size | quality-diversity | data-fraction | reward-tradeoff;
                         writes STEM_<KIND>.{png,pdf}.
  --figure-metric M      y metric of the figure (quality metric for quality-diversity and reward-tradeoff).
  --diversity-metric M   x metric of quality-diversity (default self_bleu).
  --reward-metric M      x metric of reward-tradeoff (the reward measured at evaluation).
  --x-key KEY            override on the x axis (default per kind: pipeline.distill.lam,
                         pair.student.num_encoder_layers, "temperatures" = the temperature_<T>/ metrics of every
                         job (or an override such as pipeline.evaluate.decoding.temperature),
                         pipeline.distill.data_fraction, pipeline.distill.rl.alpha).
  --series-key KEY       override that defines the lines (default: divergence).
  --require METHOD       a row the table must have (repeatable), e.g. teacher: the report fails without a finished
                         job for it instead of showing the paper's row alone.
  --stage-times          also write STEM_stage_times.md: seconds per stage of every job (artifact builds,
                         distillation, evaluation) from metrics.json's timings_seconds.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence

from fdistill.reporting.aggregate import aggregate_over_seeds
from fdistill.reporting.claims import CLAIMS, evaluate_claims
from fdistill.reporting.collect import collect_jobs
from fdistill.reporting.figures import (
    plot_data_fraction,
    plot_lambda_grid,
    plot_quality_diversity,
    plot_reward_tradeoff,
    plot_student_size,
)
from fdistill.reporting.paper import join_paper, load_paper_csv
from fdistill.reporting.provenance import (
    COMMIT_METADATA_KEYS,
    HARDWARE_METADATA_KEYS,
    dirty_tree_warning,
    distinct_metadata,
    git_commit,
    machine_description,
    project_relative,
    setting_warning,
)
from fdistill.reporting.tables import TableContext, add_marks, write_tables
from fdistill.reporting.timings import write_stage_times

DEFAULT_X_KEYS = {"lambda-grid": "pipeline.distill.lam", "student-size": "pair.student.num_encoder_layers",
                  "quality-diversity": "temperatures", "data-fraction": "pipeline.distill.data_fraction",
                  "reward-tradeoff": "pipeline.distill.rl.alpha"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fdistill.reporting", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multirun-dir", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--paper-csv", action="append", default=[])
    parser.add_argument("--paper-dataset")
    parser.add_argument("--paper-pair")
    parser.add_argument("--setting-note", action="append", default=[])
    parser.add_argument("--claims", choices=sorted(CLAIMS))
    parser.add_argument("--method-key")
    parser.add_argument("--seed-key", default="seed")
    parser.add_argument("--metrics", nargs="+")
    parser.add_argument("--lower-is-better", action="append", default=[])
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--figure", choices=sorted(DEFAULT_X_KEYS))
    parser.add_argument("--figure-metric")
    parser.add_argument("--diversity-metric", default="self_bleu")
    parser.add_argument("--reward-metric")
    parser.add_argument("--x-key")
    parser.add_argument("--series-key", default="divergence")
    parser.add_argument("--stage-times", action="store_true")
    parser.add_argument("--require", action="append", default=[])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    if args.figure and not args.figure_metric:
        raise SystemExit("--figure needs --figure-metric (the metric on the y axis)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    jobs, missing = collect_jobs(args.multirun_dir)
    aggregated, fixed = aggregate_over_seeds(jobs, seed_key=args.seed_key, method_key=args.method_key)
    absent = [method for method in args.require if method not in set(aggregated["method"])]
    if absent:
        raise SystemExit(f"no finished job for the required row(s) {absent} in {args.multirun_dir} (found "
                         f"{sorted(set(aggregated['method']))}); run them first (e.g. divergence=teacher for the "
                         "measured teacher row)")
    paper = load_paper_csv(args.paper_csv, args.paper_dataset, args.paper_pair) if args.paper_csv else None
    marked = add_marks(join_paper(aggregated, paper), args.lower_is_better)
    run_hardware = distinct_metadata(jobs, HARDWARE_METADATA_KEYS)
    commit = git_commit()
    provenance = [project_relative(line) for line in [
        f"Runs' hardware (metrics.json metadata): {'; '.join(run_hardware) if run_hardware else 'not recorded'}",
        f"Reporting machine: {machine_description()}",
        f"Git commit (reporting): {commit}",
        *[f"Run {entry}" for entry in distinct_metadata(jobs, COMMIT_METADATA_KEYS)],
        f"Command: {shlex.join(['python', '-m', 'fdistill.reporting', *arguments])}",
        f"Multirun dir: {args.multirun_dir} ({len(jobs)} finished jobs, {len(missing)} without metrics.json)",
        f"Fixed overrides: {', '.join(f'{key}={value}' for key, value in fixed.items()) or 'none'}",
    ]]
    warnings = [warning for warning in (dirty_tree_warning(commit),
                                        setting_warning(jobs, args.paper_dataset, args.paper_pair, args.setting_note)
                                        if paper is not None else None) if warning]
    claims = evaluate_claims(aggregated, paper, CLAIMS[args.claims], args.lower_is_better) if args.claims else None
    context = TableContext(args.table, provenance, warnings, claims)
    written = write_tables(marked, args.out, context, args.metrics, args.digits)
    if args.stage_times:
        written.append(write_stage_times(jobs, args.out, args.table, args.method_key, provenance))
    if args.figure:
        x_key = args.x_key or DEFAULT_X_KEYS[args.figure]
        stem = f"{args.out}_{args.figure}"
        if args.figure == "lambda-grid":
            written += plot_lambda_grid(aggregated, args.figure_metric, stem, x_key, args.series_key)
        elif args.figure == "student-size":
            written += plot_student_size(aggregated, args.figure_metric, stem, x_key, args.series_key)
        elif args.figure == "quality-diversity":
            written += plot_quality_diversity(aggregated, args.figure_metric, args.diversity_metric, stem,
                                              None if x_key == "temperatures" else x_key, args.series_key)
        elif args.figure == "data-fraction":
            written += plot_data_fraction(aggregated, args.figure_metric, stem, x_key, args.series_key)
        else:
            if not args.reward_metric:
                raise SystemExit("--figure reward-tradeoff needs --reward-metric (the x axis)")
            written += plot_reward_tradeoff(aggregated, args.reward_metric, args.figure_metric, stem, x_key,
                                            args.series_key)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
