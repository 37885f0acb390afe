"""Model-based analyses on a tiny GPT-2 pair (built here, no hub) and synthetic exact metrics on a fake task."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from fdistill.evaluation import (
    distinct_bigram_percentage,
    draw_samples,
    evaluate_predictions,
    exposure_bias_excess_error,
    likelihood_coverage_risk,
    synthetic_exact_metrics,
    teacher_distinct_bigrams,
)
from fdistill.evaluation.analyses import mean_token_kl
from fdistill.models import SeqCollator, build_word_tokenizer

WORDS = "the cat dog sat ran on under a mat rug red blue".split()


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """(teacher, student, collator): two differently seeded 2-layer GPT-2s over a word tokenizer, left in
    train mode with dropout, so results only match the eval-mode references if the analyses switch modes."""
    tokenizer = build_word_tokenizer(WORDS, tmp_path_factory.mktemp("tokenizer"))
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_head=2, n_embd=16, n_positions=64,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(GPT2LMHeadModel(config))
    collator = SeqCollator(tokenizer, is_encoder_decoder=False, max_source_length=16, max_target_length=12)
    return models[0], models[1], collator


@pytest.fixture(scope="module")
def sources_and_targets(tiny_pair):
    _, _, collator = tiny_pair
    sources = collator.encode_sources(["the cat sat", "a dog ran on the rug", "red mat"])
    targets = collator.encode_targets(["a cat", "the dog sat on a red mat", "blue"])  # 3, 8, 2 tokens with eos
    return sources, targets


@contextlib.contextmanager
def evaluated(model):
    model.eval()
    try:
        yield
    finally:
        model.train()


def reference_nll(model, collator, source, target) -> float:
    """−log model(target | source) from one unpadded eval-mode forward pass over prompt + target."""
    prompt = list(source) + [collator.separator_id]
    ids = torch.tensor([prompt + list(target)])
    with torch.no_grad(), evaluated(model):
        log_probs = model(ids).logits.log_softmax(-1)[0]
    return -sum(float(log_probs[len(prompt) - 1 + t, token]) for t, token in enumerate(target))


def reference_kl(teacher, student, collator, source, target) -> list[float]:
    """KL(p_teacher ‖ q_student) at each target position, unpadded, in eval mode."""
    prompt = list(source) + [collator.separator_id]
    ids = torch.tensor([prompt + list(target)])
    with torch.no_grad(), evaluated(teacher), evaluated(student):
        p = teacher(ids).logits.log_softmax(-1)[0, len(prompt) - 1:-1]
        q = student(ids).logits.log_softmax(-1)[0, len(prompt) - 1:-1]
    return (p.exp() * (p - q)).sum(-1).tolist()


def test_risks_score_the_other_models_samples_per_sequence_and_per_token(tiny_pair, sources_and_targets):
    teacher, student, collator = tiny_pair
    sources, targets = sources_and_targets
    student_samples, teacher_samples = targets, targets[::-1]
    risks = likelihood_coverage_risk(teacher, student, collator, sources, max_new_tokens=8, batch_size=2,
                                     student_samples=student_samples, teacher_samples=teacher_samples)
    llh = [reference_nll(teacher, collator, s, y) for s, y in zip(sources, student_samples, strict=True)]
    cvg = [reference_nll(student, collator, s, y) for s, y in zip(sources, teacher_samples, strict=True)]
    lengths = [len(y) for y in targets]
    assert risks["likelihood_risk_per_sequence"] == pytest.approx(sum(llh) / 3, rel=1e-5)
    assert risks["likelihood_risk_per_token"] == pytest.approx(sum(llh) / sum(lengths), rel=1e-5)
    assert risks["coverage_risk_per_sequence"] == pytest.approx(sum(cvg) / 3, rel=1e-5)
    assert risks["coverage_risk_per_token"] == pytest.approx(sum(cvg) / sum(lengths), rel=1e-5)
    # micro average over tokens, not the mean of per-sequence means (lengths differ: 3, 8, 2)
    macro = sum(n / k for n, k in zip(llh, lengths, strict=True)) / 3
    assert risks["likelihood_risk_per_token"] != pytest.approx(macro, rel=1e-4)


def test_analyses_restore_training_mode_and_sample_reproducibly(tiny_pair, sources_and_targets):
    teacher, student, collator = tiny_pair
    sources, _ = sources_and_targets
    teacher.eval()
    torch.manual_seed(3)
    first = likelihood_coverage_risk(teacher, student, collator, sources, max_new_tokens=6)
    torch.manual_seed(3)
    second = likelihood_coverage_risk(teacher, student, collator, sources, max_new_tokens=6)
    assert first == second and all(value > 0 for value in first.values())
    assert student.training and not teacher.training
    teacher.train()


def test_draw_samples_returns_num_samples_per_input_ending_at_eos(tiny_pair, sources_and_targets):
    teacher, _, collator = tiny_pair
    sources, _ = sources_and_targets
    torch.manual_seed(0)
    samples = draw_samples(teacher, collator, sources, num_samples=5, max_new_tokens=6, batch_size=2)
    assert [len(group) for group in samples] == [5, 5, 5]
    for group in samples:
        for ids in group:
            assert 1 <= len(ids) <= 6
            assert collator.eos_id not in ids[:-1]


def test_distinct_bigram_percentage_hand_values():
    # input 1: ab, bc, ab, bd -> 3 distinct / 4; input 2: xy -> 1/1; input 3 has no bigram (left out).
    value = distinct_bigram_percentage([[["a", "b", "c"], ["a", "b", "d"]], [["x", "y"]], [["z"]]])
    assert value == pytest.approx((75.0 + 100.0) / 2)
    assert math.isnan(distinct_bigram_percentage([[["z"]]]))


def test_teacher_distinct_bigrams_runs_on_five_samples_per_input(tiny_pair, sources_and_targets):
    teacher, _, collator = tiny_pair
    sources, _ = sources_and_targets
    torch.manual_seed(0)
    value = teacher_distinct_bigrams(teacher, collator, sources, max_new_tokens=8)
    assert 0.0 < value <= 100.0


def test_mean_token_kl_matches_unpadded_kl_and_exerror_formula(tiny_pair, sources_and_targets):
    teacher, student, collator = tiny_pair
    sources, targets = sources_and_targets
    expected = [kl for s, y in zip(sources, targets, strict=True)
                for kl in reference_kl(teacher, student, collator, s, y)]
    assert mean_token_kl(teacher, student, collator, sources, targets, batch_size=2) == pytest.approx(
        sum(expected) / len(expected), rel=1e-4)
    student_samples = [targets[2], targets[0], targets[1]]
    result = exposure_bias_excess_error(teacher, student, collator, sources, max_new_tokens=8,
                                        reference_target_ids=targets, student_samples=student_samples)
    d_t, d_s = result["exposure_kl_teacher_prefixes"], result["exposure_kl_student_prefixes"]
    assert d_t == pytest.approx(sum(expected) / len(expected), rel=1e-4)
    assert d_s == pytest.approx(mean_token_kl(teacher, student, collator, sources, student_samples), rel=1e-6)
    assert result["ex_error_percent"] == pytest.approx(100 * (d_s - d_t) / d_t)


def test_exerror_is_nan_when_student_equals_teacher(tiny_pair, sources_and_targets):
    teacher, _, collator = tiny_pair
    sources, targets = sources_and_targets
    result = exposure_bias_excess_error(teacher, teacher, collator, sources, max_new_tokens=8,
                                        reference_target_ids=targets, student_samples=targets)
    assert result["exposure_kl_teacher_prefixes"] == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(result["ex_error_percent"])


class FakeSyntheticTask:
    """Outputs "m<k>" are valid and in mode k; "bad" is invalid."""

    mode_probs = [0.5, 0.25, 0.25]

    def is_valid(self, source, output):
        return output != "bad"

    def mode_of(self, source, output):
        return int(output[1:])

    def true_prob(self, source, output):
        return self.mode_probs[self.mode_of(source, output)] if self.is_valid(source, output) else 0.0


def test_synthetic_exact_metrics_hand_values():
    metrics = synthetic_exact_metrics(FakeSyntheticTask(), ["s1", "s2", "s3", "s4"], ["m0", "m0", "m1", "bad"])
    assert metrics["validity_rate"] == pytest.approx(0.75)
    assert metrics["modes_covered"] == 2
    # empirical (0.5, 0.25, 0) + 0.25 on "no mode" vs true (0.5, 0.25, 0.25, 0): TV = (0.25 + 0.25) / 2
    assert metrics["mode_tv"] == pytest.approx(0.25)
    assert metrics["mode_entropy"] == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert metrics["mode_entropy_true"] == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)))


def test_synthetic_exact_through_the_registry_needs_task_and_sources():
    values, metadata = evaluate_predictions(["m0", "m1", "m2"], [[], [], []], ["synthetic_exact"],
                                            synthetic_task=FakeSyntheticTask(), sources=["a", "b", "c"])
    assert values["mode_tv"] == pytest.approx(0.5 * (1 / 6 + 1 / 12 + 1 / 12))
    assert metadata["scales"]["modes_covered"] == "count"
    with pytest.raises(ValueError, match="synthetic_task"):
        evaluate_predictions(["m0"], [[]], ["synthetic_exact"])


def test_synthetic_exact_on_the_real_task_references_are_all_valid():
    from fdistill.data import load_examples
    from fdistill.data.synthetic import SyntheticTask

    task = SyntheticTask(num_test=60)
    examples = load_examples("synthetic", "test", num_test=60)
    metrics = synthetic_exact_metrics(task, [e.source for e in examples], [e.references[0] for e in examples])
    assert metrics["validity_rate"] == 1.0
    assert metrics["modes_covered"] >= 2
    garbage = synthetic_exact_metrics(task, [e.source for e in examples], ["not a valid output"] * len(examples))
    assert garbage["validity_rate"] == 0.0 and garbage["mode_tv"] == pytest.approx(1.0)
