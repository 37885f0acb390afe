"""The synthetic task's exact ground truth: validity, blends, the true mode distribution, determinism."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from fdistill.data import DataError, SyntheticTask, load_examples, training_pairs


@pytest.fixture(scope="module")
def task() -> SyntheticTask:
    return SyntheticTask()


# Upper 0.1% quantiles of the chi-square distribution by degrees of freedom (standard tables).
CHI2_CRITICAL_0001 = {3: 16.266, 5: 20.515}


def mode_counts_match(counts: np.ndarray, probs: np.ndarray) -> bool:
    """Pearson chi-square goodness of fit at level 0.001, and every count within 4 binomial std."""
    n = counts.sum()
    expected = n * probs
    statistic = float(((counts - expected) ** 2 / expected).sum())
    within_binomial = np.abs(counts - expected) <= 4 * np.sqrt(n * probs * (1 - probs))
    return statistic <= CHI2_CRITICAL_0001[len(probs) - 1] and bool(within_binomial.all())


def test_sampled_references_are_valid_and_carry_their_mode(task):
    for example in task.sample(200, "train") + task.sample(50, "test"):
        assert all(task.is_valid(example.source, reference) for reference in example.references)
        assert task.mode_of(example.source, example.references[0]) == example.meta["mode"]
        assert task.true_prob(example.source, example.references[0]) == pytest.approx(task.mode_probs[example.meta["mode"]])


def test_templates_are_distinct_short_orderings(task):
    source = task.sample(1, "validation")[0].source
    outputs = task.verbalisations(source)
    assert len(set(outputs)) == task.num_modes
    assert [task.mode_of(source, output) for output in outputs] == list(range(task.num_modes))
    assert all(8 <= len(output.split()) <= 15 for output in outputs)
    slot_orders = {tuple(word for word in output.split() if word in task.attribute_values) for output in outputs}
    assert len(slot_orders) == task.num_modes  # default K=6 uses all 3! attribute orders
    assert task.is_valid(source, "  " + outputs[0].replace(" ", "   ") + " ")  # whitespace-insensitive


def test_blends_of_two_templates_are_invalid(task):
    for example in task.sample(5, "test"):
        outputs = [output.split() for output in task.verbalisations(example.source)]
        for first, second in itertools.permutations(outputs, 2):
            for cut in range(1, min(len(first), len(second))):
                blend = " ".join(first[:cut] + second[cut:])
                assert not task.is_valid(example.source, blend), blend
                assert task.mode_of(example.source, blend) is None and task.true_prob(example.source, blend) == 0.0


def test_wrong_content_is_invalid(task):
    example = task.sample(1, "train")[0]
    output = example.references[0]
    attribute, value = next(iter(example.meta["attributes"].items()))
    other_value = next(v for v in task.attribute_values[attribute] if v != value)
    assert not task.is_valid(example.source, output.replace(f" {value} ", f" {other_value} "))
    assert not task.is_valid(example.source, " ".join(output.split()[:-1]))  # truncated
    assert not task.is_valid(example.source, output + " " + output.split()[-1])  # repeated closing word


@pytest.mark.parametrize(("num_modes", "mode_skew"), [(6, 0.5), (4, 1.0), (12, 0.8)])
def test_true_prob_sums_to_one_over_the_k_outputs(num_modes, mode_skew):
    task = SyntheticTask(num_modes=num_modes, mode_skew=mode_skew)
    probs = task.mode_probs
    assert probs.sum() == pytest.approx(1.0)
    assert probs[1:] / probs[:-1] == pytest.approx(np.full(num_modes - 1, mode_skew))
    for example in task.sample(10, "validation"):
        outputs = task.verbalisations(example.source)
        assert math.fsum(task.true_prob(example.source, output) for output in outputs) == pytest.approx(1.0, abs=1e-12)


def test_single_mode_is_deterministic_like_translation():
    task = SyntheticTask(num_modes=1)
    example = task.sample(1, "test")[0]
    assert example.references == tuple(task.verbalisations(example.source))
    assert task.true_prob(example.source, example.references[0]) == 1.0


@pytest.mark.parametrize(("num_modes", "mode_skew"), [(6, 0.5), (4, 1.0)])
def test_sampled_mode_counts_follow_the_set_distribution(num_modes, mode_skew):
    task = SyntheticTask(num_modes=num_modes, mode_skew=mode_skew, num_train=4000)
    examples = load_examples("synthetic", "train", num_modes=num_modes, mode_skew=mode_skew, num_train=4000)
    observed = Counter(task.mode_of(example.source, example.references[0]) for example in examples)
    counts = np.array([observed[k] for k in range(num_modes)])
    assert counts.sum() == 4000
    assert mode_counts_match(counts, task.mode_probs)
    other = SyntheticTask(num_modes=num_modes, mode_skew=0.7 if mode_skew == 1.0 else 1.0).mode_probs
    assert not mode_counts_match(counts, other)  # the check has power against a different skew


def test_determinism_by_seed_and_prefix_stability():
    first = load_examples("synthetic", "train", seed=7, num_train=300)
    assert first == load_examples("synthetic", "train", seed=7, num_train=300)
    assert first != load_examples("synthetic", "train", seed=8, num_train=300)
    assert SyntheticTask(seed=7).sample(100, "train") == first[:100]


def test_splits_have_disjoint_unique_inputs(task):
    sources = {split: [example.source for example in task.sample(task.split_size(split), split)]
               for split in ("train", "validation", "test")}
    assert {split: len(values) for split, values in sources.items()} == {"train": 2000, "validation": 200, "test": 500}
    assert all(len(set(values)) == len(values) for values in sources.values())
    assert not set(sources["train"]) & set(sources["validation"])
    assert not set(sources["train"]) & set(sources["test"])
    assert not set(sources["validation"]) & set(sources["test"])


def test_reference_policy_train_one_eval_all(task):
    train = load_examples("synthetic", "train", limit=5)
    assert all(len(example.references) == 1 for example in train)
    assert len(training_pairs(train)) == 5
    evaluation = load_examples("synthetic", "test", limit=5)
    for example in evaluation:
        assert sorted(example.references) == sorted(task.verbalisations(example.source))
        assert task.mode_of(example.source, example.references[0]) == example.meta["mode"]
    sampled_only = load_examples("synthetic", "test", limit=5, eval_references="sampled")
    assert [example.references for example in sampled_only] == [example.references[:1] for example in evaluation]


def test_vocabulary_covers_every_word_and_word_classes_do_not_collide(task):
    words = set(task.vocabulary())
    for example in task.sample(300, "train") + task.sample(50, "test"):
        assert set(example.source.split()) <= words
        assert all(set(reference.split()) <= words for reference in example.references)
    largest = SyntheticTask(num_modes=24, num_entities=100, num_attributes=8, values_per_attribute=6)
    entities, attributes = set(largest.entities), set(largest.attribute_values)
    values = {value for values in largest.attribute_values.values() for value in values}
    template_words = set(largest.vocabulary()) - entities - attributes - values
    assert len(entities) == 100 and len(values) == 8 * 6
    assert len(entities) + len(attributes) + len(values) + len(template_words) == len(largest.vocabulary())


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"num_modes": 0}, r"num_modes must be an integer in \[1, 24\]"),
        ({"num_modes": 25}, r"num_modes must be an integer in \[1, 24\]"),
        ({"mode_skew": 0.0}, "mode_skew must be > 0"),
        ({"seed": -1}, r"seed must be an integer in \[0, "),
        ({"num_train": 10**6}, r"num_train must be an integer in \[0, 80000\]"),
        ({"eval_references": "some"}, "eval_references must be one of"),
        ({"num_mode": 3}, r"unknown parameter\(s\) \['num_mode'\]"),
    ],
)
def test_bad_parameters_are_rejected(params, message):
    with pytest.raises(DataError, match=message):
        load_examples("synthetic", "train", **params)


def test_data_dir_is_rejected(tmp_path):
    with pytest.raises(DataError, match="generated in code, data_dir must be null"):
        load_examples("synthetic", "train", data_dir=tmp_path)


def test_foreign_source_is_rejected(task):
    with pytest.raises(ValueError, match="not a source of this synthetic task"):
        task.is_valid("translate this sentence", "anything")
    with pytest.raises(ValueError, match="unknown or unordered attribute/value"):
        task.is_valid("record kaka size small color red city paris", "anything")
