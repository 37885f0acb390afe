"""Paper-style figures (GKD Figs. 5 and 7, f-DISTILL Fig. 2) are written as PNG + PDF."""

from __future__ import annotations

import pandas as pd
import pytest

from fdistill.reporting import plot_lambda_grid, plot_quality_diversity, plot_student_size


def aggregated_frame(x_key: str, metrics: dict[str, list[float]]) -> pd.DataFrame:
    """Rows like aggregate_over_seeds: two divergences × three x values per metric."""
    rows = []
    for metric, values in metrics.items():
        for divergence, offset in (("kl", 0.0), ("jsd", 1.0)):
            for x, value in zip(("0", "0.5", "1"), values, strict=True):
                rows.append({"method": f"{divergence} ({x_key}={x})", "metric": metric, "mean": value + offset,
                             "std": 0.1, "n": 2, "unavailable": "", "divergence": divergence, x_key: x})
    return pd.DataFrame(rows)


def assert_written(paths, stem):
    assert [path.name for path in paths] == [f"{stem.name}.png", f"{stem.name}.pdf"]
    assert all(path.stat().st_size > 1000 for path in paths)


def test_lambda_grid_and_student_size_write_png_and_pdf(tmp_path):
    lam = aggregated_frame("pipeline.distill.lam", {"rougeL": [30.0, 31.0, 33.0]})
    assert_written(plot_lambda_grid(lam, "rougeL", tmp_path / "lam"), tmp_path / "lam")
    size = aggregated_frame("pair.student.num_encoder_layers", {"bleu": [20.0, 24.0, 26.0]})
    assert_written(plot_student_size(size, "bleu", tmp_path / "size"), tmp_path / "size")


def test_quality_diversity_pairs_metrics_per_temperature(tmp_path):
    frame = aggregated_frame("pipeline.evaluate.decoding.temperature", {"rougeL": [35.0, 33.0, 30.0], "self_bleu": [80.0, 60.0, 40.0]})
    assert_written(plot_quality_diversity(frame, "rougeL", "self_bleu", tmp_path / "qd"), tmp_path / "qd")


def test_figure_with_unknown_metric_names_the_problem(tmp_path):
    frame = aggregated_frame("pipeline.distill.lam", {"rougeL": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="non-empty"):
        plot_lambda_grid(frame, "bleu", tmp_path / "none")
    with pytest.raises(ValueError, match="override keys"):
        plot_lambda_grid(frame, "rougeL", tmp_path / "none", lambda_key="lam")
