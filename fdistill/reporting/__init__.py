"""Aggregation of Hydra multirun results into paper-style tables and figures.

Typical use (see :mod:`fdistill.reporting.__main__` for the CLI)::

    jobs, missing = collect_jobs("multirun/2026-01-01/12-00-00")
    aggregated, fixed = aggregate_over_seeds(jobs, seed_key="seed", method_key="divergence")
    joined = join_paper(aggregated, load_paper_csv("results/paper/fdistill.csv", dataset="DART"))
    write_tables(add_marks(joined), "results/fdistill/table2_dart", TableContext("f-DISTILL Table 2, DART"))
"""

from fdistill.reporting.aggregate import aggregate_over_seeds, higher_is_better, rank_marks
from fdistill.reporting.collect import JobResult, collect_jobs
from fdistill.reporting.figures import plot_lambda_grid, plot_lines, plot_quality_diversity, plot_student_size
from fdistill.reporting.io import atomic_write_text, save_figure
from fdistill.reporting.paper import join_paper, load_paper_csv
from fdistill.reporting.tables import TableContext, add_marks, frame_to_markdown, write_tables

__all__ = [
    "JobResult", "TableContext", "add_marks", "aggregate_over_seeds", "atomic_write_text", "collect_jobs",
    "frame_to_markdown",
    "higher_is_better", "join_paper", "load_paper_csv", "plot_lambda_grid", "plot_lines",
    "plot_quality_diversity", "plot_student_size", "rank_marks", "save_figure", "write_tables",
]
