"""Comparison tables (ours: mean ± std over seeds, beside the paper's number and the difference) as CSV,
Markdown and LaTeX, with the papers' claims checked below.

Best / second best per metric column are marked like the papers: bold / underline (``<u>`` in Markdown); a
column whose value is the same for every method carries no marks and says "constant".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fdistill.reporting.aggregate import BEST, SECOND, higher_is_better, rank_marks
from fdistill.reporting.io import atomic_write_text

EMPTY_CELL = "–"
LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "∅": r"$\emptyset$", "–": "--"}


@dataclass
class TableContext:
    """Header of a table: title, provenance lines (hardware, commit, command, fixed overrides…), warnings
    shown in bold above everything (a dirty tree, a setting that differs from the paper's), and the claim
    verdicts (:func:`fdistill.reporting.claims.evaluate_claims`) written below the table."""

    title: str
    provenance: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    claims: pd.DataFrame | None = None


def constant_metrics(marked: pd.DataFrame) -> set[str]:
    """Metrics whose value is the same for every method we ran (at least two): no information, no marks."""
    constant = set()
    for metric, group in marked.groupby("metric", sort=False):
        values = group.loc[group["n"] > 0, "mean"].dropna()
        if len(values) > 1 and values.max() - values.min() <= 1e-12 * max(1.0, abs(values.max())):
            constant.add(metric)
    return constant


def add_marks(joined: pd.DataFrame, lower_is_better: Iterable[str] = ()) -> pd.DataFrame:
    """Add ``higher_is_better``, ``mark_ours`` and ``mark_paper`` (best/second within each metric; none for
    our constant columns)."""
    marked = joined.copy()
    extra = tuple(lower_is_better)
    marked["higher_is_better"] = marked["metric"].map(lambda metric: higher_is_better(metric, extra))
    constant = constant_metrics(marked)
    for column, mark_column in (("mean", "mark_ours"), ("paper_value", "mark_paper")):
        marked[mark_column] = ""
        for metric, group in marked.groupby("metric", sort=False):
            if column == "mean" and metric in constant:
                continue
            marked.loc[group.index, mark_column] = rank_marks(group[column], bool(group["higher_is_better"].iloc[0]))
    return marked


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def ours_cell(row: pd.Series, digits: int) -> str:
    """``mean ± std (n=k)``; ``unavailable`` when no seed produced a number; ``–`` when not run."""
    if row["n"] == 0:
        return "unavailable" if row["unavailable"] else EMPTY_CELL
    spread = f" ± {_number(row['std'], digits)}" if not math.isnan(row["std"]) else ""
    return f"{_number(row['mean'], digits)}{spread} (n={row['n']})"


def paper_cell(row: pd.Series, digits: int) -> str:
    """The published value in fdistill's scale (± its std where the paper gives one), ``–`` when absent."""
    if not row["paper_source"]:
        return EMPTY_CELL
    std = row.get("paper_std", float("nan"))
    spread = f" ± {_number(std, digits)}" if isinstance(std, float) and not math.isnan(std) else ""
    return _number(row["paper_value"], digits) + spread


def difference_cell(row: pd.Series, digits: int) -> str:
    value = row.get("difference", float("nan"))
    return EMPTY_CELL if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def wide_cells(marked: pd.DataFrame, metrics: Sequence[str] | None, digits: int):
    """``(methods, columns, cells)`` where cells[(method, column)] = (text, mark) and columns carry direction."""
    chosen = list(metrics) if metrics else _ordered(marked["metric"])
    unknown = [metric for metric in chosen if metric not in set(marked["metric"])]
    if unknown:
        raise ValueError(f"metrics {unknown} not found; available: {sorted(set(marked['metric']))}")
    rows = marked[marked["metric"].isin(chosen)]
    ours = set(rows.loc[(rows["n"] > 0) | (rows["unavailable"] != ""), "method"])
    methods = sorted(_ordered(rows["method"]), key=lambda method: method not in ours)  # ours first, stable
    constant = constant_metrics(rows)
    columns, cells = [], {}
    for metric in chosen:
        group = rows[rows["metric"] == metric]
        arrow = "↑" if bool(group["higher_is_better"].iloc[0]) else "↓"
        has_paper = bool((group["paper_source"] != "").any())
        ours_name = f"{metric} {arrow} (ours{', constant across methods' if metric in constant else ''})"
        metric_columns = [(ours_name, "ours")]
        if has_paper:
            metric_columns += [(f"{metric} (paper)", "paper"), (f"{metric} (ours − paper)", "difference")]
        columns += [name for name, _ in metric_columns]
        for _, row in group.iterrows():
            for name, side in metric_columns:
                if side == "ours":
                    cells[(row["method"], name)] = (ours_cell(row, digits), row["mark_ours"])
                elif side == "paper":
                    cells[(row["method"], name)] = (paper_cell(row, digits), row["mark_paper"])
                else:
                    cells[(row["method"], name)] = (difference_cell(row, digits), "")
    return methods, columns, cells


def footnotes(marked: pd.DataFrame) -> list[str]:
    """Sources of the paper numbers and reasons for unavailable metrics."""
    notes = [f"Paper values: {source}" for source in _ordered(marked.loc[marked["paper_source"] != "", "paper_source"])]
    unavailable = marked[marked["unavailable"] != ""]
    notes += [f"unavailable: {row['method']} / {row['metric']}: {row['unavailable']}" for _, row in unavailable.iterrows()]
    return notes


def render_markdown(marked: pd.DataFrame, context: TableContext, metrics: Sequence[str] | None = None,
                    digits: int = 2) -> str:
    """GitHub Markdown: best **bold**, second <u>underlined</u>; provenance above, notes below."""
    from fdistill.reporting.claims import claims_markdown

    methods, columns, cells = wide_cells(marked, metrics, digits)
    style = {BEST: "**{}**", SECOND: "<u>{}</u>", "": "{}"}
    lines = [f"# {context.title}", "", *[f"**{warning}**\n" for warning in context.warnings],
             *[f"- {line}" for line in context.provenance], "",
             "Ours: mean ± sample std over seeds (n = number of seeds). Paper: the published value in fdistill's "
             "scale (ROUGE, METEOR, BERTScore, MoverScore, BLEURT are printed ×100 in the papers), ± its std where "
             "given. Bold = best, underline = second best within a column (↑ higher is better, ↓ lower is better).",
             "", "| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for method in methods:
        rendered = [style[mark].format(text) if text not in (EMPTY_CELL,) else text
                    for text, mark in (cells.get((method, column), (EMPTY_CELL, "")) for column in columns)]
        lines.append(f"| {method} | " + " | ".join(rendered) + " |")
    notes = footnotes(marked)
    lines += ([""] + [f"- {note}" for note in notes] if notes else []) + [""]
    if context.claims is not None:
        lines += claims_markdown(context.claims)
    return "\n".join(lines)


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters (and map ±, arrows) in plain text."""
    return "".join(LATEX_SPECIALS.get(char, char) for char in str(text))


def render_latex(marked: pd.DataFrame, context: TableContext, metrics: Sequence[str] | None = None,
                 digits: int = 2) -> str:
    """A booktabs ``table`` with \\textbf (best) / \\underline (second); provenance as % comments."""
    methods, columns, cells = wide_cells(marked, metrics, digits)
    style = {BEST: r"\textbf{{{}}}", SECOND: r"\underline{{{}}}", "": "{}"}
    lines = [f"% {line}" for line in [*context.warnings, *context.provenance]] + [
        r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
        r"\begin{tabular}{l" + "r" * len(columns) + "}", r"\toprule",
        " & ".join(["Method", *map(latex_escape, columns)]) + r" \\", r"\midrule"]
    for method in methods:
        rendered = [style[mark].format(latex_escape(text))
                    for text, mark in (cells.get((method, column), (EMPTY_CELL, "")) for column in columns)]
        lines.append(" & ".join([latex_escape(method), *rendered]) + r" \\")
    caption = " ".join([context.title + ". Ours: mean $\\pm$ std over seeds (n).",
                        *[latex_escape(note) + "." for note in footnotes(marked)]])
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}", ""]
    return "\n".join(lines)


CSV_COLUMNS = ["method", "metric", "higher_is_better", "mean", "std", "n", "unavailable", "mark_ours",
               "paper_value", "paper_std", "paper_printed", "mark_paper", "difference", "paper_source"]


def write_tables(marked: pd.DataFrame, out_stem: str | Path, context: TableContext,
                 metrics: Sequence[str] | None = None, digits: int = 2) -> list[Path]:
    """Write ``<out_stem>.csv`` (long, machine-readable), ``.md`` and ``.tex`` atomically."""
    stem = Path(out_stem)
    config_columns = [column for column in marked.columns if column not in CSV_COLUMNS]
    chosen = marked if not metrics else marked[marked["metric"].isin(metrics)]
    csv_header = "".join(f"# {line}\n" for line in [context.title, *context.warnings, *context.provenance])
    written = [
        atomic_write_text(stem.with_name(stem.name + ".csv"),
                          csv_header + chosen[CSV_COLUMNS + config_columns].to_csv(index=False)),
        atomic_write_text(stem.with_name(stem.name + ".md"), render_markdown(marked, context, metrics, digits)),
        atomic_write_text(stem.with_name(stem.name + ".tex"), render_latex(marked, context, metrics, digits)),
    ]
    if context.claims is not None and not context.claims.empty:
        written.append(atomic_write_text(stem.with_name(stem.name + "_claims.csv"),
                                         csv_header + context.claims.to_csv(index=False)))
    return written


def frame_to_markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    """A plain GitHub Markdown table of ``frame`` (floats with ``digits`` decimals), for reports and toys."""
    def cell(value) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
