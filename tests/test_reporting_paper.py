"""The committed paper CSVs load, and every transcribed number says where it was read."""

from __future__ import annotations

from pathlib import Path

import pytest

from fdistill.reporting import load_paper_csv

PAPER_CSVS = sorted((Path(__file__).resolve().parents[1] / "results" / "paper").glob("*.csv"))


@pytest.mark.parametrize("path", PAPER_CSVS, ids=lambda path: path.name)
def test_paper_csv_values_have_a_source(path):
    frame = load_paper_csv(path)
    assert not frame.empty
    transcribed = frame[frame["value"].notna()]
    assert (transcribed["source"].str.strip() != "").all(), f"{path.name}: a number without its source"
    assert frame["paper"].str.strip().ne("").all() and frame["table"].str.strip().ne("").all()


def test_not_transcribed_is_the_only_non_number(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("paper,table,dataset,method,metric,value,source\nP,T1,D,M,BLEU,about 40,somewhere\n")
    with pytest.raises(ValueError):
        load_paper_csv(path)
