"""Property tests (hypothesis): non-negativity, identity, bounds, and the jsd limits."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fdistill.divergences import get_divergence
from tests.divergence_reference import CONFIGS

SETTINGS = settings(max_examples=10, deadline=None)
TOLERANCE = 1e-5


@st.composite
def logit_pairs(draw):
    rows, vocab = draw(st.integers(1, 4)), draw(st.integers(2, 9))
    elements = st.floats(-30, 30, width=32, allow_nan=False)
    student = draw(arrays(np.float32, (rows, vocab), elements=elements))
    teacher = draw(arrays(np.float32, (rows, vocab), elements=elements))
    return torch.from_numpy(student), torch.from_numpy(teacher)


@SETTINGS
@given(logit_pairs())
def test_non_negative(pair):
    student, teacher = pair
    for name, params in CONFIGS:
        div = get_divergence(name, **params)
        for part in (div.per_token, div.teacher_side, div.student_side):
            assert (part(student, teacher) >= -TOLERANCE).all(), (name, params)


@SETTINGS
@given(logit_pairs(), st.floats(-50, 50))
def test_zero_for_equal_logits_up_to_a_shift(pair, shift):
    _, teacher = pair
    for name, params in CONFIGS:
        if name == "engine":  # ENGINE's energy is a cross-entropy: it is the teacher's entropy at q = p
            continue
        value = get_divergence(name, **params).per_token(teacher + shift, teacher)
        assert (value.abs() <= TOLERANCE).all(), (name, params, value)


@SETTINGS
@given(logit_pairs())
def test_bounds_of_js_and_tvd(pair):
    student, teacher = pair
    assert (get_divergence("js").per_token(student, teacher) <= math.log(2) + TOLERANCE).all()
    assert (get_divergence("tvd").per_token(student, teacher) <= 1 + TOLERANCE).all()


@SETTINGS
@given(logit_pairs())
def test_jsd_limits_and_midpoint(pair):
    student, teacher = pair
    def value(part, name, **params):
        return getattr(get_divergence(name, **params), part)(student, teacher)

    for part in ("per_token", "teacher_side", "student_side"):
        torch.testing.assert_close(value(part, "jsd", beta=0.0), value(part, "kl"), rtol=0, atol=0)
        torch.testing.assert_close(value(part, "jsd", beta=1.0), value(part, "rkl"), rtol=0, atol=0)
        torch.testing.assert_close(value(part, "jsd", beta=0.5), value(part, "js"), rtol=0, atol=0)


@SETTINGS
@given(logit_pairs(), st.floats(0, 1))
def test_mixtures_of_kl_and_reverse_kl(pair, weight):
    student, teacher = pair
    forward = get_divergence("kl").per_token(student, teacher)
    reverse = get_divergence("rkl").per_token(student, teacher)
    mixed = get_divergence("fkl_rkl", weight=weight).per_token(student, teacher)
    torch.testing.assert_close(mixed, weight * forward + (1 - weight) * reverse, rtol=1e-5, atol=1e-5)
    for name in ("akl", "akl_r"):  # AKL is a convex combination of the two
        adaptive = get_divergence(name).per_token(student, teacher)
        assert (adaptive >= torch.minimum(forward, reverse) - TOLERANCE).all()
        assert (adaptive <= torch.maximum(forward, reverse) + TOLERANCE).all()
