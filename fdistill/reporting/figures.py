"""Figures in the papers' styles (matplotlib, Agg backend; PNG + PDF).

- :func:`plot_lambda_grid`: GKD Fig. 7 — one line per divergence, x = student-data fraction λ.
- :func:`plot_student_size`: f-DISTILL Fig. 2 — metric vs number of student encoder layers.
- :func:`plot_quality_diversity`: GKD Fig. 5 — quality (ROUGE/BLEU) vs Self-BLEU over sampling temperatures.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fdistill.reporting.io import save_figure  # noqa: E402


def plot_lines(points: pd.DataFrame, out_stem: str | Path, *, xlabel: str, ylabel: str, title: str,
               yerr_column: str | None = "yerr", label_column: str | None = None) -> list[Path]:
    """One line per ``series`` through (``x``, ``y``) points, with error bars and optional point labels."""
    required = {"series", "x", "y"}
    if not required <= set(points.columns) or points.empty:
        raise ValueError(f"plot needs non-empty columns {sorted(required)}; got {list(points.columns)} "
                         f"with {len(points)} rows (wrong metric or override key?)")
    figure, axes = plt.subplots(figsize=(4.5, 3.4))
    for series, group in points.groupby("series", sort=True):
        group = group.sort_values("x")
        yerr = group[yerr_column].fillna(0.0) if yerr_column and yerr_column in group else None
        axes.errorbar(group["x"], group["y"], yerr=yerr, marker="o", capsize=3, label=str(series))
        if label_column:
            for _, row in group.iterrows():
                axes.annotate(str(row[label_column]), (row["x"], row["y"]), textcoords="offset points",
                              xytext=(4, 4), fontsize=7)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    try:
        return save_figure(figure, out_stem)
    finally:
        plt.close(figure)


def _metric_points(aggregated: pd.DataFrame, metric: str, x_key: str, series_key: str) -> pd.DataFrame:
    """(series, x, y, yerr) from the aggregated frame for one metric; x parsed as a number."""
    missing = [key for key in (x_key, series_key) if key not in aggregated.columns]
    if missing:
        raise ValueError(f"override keys {missing} not in the runs; available: {list(aggregated.columns)}")
    rows = aggregated[(aggregated["metric"] == metric) & (aggregated["n"] > 0)]
    return pd.DataFrame({"series": rows[series_key], "x": pd.to_numeric(rows[x_key]),
                         "y": rows["mean"], "yerr": rows["std"]})


def plot_lambda_grid(aggregated: pd.DataFrame, metric: str, out_stem: str | Path,
                     lambda_key: str = "pipeline.distill.lam", divergence_key: str = "divergence") -> list[Path]:
    """GKD Fig. 7 style: ``metric`` vs λ (fraction of on-policy student data), one line per divergence."""
    points = _metric_points(aggregated, metric, lambda_key, divergence_key)
    return plot_lines(points, out_stem, xlabel="λ (student-generated data fraction)", ylabel=metric,
                      title=f"{metric} vs λ per divergence")


def plot_student_size(aggregated: pd.DataFrame, metric: str, out_stem: str | Path,
                      size_key: str = "pair.student.num_encoder_layers", series_key: str = "divergence") -> list[Path]:
    """f-DISTILL Fig. 2 style: ``metric`` vs number of student encoder layers, one line per method."""
    points = _metric_points(aggregated, metric, size_key, series_key)
    return plot_lines(points, out_stem, xlabel="student encoder layers", ylabel=metric,
                      title=f"{metric} vs student size")


TEMPERATURE_PREFIX = "temperature_"


def _temperature_points(aggregated: pd.DataFrame, metric: str, series_key: str) -> pd.DataFrame:
    """(series, x = temperature, y, yerr) from metrics ``temperature_<T>/<metric>`` that one evaluation wrote
    for each of its sampling temperatures (``pipeline.evaluate.sample_temperatures``)."""
    rows = aggregated[aggregated["metric"].str.startswith(TEMPERATURE_PREFIX)
                      & aggregated["metric"].str.endswith(f"/{metric}") & (aggregated["n"] > 0)]
    temperatures = rows["metric"].str.slice(len(TEMPERATURE_PREFIX)).str.split("/").str[0].astype(float)
    series = rows[series_key] if series_key in rows else rows["method"]
    return pd.DataFrame({"series": series, "x": temperatures, "y": rows["mean"], "yerr": rows["std"]})


def plot_quality_diversity(aggregated: pd.DataFrame, quality_metric: str, diversity_metric: str,
                           out_stem: str | Path, temperature_key: str | None = None,
                           series_key: str = "divergence") -> list[Path]:
    """GKD Fig. 5 style: quality (y) vs Self-BLEU (x) per method, one point per sampling temperature: from one
    job per temperature (`temperature_key`, an override), or from the ``temperature_<T>/...`` metrics every job
    wrote for several temperatures (`temperature_key=None`)."""
    if temperature_key is None:
        quality = _temperature_points(aggregated, quality_metric, series_key)
        diversity = _temperature_points(aggregated, diversity_metric, series_key)
    else:
        quality = _metric_points(aggregated, quality_metric, temperature_key, series_key)
        diversity = _metric_points(aggregated, diversity_metric, temperature_key, series_key)
    points = quality.merge(diversity, on=["series", "x"], suffixes=("", "_diversity"))
    points = pd.DataFrame({"series": points["series"], "x": points["y_diversity"], "y": points["y"],
                           "yerr": points["yerr"], "temperature": points["x"].map(lambda t: f"T={t:g}")})
    return plot_lines(points, out_stem, xlabel=f"{diversity_metric} (lower = more diverse)",
                      ylabel=quality_metric, title="quality vs diversity over temperatures",
                      label_column="temperature")


def plot_data_fraction(aggregated: pd.DataFrame, metric: str, out_stem: str | Path,
                       fraction_key: str = "pipeline.distill.data_fraction", series_key: str = "divergence") -> list[Path]:
    """GKD Fig. 4 style: ``metric`` vs the fraction of the training data the student is distilled on."""
    points = _metric_points(aggregated, metric, fraction_key, series_key)
    return plot_lines(points, out_stem, xlabel="training-data fraction used for distillation", ylabel=metric,
                      title=f"{metric} vs training data")


def plot_reward_tradeoff(aggregated: pd.DataFrame, reward_metric: str, quality_metric: str, out_stem: str | Path,
                         alpha_key: str = "pipeline.distill.rl.alpha", series_key: str = "divergence") -> list[Path]:
    """GKD Fig. 6 style: the reward (x) against distillation quality (y), one point per α of Eq. 5."""
    reward = _metric_points(aggregated, reward_metric, alpha_key, series_key)
    quality = _metric_points(aggregated, quality_metric, alpha_key, series_key)
    points = reward.merge(quality, on=["series", "x"], suffixes=("_reward", ""))
    points = pd.DataFrame({"series": points["series"], "x": points["y_reward"], "y": points["y"],
                           "yerr": points["yerr"], "alpha": points["x"].map(lambda a: f"α={a:g}")})
    return plot_lines(points, out_stem, xlabel=f"{reward_metric} (the reward)", ylabel=quality_metric,
                      title="reward vs distillation quality over α", label_column="alpha")
