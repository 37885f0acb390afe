"""Dataset adapters on the real release files (../shared/data) and on small files in the release
schemas: paper counts, source/reference construction, split derivation, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fdistill.data import (
    DataError,
    Example,
    MissingDataFileError,
    available_datasets,
    load_examples,
    load_from_config,
    training_pairs,
)
from fdistill.data.base import ADAPTERS
from fdistill.data.dart import DartAdapter

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "dataset"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ----- DART ---------------------------------------------------------------------------------
def test_dart_dev_matches_paper_counts_and_keeps_all_references(shared_data):
    examples = load_examples("dart", "validation", data_dir=shared_data / "dart")
    assert len(examples) == 2768  # f-DISTILL Table 6, one example per triple set
    assert sum(len(example.references) for example in examples) == 6980
    assert len(training_pairs(examples)) == 6980  # one training pair per reference
    assert len({example.id for example in examples}) == len(examples)
    first = examples[0]
    assert first.source == "(Mars Hill College, JOINED, 1973), (Mars Hill College, LOCATION, Mars Hill, North Carolina)"
    assert first.references == ("A school from Mars Hill, North Carolina, joined in 1973.",)
    assert first.meta["annotation_sources"] == ["WikiSQL_decl_sents"]


def test_dart_release_split_name_dev_is_validation(shared_data):
    via_alias = load_examples("dart", "dev", data_dir=shared_data / "dart", limit=3)
    assert via_alias == load_examples("dart", "validation", data_dir=shared_data / "dart", limit=3)


def test_dart_hub_column_layout_gives_the_same_example():
    release_row = {"tripleset": [["A", "rel", "B"]], "annotations": [{"source": "e2e", "text": "A rel B."},
                                                                       {"source": "e2e", "text": "B is A's rel."}]}
    hub_row = {"tripleset": [["A", "rel", "B"]], "subtree_was_extended": None,
               "annotations": {"source": ["e2e", "e2e"], "text": ["A rel B.", "B is A's rel."]}}
    adapter = DartAdapter()
    assert list(adapter.convert(hub_row, 0, "hub", "train")) == list(adapter.convert(release_row, 0, "file", "train"))


def test_dart_missing_split_file_names_the_expected_file(shared_data):
    with pytest.raises(MissingDataFileError, match="dart-v1.1.1-full-train.json"):
        load_examples("dart", "train", data_dir=shared_data / "dart")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"annotations": [{"text": "x"}]}, "missing field 'tripleset'"),
        ({"tripleset": [["a", "b"]], "annotations": [{"text": "x"}]}, r"'tripleset' entry 0 must be \[subject, relation, object\]"),
        ({"tripleset": [["a", "b", "c"]], "annotations": []}, "'annotations' is empty"),
        ({"tripleset": [["a", "b", "c"]], "annotations": [{"source": "e2e"}]}, "annotation 0: missing field 'text'"),
    ],
)
def test_dart_schema_errors_name_file_record_and_field(tmp_path, row, message):
    path = tmp_path / "dart-v1.1.1-full-test.json"
    path.write_text(json.dumps([{"tripleset": [["a", "b", "c"]], "annotations": [{"text": "ok"}]}, row]))
    with pytest.raises(DataError, match=message) as error:
        load_examples("dart", "test", data_dir=tmp_path)
    assert f"{path} record 1" in str(error.value)


def test_invalid_json_is_reported_with_the_file(tmp_path):
    (tmp_path / "dart-v1.1.1-full-test.json").write_text('[{"tripleset": ')
    with pytest.raises(DataError, match="dart-v1.1.1-full-test.json: not valid JSON"):
        load_examples("dart", "test", data_dir=tmp_path)


def test_invalid_json_line_and_encoding_are_reported_with_file_and_line(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"document": "d", "summary": "s", "id": 1}\n{"document": \n')
    with pytest.raises(DataError, match="test.jsonl:2: not a valid JSON line"):
        load_examples("xsum", "test", data_dir=tmp_path)
    (tmp_path / "test.source").write_bytes(b"caf\xe9\n")
    (tmp_path / "test.target").write_text("x\n")
    with pytest.raises(DataError, match="test.source: not valid UTF-8"):
        load_examples("wmt16_en_ro", "test", data_dir=tmp_path)


def test_data_dir_pointing_at_a_file_says_so(shared_data):
    with pytest.raises(MissingDataFileError, match="it is a file, not a folder"):
        load_examples("dart", "validation", data_dir=shared_data / "dart" / "dart-v1.1.1-full-dev.json")


# ----- Commonsense-Dialogues ------------------------------------------------------------------
def test_commonsense_dialogue_valid_one_example_per_turn(shared_data):
    examples = load_examples("commonsense_dialogue", "valid", data_dir=shared_data / "commonsense_dialogues")
    assert len(examples) == 6619  # f-DISTILL Table 6
    dialogue = json.loads((shared_data / "commonsense_dialogues" / "valid.json").read_text())["1"]
    first_dialogue = [example for example in examples if example.meta["dialogue_id"] == "1"]
    assert [example.references for example in first_dialogue] == [(turn,) for turn in dialogue["turns"]]
    assert first_dialogue[0].source == dialogue["context"]  # first turn from the context alone
    assert first_dialogue[2].source == "\n".join([dialogue["context"], *dialogue["turns"][:2]])
    assert len({example.id for example in examples}) == len(examples)


def test_commonsense_dialogue_turn_separator_parameter(tmp_path):
    (tmp_path / "test.json").write_text(json.dumps({"7": {"context": "C.", "speaker": "Ann", "turns": ["t0", "t1", "t2"]}}))
    examples = load_examples("commonsense_dialogue", "test", data_dir=tmp_path, turn_separator=" <|endoftext|> ")
    assert [example.source for example in examples] == ["C.", "C. <|endoftext|> t0", "C. <|endoftext|> t0 <|endoftext|> t1"]
    assert [example.id for example in examples] == ["cd-7-0", "cd-7-1", "cd-7-2"]


def test_commonsense_dialogue_wrong_top_level_type(tmp_path):
    (tmp_path / "valid.json").write_text(json.dumps([{"context": "c", "speaker": "s", "turns": ["t"]}]))
    with pytest.raises(DataError, match=r"valid.json: expected a JSON object dialogue_id -> \{context, speaker, turns\}"):
        load_examples("commonsense_dialogue", "validation", data_dir=tmp_path)


def test_commonsense_dialogue_missing_turns_field(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps({"d1": {"context": "c", "speaker": "s"}}))
    with pytest.raises(DataError, match=r"train.json record 0 \(dialogue 'd1'\): missing field 'turns'"):
        load_examples("commonsense_dialogue", "train", data_dir=tmp_path)


# ----- XSum -------------------------------------------------------------------------------------
def test_xsum_jsonl_layout_on_real_test_documents(shared_data, tmp_path):
    (tmp_path / "test.jsonl").symlink_to(shared_data / "xsum" / "xsum_test_sample_1000.jsonl")
    examples = load_examples("xsum", "test", data_dir=tmp_path)
    assert len(examples) == 1000
    first_row = json.loads((shared_data / "xsum" / "xsum_test_sample_1000.jsonl").open().readline())
    assert examples[0] == Example(id=f"xsum-{first_row['id']}", source=first_row["document"],
                                  references=(first_row["summary"],), meta={"bbc_id": str(first_row["id"])})


def test_empty_split_file_is_an_error(tmp_path):
    (tmp_path / "validation.jsonl").write_text("\n")
    with pytest.raises(DataError, match="split 'validation' of dataset 'xsum' has no examples"):
        load_examples("xsum", "validation", data_dir=tmp_path)


def test_xsum_wrong_field_type(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"document": "d", "summary": ["s"], "id": 1}])
    with pytest.raises(DataError, match="record 0: field 'summary' must be str, got list"):
        load_examples("xsum", "train", data_dir=tmp_path)


# ----- WMT16 en-ro ----------------------------------------------------------------------------
def test_wmt16_source_target_layout_on_real_files(shared_data):
    sizes = {split: len(load_examples("wmt16_en_ro", split, data_dir=shared_data / "wmt16_en_ro"))
             for split in ("train", "validation", "test")}
    assert sizes == {"train": 11, "validation": 16, "test": 20}  # last line of val/test has no newline
    example = load_examples("wmt16_en_ro", "val", data_dir=shared_data / "wmt16_en_ro", limit=1)[0]
    assert example.source.startswith("Brazil's Former Presidential Chief-of-Staff to Stand Trial")
    assert example.references[0].startswith("Fostul șef al cabinetului prezidențial brazilian")


def write_parallel(folder: Path, stem: str, num_pairs: int) -> None:
    (folder / f"{stem}.source").write_text("".join(f"english {i}\n" for i in range(num_pairs)))
    (folder / f"{stem}.target").write_text("".join(f"romana {i}\n" for i in range(num_pairs)))


def test_wmt16_train_subsample_is_seeded_aligned_and_in_file_order(tmp_path):
    write_parallel(tmp_path, "train", 200)
    first = load_examples("wmt16_en_ro", "train", data_dir=tmp_path, train_size=20, seed=3)
    again = load_examples("wmt16_en_ro", "train", data_dir=tmp_path, train_size=20, seed=3)
    other_seed = load_examples("wmt16_en_ro", "train", data_dir=tmp_path, train_size=20, seed=4)
    assert first == again and first != other_seed
    lines = [example.meta["row"] for example in first]
    assert len(set(lines)) == 20 and lines == sorted(lines)
    assert all(example.source == f"english {row}" and example.references == (f"romana {row}",)
               for example, row in zip(first, lines, strict=True))
    assert len(load_examples("wmt16_en_ro", "train", data_dir=tmp_path, train_size=None)) == 200


def test_wmt16_subsample_applies_to_train_only(tmp_path):
    write_parallel(tmp_path, "test", 50)
    assert len(load_examples("wmt16_en_ro", "test", data_dir=tmp_path, train_size=10)) == 50


def test_wmt16_misaligned_files(tmp_path):
    (tmp_path / "val.source").write_text("a\nb\nc\n")
    (tmp_path / "val.target").write_text("x\ny\n")
    with pytest.raises(DataError, match=r"val.source has 3 lines but .*val.target has 2"):
        load_examples("wmt16_en_ro", "validation", data_dir=tmp_path)


# ----- Dolly ------------------------------------------------------------------------------------
def dolly_rows(count: int) -> list[dict]:
    return [{"instruction": f"Question {i}?", "context": f"Passage {i}." if i % 3 == 0 else "",
             "response": f"Answer {i}.", "category": "open_qa" if i % 3 else "closed_qa"} for i in range(count)]


def test_dolly_seeded_split_is_a_partition(tmp_path):
    write_jsonl(tmp_path / "databricks-dolly-15k.jsonl", dolly_rows(40))
    params = {"data_dir": tmp_path, "num_validation": 5, "num_test": 7, "seed": 1}
    splits = {split: load_examples("dolly", split, **params) for split in ("train", "validation", "test")}
    assert {split: len(examples) for split, examples in splits.items()} == {"train": 28, "validation": 5, "test": 7}
    ids = [example.id for examples in splits.values() for example in examples]
    assert sorted(ids) == sorted(f"dolly-{i}" for i in range(40))
    assert load_examples("dolly", "test", **params) == splits["test"]
    assert load_examples("dolly", "test", **{**params, "seed": 2}) != splits["test"]


def test_dolly_prompt_uses_minillm_template_with_and_without_context(tmp_path):
    write_jsonl(tmp_path / "databricks-dolly-15k.jsonl", dolly_rows(12))
    examples = load_examples("dolly", "train", data_dir=tmp_path, num_validation=1, num_test=1, seed=0)
    with_context = next(example for example in examples if example.meta["context"])
    without_context = next(example for example in examples if not example.meta["context"])
    index = int(with_context.id.split("-")[1])
    assert with_context.source == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        f"### Instruction:\nQuestion {index}?\n\n### Input:\nPassage {index}.\n\n### Response:\n"
    )
    assert without_context.source == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{without_context.meta['instruction']}\n\n### Response:\n"
    )
    assert with_context.references == (f"Answer {index}.",)
    assert with_context.meta["category"] == "closed_qa"


def test_dolly_missing_field_names_file_record_and_field(tmp_path):
    rows = dolly_rows(12)
    del rows[3]["response"]
    path = write_jsonl(tmp_path / "databricks-dolly-15k.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path} record 3: missing field 'response'"):
        for split in ("train", "validation", "test"):
            load_examples("dolly", split, data_dir=tmp_path, num_validation=1, num_test=1)


def test_dolly_too_small_release(tmp_path):
    write_jsonl(tmp_path / "databricks-dolly-15k.jsonl", dolly_rows(10))
    with pytest.raises(DataError, match="too few for 500 test"):
        load_examples("dolly", "train", data_dir=tmp_path)


# ----- shared machinery -------------------------------------------------------------------------
def test_limit_takes_the_first_examples_of_the_split(shared_data):
    full = load_examples("commonsense_dialogue", "validation", data_dir=shared_data / "commonsense_dialogues")
    limited = load_examples("commonsense_dialogue", "validation", data_dir=shared_data / "commonsense_dialogues", limit=10)
    assert limited == full[:10]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: load_examples("dartt", "train"), DataError, "unknown dataset 'dartt'; available: commonsense_dialogue"),
        (lambda: load_examples("xsum", "eval", data_dir="."), DataError, "unknown split 'eval'"),
        (lambda: load_examples("xsum", "test", data_dir=".", num_beams=4), DataError, r"unknown parameter\(s\) \['num_beams'\]"),
        (lambda: load_examples("xsum", "test", data_dir=".", limit=-1), DataError, "limit must be a non-negative integer"),
        (lambda: load_examples("xsum", "test", data_dir="/nonexistent/xsum"), MissingDataFileError,
         "expected /nonexistent/xsum/test.jsonl .*folder does not exist"),
    ],
)
def test_bad_requests_fail_with_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_example_normalises_references_and_is_frozen():
    example = Example(id="e", source="s", references=["a", "b"], meta={})
    assert example.references == ("a", "b")
    with pytest.raises(AttributeError):
        example.source = "t"
    with pytest.raises(DataError, match="references must be a non-empty list of strings"):
        Example(id="e", source="s", references=[], meta={})


def test_training_pairs_one_per_reference():
    examples = [Example("a", "src a", ("r1", "r2")), Example("b", "src b", ("r3",))]
    assert training_pairs(examples) == [("a", "src a", "r1"), ("a", "src a", "r2"), ("b", "src b", "r3")]


@pytest.mark.parametrize("config_file", sorted(CONF_DIR.glob("*.yaml")), ids=lambda path: path.stem)
def test_dataset_configs_match_their_adapters(config_file):
    config = OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)
    assert config["name"] == config_file.stem and config["name"] in ADAPTERS
    ADAPTERS[config["name"]](config["data_dir"], hub_id=config["hub_id"], **config["params"])  # params accepted
    assert config["metrics"] and set(config["limit"]) == {"train", "validation", "test"}


def test_every_adapter_has_a_config():
    assert sorted(path.stem for path in CONF_DIR.glob("*.yaml")) == available_datasets()


def test_load_from_config_applies_data_dir_and_split_limit(shared_data):
    config = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "dart.yaml"))
    config["data_dir"] = str(shared_data / "dart")
    config["limit"]["validation"] = 4
    assert load_from_config(config, "validation") == load_examples("dart", "dev", data_dir=shared_data / "dart")[:4]
