"""Evaluation: text metrics of the papers (one registry), model-based analyses, run artifacts.

See :mod:`fdistill.evaluation.text_metrics` (metric names, libraries, scales), :mod:`.analyses`
(f-DISTILL Table 3 risks and TeacherDist, exposure-bias ExError, synthetic exact metrics) and
:mod:`.io` (``predictions.jsonl`` / ``metrics.json`` formats). Re-score a run with
``python -m fdistill.evaluation --run-dir DIR``.
"""

from fdistill.evaluation.analyses import (
    distinct_bigram_percentage,
    draw_samples,
    exposure_bias_excess_error,
    likelihood_coverage_risk,
    sequence_nll,
    synthetic_exact_metrics,
    teacher_distinct_bigrams,
)
from fdistill.evaluation.io import read_metrics, read_predictions, write_metrics, write_predictions
from fdistill.evaluation.rescore import rescore_run
from fdistill.evaluation.text_metrics import available_metrics, evaluate_predictions, get_metric

__all__ = [
    "available_metrics",
    "distinct_bigram_percentage",
    "evaluate_predictions",
    "exposure_bias_excess_error",
    "get_metric",
    "likelihood_coverage_risk",
    "read_metrics",
    "read_predictions",
    "rescore_run",
    "draw_samples",
    "sequence_nll",
    "synthetic_exact_metrics",
    "teacher_distinct_bigrams",
    "write_metrics",
    "write_predictions",
]
