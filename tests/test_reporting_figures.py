"""Paper-style figures (GKD Figs. 5 and 7, f-DISTILL Fig. 2) are written as PNG + PDF."""

from __future__ import annotations

import pandas as pd
import pytest

from fdistill.reporting import plot_lambda_grid, plot_quality_diversity, plot_student_size
from fdistill.reporting.figures import _temperature_points, plot_data_fraction, plot_reward_tradeoff


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
    key = "pipeline.evaluate.decoding.temperature"
    frame = aggregated_frame(key, {"rougeL": [35.0, 33.0, 30.0], "self_bleu": [80.0, 60.0, 40.0]})
    assert_written(plot_quality_diversity(frame, "rougeL", "self_bleu", tmp_path / "qd", temperature_key=key),
                   tmp_path / "qd")


def test_quality_diversity_from_the_per_temperature_metrics_of_one_job(tmp_path):
    """One evaluation with `sample_temperatures` writes temperature_<T>/<metric>; each becomes a point."""
    rows = [{"method": divergence, "metric": f"temperature_{t}/{metric}", "mean": value + offset, "std": 0.0,
             "n": 1, "unavailable": "", "divergence": divergence}
            for divergence, offset in (("kl", 0.0), ("rkl", 5.0))
            for metric, values in (("rougeL", (35.0, 30.0)), ("self_bleu", (80.0, 40.0)))
            for t, value in zip(("0.5", "1.0"), values, strict=True)]
    frame = pd.DataFrame(rows)
    points = _temperature_points(frame, "rougeL", "divergence")
    assert sorted(zip(points["series"], points["x"], points["y"], strict=True)) == [
        ("kl", 0.5, 35.0), ("kl", 1.0, 30.0), ("rkl", 0.5, 40.0), ("rkl", 1.0, 35.0)]
    assert_written(plot_quality_diversity(frame, "rougeL", "self_bleu", tmp_path / "qd"), tmp_path / "qd")
    with pytest.raises(ValueError, match="non-empty"):
        plot_quality_diversity(frame, "bleu", "self_bleu", tmp_path / "none")


def test_data_fraction_and_reward_tradeoff_figures(tmp_path):
    fraction = aggregated_frame("pipeline.distill.data_fraction", {"rouge2": [10.0, 12.0, 13.0]})
    assert_written(plot_data_fraction(fraction, "rouge2", tmp_path / "frac"), tmp_path / "frac")
    alpha = aggregated_frame("pipeline.distill.rl.alpha", {"rl/reward": [0.9, 0.6, 0.2], "rouge2": [9.0, 11.0, 12.0]})
    assert_written(plot_reward_tradeoff(alpha, "rl/reward", "rouge2", tmp_path / "rw"), tmp_path / "rw")


def test_figure_with_unknown_metric_names_the_problem(tmp_path):
    frame = aggregated_frame("pipeline.distill.lam", {"rougeL": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="non-empty"):
        plot_lambda_grid(frame, "bleu", tmp_path / "none")
    with pytest.raises(ValueError, match="override keys"):
        plot_lambda_grid(frame, "rougeL", tmp_path / "none", lambda_key="lam")
