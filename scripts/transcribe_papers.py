"""Transcribe the papers' published numbers from ``../shared/papers/*.md`` into ``results/paper/*.csv``.

One CSV per paper table, columns ``paper,table,dataset,pair,method,metric,value,std,mark,source``: values
as printed (the paper's scale; ``fdistill.reporting.paper_names.SCALES`` converts), ``std`` where the paper
gives ±, ``mark`` best / second (bold / underline in the paper), names mapped to fdistill's config and
metric names by ``fdistill.reporting.paper_names`` (the one mapping), ``source`` naming the shared file
and table. GKD states its numbers in text and captions, so its rows are listed here, each with the line
it comes from. The default suite checks that every value appears in its source file and that re-running
this script reproduces the committed CSVs.

    python scripts/transcribe_papers.py --papers ../shared/papers --out results/paper
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fdistill.reporting.io import atomic_write_text
from fdistill.reporting.paper_names import DATASETS, METHODS, METRICS, PAIRS

COLUMNS = ["paper", "table", "dataset", "pair", "method", "metric", "value", "std", "mark", "source"]
FDISTILL, GKD, AKL = "fdistill_wen2023.md", "gkd_agarwal2024.md", "akl_wu2024.md"
TUTORIAL = "kd_tutorial_wen2026.md"
PAPER_NAMES = {FDISTILL: "f-DISTILL", GKD: "GKD", AKL: "AKL", TUTORIAL: "KD tutorial"}
# the tutorial's multi-teacher tables have section titles, no numbers: (title in the file, CSV name)
TUTORIAL_TABLES = {"Zero-shot translation ensembles": "kd_tutorial_ensembles",
                   "Distillation from the ensemble": "kd_tutorial_ensemble_distillation"}


@dataclass
class MarkdownTable:
    heading: str                      # the "## Table N — ..." heading above it
    preface: list[str]                # non-table lines between the heading (or the previous table) and it
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


def markdown_tables(text: str) -> Iterator[MarkdownTable]:
    heading, preface, table = "", [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [cell.strip() for cell in stripped.strip("|").split("|")]
            if table is None:
                table = MarkdownTable(heading, preface, cells)
            elif not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                table.rows.append(cells)
            continue
        if table is not None:
            yield table
            table, preface = None, []
        if stripped.startswith("## "):
            heading, preface = stripped[3:], []
        elif stripped:
            preface.append(stripped)
    if table is not None:
        yield table


def table_id(heading: str) -> str:
    match = re.match(r"(Table \w+)", heading)
    if not match:
        raise ValueError(f"heading {heading!r} names no table")
    return match.group(1)


def cell_value(cell: str) -> tuple[str, str, str] | None:
    """(value, std, mark) as printed, or None for an empty or non-numeric cell."""
    mark = "best" if cell.startswith("**") else "second" if cell.startswith("_") else ""
    plain = cell.strip("*_ ").replace(",", "")
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*(?:±\s*(\d+(?:\.\d+)?))?\s*(?:×|G|min)?", plain)
    if not match:
        return None
    return match.group(1), match.group(2) or "", mark


def clean_header(text: str) -> str:
    return re.sub(r"\s*[↑↓]\s*$", "", text).strip()


class Transcriber:
    def __init__(self, papers: Path) -> None:
        self.papers = papers
        self.tables: dict[str, list[dict]] = {}

    def add(self, file: str, table: str, csv_name: str | None = None, **row) -> None:
        slug = table.lower().replace("table ", "table").replace(".", "").replace(" ", "_")
        name = csv_name or f"{file.split('_')[0]}_{slug}"
        self.tables.setdefault(name, []).append({
            "paper": PAPER_NAMES[file], "table": table, "std": "", "mark": "", **row,
            "source": f"shared/papers/{file}, {table}"})

    def grid(self, file: str, table: MarkdownTable, column_key) -> None:
        """Every numeric cell of a method × column table; `column_key(index, header)` → (dataset, pair, metric)."""
        name = table_id(table.heading)
        methods = METHODS.get(PAPER_NAMES[file], {})
        for cells in table.rows:
            label = cells[0]
            for index, cell in enumerate(cells[1:]):
                parsed = cell_value(cell)
                if parsed is None:
                    continue
                dataset, pair, metric = column_key(index, table.header[index + 1])
                if label == "TeacherDist":  # a property of the teacher's samples, in the R_llh column
                    method, metric = "teacher", METRICS["TeacherDist"]
                else:
                    method = methods[label]
                value, std, mark = parsed
                self.add(file, name, dataset=dataset, pair=pair, method=method, metric=metric, value=value,
                         std=std, mark=mark)

    def fdistill(self) -> None:
        for table in markdown_tables((self.papers / FDISTILL).read_text(encoding="utf-8")):
            name = table_id(table.heading)
            if name in ("Table 2", "Table 3"):
                self.grid(FDISTILL, table, self._dataset_columns(table))
            elif name in ("Table 4", "Table 5"):
                self.grid(FDISTILL, table, lambda index, header: ("dart", PAIRS["f-DISTILL", "dart"],
                                                                    METRICS[clean_header(header)]))
            elif name == "Table 6":
                keys = {"train": "num_train", "dev": "num_validation", "test": "num_test"}
                for cells in table.rows:
                    dataset = DATASETS[cells[0]]
                    for header, cell in zip(table.header[2:], cells[2:], strict=True):
                        self.add(FDISTILL, name, dataset=dataset, pair=PAIRS["f-DISTILL", dataset],
                                 method="dataset", metric=keys[header], value=cell_value(cell)[0])

    def _dataset_columns(self, table: MarkdownTable):
        """Headers like "XSum ROUGE-1" (dataset first), or a metric alone under a "DART:" preface."""
        preface_dataset = next((DATASETS[line.rstrip(":")] for line in table.preface if line.rstrip(":") in DATASETS),
                               None)

        def key(index: int, header: str) -> tuple[str, str, str]:
            text = clean_header(header)
            for prefix in sorted(DATASETS, key=len, reverse=True):
                if text.startswith(prefix + " "):
                    dataset = DATASETS[prefix]
                    return dataset, PAIRS["f-DISTILL", dataset], METRICS[text[len(prefix) + 1:]]
            return preface_dataset, PAIRS["f-DISTILL", preface_dataset], METRICS[text]

        return key

    def akl(self) -> None:
        metric_of = {"Table 1": "rougeL", "Table 4": "rougeL", "Table 5": "bertscore", "Table 6": "rougeL"}
        pair_of = {"Table 4": "GPT2 1.5B → 120M", "Table 5": "LLaMA 6.7B → TinyLLaMA 1.1B",
                   "Table 6": "LLaMA 6.7B → TinyLLaMA 1.1B", "Table 2": "LLaMA 6.7B → TinyLLaMA 1.1B",
                   "Table 7": "LLaMA 6.7B → TinyLLaMA 1.1B", "Table 8": "LLaMA 6.7B → TinyLLaMA 1.1B"}
        for table in markdown_tables((self.papers / AKL).read_text(encoding="utf-8")):
            name = table_id(table.heading)
            if name == "Table 1":
                self.grid(AKL, table, self._akl_pair_columns(table))
            elif name in ("Table 4", "Table 5", "Table 6"):
                pair = PAIRS["AKL", pair_of[name]]
                self.grid(AKL, table, lambda index, header, pair=pair, metric=metric_of[name]: (
                    DATASETS[header], pair, metric))
            elif name == "Table 2":
                pair = PAIRS["AKL", pair_of[name]]
                self.grid(AKL, table, lambda index, header, pair=pair: ("dolly", pair, METRICS[header]))
            elif name == "Table 7":
                pair = PAIRS["AKL", pair_of[name]]
                self.grid(AKL, table, lambda index, header, pair=pair: (header.lower(), pair, "accuracy"))
            elif name == "Table 8":
                pair = PAIRS["AKL", pair_of[name]]
                self.grid(AKL, table, lambda index, header, pair=pair: (
                    "dolly", pair, "rougeL/" + re.sub(r"\W+", "_", header.lower())))

    def _akl_pair_columns(self, table: MarkdownTable):
        """Table 1 headers: "GPT2 1.5B → 120M Dolly (500)", "S-NI (1694)", ...: a pair opens a column group."""
        keys, pair = [], None
        for header in table.header[1:]:
            text = re.sub(r"\s*\(\d+\)$", "", header)
            for label in (label for (paper, label) in PAIRS if paper == "AKL"):
                if text.startswith(label + " "):
                    pair, text = PAIRS["AKL", label], text[len(label) + 1:]
            keys.append((DATASETS[text], pair, "rougeL"))
        return lambda index, header: keys[index]

    def gkd(self) -> None:
        text = (self.papers / GKD).read_text(encoding="utf-8")
        for table, rows in GKD_ROWS.items():
            for dataset, pair, method, metric, value, quote in rows:
                if quote not in text:
                    raise ValueError(f"{GKD}: the quoted line {quote!r} of {metric}={value} is not in the file")
                self.add(GKD, table, dataset=dataset, pair=pair, method=method, metric=metric, value=value)

    def tutorial(self) -> None:
        """The KD tutorial's multi-teacher tables (BLEU only: its BLEU1-4 columns are n-gram precisions)."""
        methods = METHODS[PAPER_NAMES[TUTORIAL]]
        for table in markdown_tables((self.papers / TUTORIAL).read_text(encoding="utf-8")):
            title = next((title for title in TUTORIAL_TABLES if any(title in line for line in table.preface)), None)
            if title is None:
                continue
            for cells in table.rows:
                row = dict(zip(table.header, cells, strict=True))
                if title == "Zero-shot translation ensembles":  # average BLEU over the zero-shot directions
                    values = [(f"{data.lower()}_zero_shot", row[f"{data} avg"]) for data in ("IWSLT", "Europarl")]
                else:  # Italian -> Dutch
                    values = [(f"{row['data'].lower()}_it_nl", row["BLEU"])]
                for dataset, cell in values:
                    value, std, mark = cell_value(cell)
                    self.add(TUTORIAL, title, csv_name=TUTORIAL_TABLES[title], dataset=dataset, pair="zero_shot_nmt",
                             method=methods[row["method"]], metric="bleu", value=value, std=std, mark=mark)

    def write(self, out: Path) -> list[Path]:
        written = []
        for name, rows in sorted(self.tables.items()):
            paper, table = rows[0]["paper"], rows[0]["table"]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            header = (f"# {paper}, {table}: transcribed by scripts/transcribe_papers.py from {rows[0]['source']}.\n"
                      "# Values as printed in the paper (fdistill.reporting.paper_names.SCALES maps them to fdistill's "
                      "scale); names are fdistill's (paper_names).\n")
            written.append(atomic_write_text(out / f"{name}.csv", header + buffer.getvalue()))
        return written


# GKD reports figures; these are the numbers its text, captions and hyper-parameter tables state, each with
# the line of shared/papers/gkd_agarwal2024.md it comes from: (dataset, pair, method, metric, value, quote).
_XSUM, _GSM, _WMT, _FLAN = "T5-XL teacher, XSum", "GSM8K", "WMT en-de", "FLAN"


def _schedule(dataset, pair, steps, batch, dropout, lr, warmup, quote_steps, quote_rest, cooldown=None,
              lengths=None, teacher_temperatures=()):
    rows = [(dataset, pair, "gkd", "training_steps", steps, quote_steps),
            (dataset, pair, "gkd", "batch_size", batch, quote_rest), (dataset, pair, "gkd", "dropout", dropout, quote_rest),
            (dataset, pair, "gkd", "learning_rate", lr, quote_rest), (dataset, pair, "gkd", "warmup_steps", warmup, quote_rest)]
    if cooldown:
        rows += [(dataset, pair, "gkd", "cooldown_start_step", cooldown[0], quote_rest),
                 (dataset, pair, "gkd", "cooldown_end_step", cooldown[1], quote_rest)]
    if lengths:
        rows += [(dataset, pair, "gkd", "max_input_length", lengths[0], quote_rest),
                 (dataset, pair, "gkd", "max_output_length", lengths[1], quote_rest)]
    rows += [(dataset, pair, "gkd", metric, value, quote_rest) for metric, value in teacher_temperatures]
    return rows


GKD_ROWS = {
    "Stated results": [
        ("xsum", "t5_xsum", "teacher", "rouge2", "22", "XSum, greedy decoding: teacher ROUGE-2 | 22"),
        ("xsum", "t5_xsum", "sft_student", "rouge2", "13.4", "T5-small 13.4, T5-base 17.9, T5-large 19.6"),
        ("xsum", "t5xl_t5base", "sft_student", "rouge2", "17.9", "T5-small 13.4, T5-base 17.9, T5-large 19.6"),
        ("xsum", "t5xl_t5large", "sft_student", "rouge2", "19.6", "T5-small 13.4, T5-base 17.9, T5-large 19.6"),
        ("xsum", "t5_xsum", "gkd", "data_fraction_percent", "5",
         "on-policy GKD on 5% of the data beats supervised KD and ImitKD on all of it"),
        ("wmt_en_de", "t5xl_t5small", "teacher", "bleu", "28", "WMT en→de (Fig. 7): teacher T5-XL BLEU | 28"),
        ("wmt_en_de", "t5xl_t5small", "sft_student", "bleu", "25.58", "T5-small 25.58, T5-base 26.98"),
        ("wmt_en_de", "t5xl_t5base", "sft_student", "bleu", "26.98", "T5-small 25.58, T5-base 26.98"),
        ("gsm8k", "t5xl_t5base", "teacher", "accuracy", "27.9", "GSM8K: teacher T5-XL accuracy | 27.9"),
        ("gsm8k", "t5xl_t5base", "sft_student", "accuracy", "10.16", "T5-base student 10.16 in Fig. 8"),
        ("gsm8k", "t5xl_t5small", "sft_student", "accuracy_4shot_cot", "4.585", "T5-small 4.585, T5-base 20.5"),
        ("gsm8k", "t5xl_t5base", "sft_student", "accuracy_4shot_cot", "20.5", "T5-small 4.585, T5-base 20.5"),
        ("gsm8k", "t5xl_t5base", "gkd", "on_policy_fraction_percent_above_which_it_improves", "25",
         "performance improves as the on-policy fraction grows beyond 25%"),
        ("mmlu", "flan_t5xl", "teacher", "accuracy", "52.4", "teacher FLAN T5-XL | 52.4% MMLU, 41% BBH"),
        ("bbh", "flan_t5xl", "teacher", "accuracy", "41", "teacher FLAN T5-XL | 52.4% MMLU, 41% BBH"),
        ("xsum", "t5_xsum", "gkd", "relative_gain_over_baseline_kd", "2.1", "2.1× (summarisation)"),
        ("wmt_en_de", "t5xl_t5small", "gkd", "relative_gain_over_baseline_kd", "1.7", "1.7× (translation)"),
        ("gsm8k", "t5xl_t5base", "gkd", "relative_gain_over_baseline_kd", "1.9", "1.9× (arithmetic reasoning)"),
        ("xsum", "t5xl_t5base", "gkd", "best_learning_rate", "3e-4", "3e-4 best for T5-base/large, 1e-3 for T5-small"),
        ("xsum", "t5xl_t5large", "gkd", "best_learning_rate", "3e-4", "3e-4 best for T5-base/large, 1e-3 for T5-small"),
        ("xsum", "t5_xsum", "gkd", "best_learning_rate", "1e-3", "3e-4 best for T5-base/large, 1e-3 for T5-small"),
        ("xsum", "t5_xsum", "rkl", "best_learning_rate", "3e-4", "reverse KL\nuses 3e-4 everywhere"),
        ("xsum", "t5_xsum", "gkd", "student_sampling_temperature", "1", "Student sampling temperature during training: 1"),
    ],
    "Table A.1": _schedule("xsum", "t5_xsum", "40000", "32", "0.0", "0.0003", "2000", "| training steps | 40,000 |",
                           "## Table A.1 — XSum", cooldown=("30000", "40000"), lengths=("1024", "64"),
                           teacher_temperatures=[("teacher_temperature_greedy_eval", "1"),
                                                 ("teacher_temperature_sampling_eval", "0.1")]),
    "Table A.2": _schedule("gsm8k", "t5xl_t5base", "40000", "32", "0.05", "0.0003", "2000",
                           "Training steps 40,000; batch 32; test split; dropout 0.05",
                           "LR 0.0003, 2,000 warm-up steps, cool-down", cooldown=("30000", "40000"),
                           lengths=("512", "320"), teacher_temperatures=[("teacher_temperature", "0.1")]),
    "Table A.3": _schedule("wmt_en_de", "t5xl_t5small", "100000", "32", "0.0", "0.0003", "5000",
                           "Training steps 100,000; batch 32", "5,000 linear warm-up steps; LR 0.0003",
                           lengths=("80", "80"), teacher_temperatures=[("teacher_temperature", "1.0")]),
    "Table A.4": _schedule("flan", "flan_t5xl", "50000", "128", "0.0", "0.0001", "0",
                           "Training steps 50,000; batch 128", "no warm-up; LR 0.0001",
                           lengths=("2048", "256"), teacher_temperatures=[("teacher_temperature", "1.0")]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--papers", default="../shared/papers", type=Path)
    parser.add_argument("--out", default="results/paper", type=Path)
    args = parser.parse_args()
    transcriber = Transcriber(args.papers)
    transcriber.fdistill()
    transcriber.akl()
    transcriber.gkd()
    transcriber.tutorial()
    for path in transcriber.write(args.out):
        print(path)


if __name__ == "__main__":
    main()
