"""CLI: ``python -m fdistill.evaluation --run-dir DIR [--metrics bleu,meteor] [--bertscore-encoder NAME]``."""

from __future__ import annotations

import argparse

from fdistill.cli import guarded
from fdistill.evaluation.rescore import rescore_run
from fdistill.evaluation.text_metrics import available_metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Re-score a run's predictions.jsonl into its metrics.json.")
    parser.add_argument("--run-dir", required=True, help="run directory holding predictions.jsonl")
    parser.add_argument("--metrics", default=None,
                        help=f"comma-separated metric names (default: the run's dataset.metrics); "
                             f"valid: {','.join(available_metrics())}")
    parser.add_argument("--bertscore-encoder", default=None)
    parser.add_argument("--moverscore-encoder", default=None)
    parser.add_argument("--bleurt-checkpoint", default=None)
    args = parser.parse_args(argv)
    metrics = [name.strip() for name in args.metrics.split(",") if name.strip()] if args.metrics else None
    with guarded():
        path = rescore_run(args.run_dir, metrics, bertscore_encoder=args.bertscore_encoder,
                           moverscore_encoder=args.moverscore_encoder, bleurt_checkpoint=args.bleurt_checkpoint)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
