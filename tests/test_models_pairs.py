"""Pair configs (conf/pair/*.yaml), the offline tiny pairs, layer-copy student initialisation (Shleifer &
Rush 2020) and the shared-vocabulary checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fdistill.config import PairConfig
from fdistill.models import (
    SeqCollator,
    build_word_tokenizer,
    check_same_vocab,
    generate_targets,
    init_student,
    load_teacher,
    load_tokenizer,
    paired_hidden_states,
    prepare_tiny_pair,
    spread_layers,
    student_from_pair_config,
    student_layer_plan,
    token_logits,
)

PAIR_DIR = Path(__file__).resolve().parents[1] / "conf" / "pair"
TINY_PAIRS = ("tiny_bart", "tiny_t5", "tiny_gpt2")
TEXTS = ["the cat sat on the mat", "a dog ran far away from home", "one two three four five six"]
EXPECTED_REAL_PLANS = {
    "bart_dart": {"encoder": [0, 6, 11], "decoder": [0]},
    "bart_xsum": {"encoder": [0, 6, 11], "decoder": [0, 6, 11]},
    "t5_wmt": {"encoder": [0, 6, 11], "decoder": [0]},
    "dialogpt_cd": {"decoder": [0, 8, 16, 23]},
    "smollm2": {"decoder": [0, 6, 12, 17, 23, 29]},
    "gpt2_dolly": {},
    "t5_xsum": {},
}


def pair_config(name: str):
    """The yaml validated against the runner's structured schema (fdistill.config.PairConfig)."""
    return OmegaConf.merge(OmegaConf.structured(PairConfig), OmegaConf.load(PAIR_DIR / f"{name}.yaml"))


def layer_stacks(model) -> dict[str, torch.nn.ModuleList]:
    """The layer lists of each architecture, addressed through the modules (not the state-dict names)."""
    if model.config.model_type == "bart":
        return {"encoder": model.model.encoder.layers, "decoder": model.model.decoder.layers}
    if model.config.model_type == "t5":
        return {"encoder": model.encoder.block, "decoder": model.decoder.block}
    return {"decoder": model.transformer.h}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    cache = tmp_path_factory.mktemp("pairs")
    return {name: prepare_tiny_pair(pair_config(name), TEXTS, cache) for name in TINY_PAIRS}


def test_every_pair_config_validates_and_is_covered():
    names = sorted(path.stem for path in PAIR_DIR.glob("*.yaml"))
    assert set(EXPECTED_REAL_PLANS) | set(TINY_PAIRS) <= set(names)
    for name in names:
        config = OmegaConf.to_object(pair_config(name))
        config.check("pair")  # the schema's range checks
        assert config.name == name
        # every pair is either a real one with a checked layer plan or an offline one built from a config
        assert name in EXPECTED_REAL_PLANS or config.teacher.build is not None, name


@pytest.mark.parametrize("name", sorted(EXPECTED_REAL_PLANS))
def test_real_pairs_are_consistent_without_download(name):
    config = pair_config(name)
    assert config.tokenizer == config.teacher.name_or_path
    assert config.teacher.build is None
    assert student_layer_plan(config) == EXPECTED_REAL_PLANS[name]
    if config.student.init == "from_pretrained":
        assert config.student.name_or_path


def test_layer_plan_rejects_indices_beyond_the_teacher():
    config = pair_config("bart_dart")
    config.student.encoder_layers = [0, 6, 12]
    with pytest.raises(ValueError, match=r"encoder_layers=\[0, 6, 12\].*\[0, 11\]"):
        student_layer_plan(config)
    config = pair_config("dialogpt_cd")
    config.student.num_encoder_layers = 2
    with pytest.raises(ValueError, match="no encoder"):
        student_layer_plan(config)


def test_spread_layers_keeps_first_and_last():
    assert spread_layers(12, 3) == [0, 6, 11]
    assert spread_layers(12, 1) == [0]
    assert spread_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert spread_layers(16, 3) == [0, 8, 15]
    assert spread_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cannot pick 5"):
        spread_layers(4, 5)


def test_prepare_tiny_pair_is_idempotent_and_saves_safetensors(tiny_dirs, tmp_path_factory):
    for name, directory in tiny_dirs.items():
        assert prepare_tiny_pair(pair_config(name), TEXTS, directory.parent) == directory
        assert (directory / "model.safetensors").is_file() and not list(directory.glob("*.bin"))
    assert not list(next(iter(tiny_dirs.values())).parent.glob(".tmp-*"))
    other = prepare_tiny_pair(pair_config("tiny_bart"), [*TEXTS, "new words"], tiny_dirs["tiny_bart"].parent)
    assert other != tiny_dirs["tiny_bart"]


@pytest.mark.parametrize("name", TINY_PAIRS)
def test_tiny_pair_builds_loads_copies_layers_and_runs(tiny_dirs, name, tmp_path):
    config = pair_config(name)
    tokenizer = load_tokenizer(tiny_dirs[name])
    teacher = load_teacher(tiny_dirs[name], config.architecture)
    student = student_from_pair_config(teacher, config).eval()
    plan = student_layer_plan(config)

    # layer copy: every copied layer byte-identical to its teacher layer, embeddings shared
    teacher_stacks, student_stacks = layer_stacks(teacher), layer_stacks(student)
    assert {stack: len(layers) for stack, layers in student_stacks.items()} == {s: len(p) for s, p in plan.items()}
    for stack, teacher_indices in plan.items():
        for student_index, teacher_index in enumerate(teacher_indices):
            copied = dict(student_stacks[stack][student_index].named_parameters())
            original = dict(teacher_stacks[stack][teacher_index].named_parameters())
            assert copied.keys() == original.keys()
            for key, weight in copied.items():
                assert weight.dtype == original[key].dtype
                assert weight.detach().numpy().tobytes() == original[key].detach().numpy().tobytes(), (stack, key)
    skipped = plan["decoder"][1] if name == "tiny_gpt2" else plan["encoder"][1]
    stack = "decoder" if name == "tiny_gpt2" else "encoder"
    assert skipped != 1  # the copy is spread, not the first layers: student layer 1 differs from teacher layer 1
    pairs_of_weights = zip(student_stacks[stack][1].parameters(), teacher_stacks[stack][1].parameters(), strict=True)
    assert not all(torch.equal(copied, original) for copied, original in pairs_of_weights)
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)

    # forward + generation of both models
    collator = SeqCollator(tokenizer, teacher.config.is_encoder_decoder, 16, 8)
    batch = collator.from_text(TEXTS[:2], ["on the mat", "far away"])
    for model in (teacher, student):
        logits = token_logits(model, batch)
        assert logits.shape == (*batch["labels"].shape, len(tokenizer)) and torch.isfinite(logits).all()
        targets = generate_targets(model, collator.prompts(TEXTS[:2]), tokenizer=tokenizer, max_new_tokens=5)
        assert len(targets) == 2 and all(1 <= len(row) <= 5 for row in targets)

    # pre-distillation pairs: the first copied layer sees the same input with the same weights
    pairs = paired_hidden_states(teacher, student, batch)
    assert {stack: len(states) for stack, states in pairs.items()} == {s: len(p) for s, p in plan.items()}
    first_student, first_teacher = pairs[stack][0]
    assert torch.allclose(first_student, first_teacher, atol=1e-6)
    assert not torch.allclose(*pairs[stack][1], atol=1e-3)

    # the student checkpoint round-trips through save_pretrained/from_pretrained (safetensors) with its map
    student.save_pretrained(tmp_path)
    reloaded = load_teacher(tmp_path, config.architecture)
    assert (tmp_path / "model.safetensors").is_file()
    assert reloaded.config.fdistill_copied_layers == plan
    assert torch.equal(token_logits(reloaded, batch), token_logits(student, batch))


def test_explicit_layer_lists_and_from_config(tiny_dirs):
    teacher = load_teacher(tiny_dirs["tiny_bart"], "encoder_decoder")
    student = init_student(teacher, encoder_layers=[3, 1], decoder_layers=[2])
    assert student.config.encoder_layers == 2 and student.config.decoder_layers == 1
    assert torch.equal(student.model.encoder.layers[0].fc1.weight, teacher.model.encoder.layers[3].fc1.weight)
    with pytest.raises(ValueError, match="has 2 entries but num_encoder_layers=3"):
        init_student(teacher, encoder_layers=[3, 1], num_encoder_layers=3)
    random_student = init_student(teacher, method="from_config", num_encoder_layers=1, num_decoder_layers=1)
    assert random_student.config.encoder_layers == 1
    assert not torch.equal(random_student.model.encoder.layers[0].fc1.weight, teacher.model.encoder.layers[0].fc1.weight)
    with pytest.raises(ValueError, match="method='distill'"):
        init_student(teacher, method="distill")


def test_vocab_mismatch_names_both_models(tmp_path):
    teacher_tokenizer = build_word_tokenizer(TEXTS, tmp_path / "a")
    student_tokenizer = build_word_tokenizer([*TEXTS, "zebra"], tmp_path / "b")
    check_same_vocab(teacher_tokenizer, load_tokenizer(tmp_path / "a"), "teacher-x", "teacher-copy")
    with pytest.raises(ValueError, match=r"'teacher-x' and 'student-y' differ.*only in 'student-y' \(e\.g\. \['zebra'\]\)"):
        check_same_vocab(teacher_tokenizer, student_tokenizer, "teacher-x", "student-y")
