"""The fused lm-head path equals the divergence on materialised logits: every divergence, part, temperature,
the prefix mixture, masks, padded (−inf) vocabulary rows, soft-capping, different hidden widths; values and
the gradients to the student's hidden states, weight and bias (never the teacher's)."""

from __future__ import annotations

import pytest
import torch
from divergence_reference import CONFIGS

from fdistill.divergences import get_divergence, masked_mean, sum_per_sequence
from fdistill.divergences.fused import LinearHead, fused_loss

CONFIG_IDS = [f"{name}-{params}" for name, params in CONFIGS]
V, H_S, H_T = 23, 6, 9


def _inputs(dtype, seed=0, vocab=V, bias=True):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=dtype) * scale)

    student = {"hidden": rand(3, 4, H_S, scale=2.0), "weight": rand(vocab, H_S), "bias": rand(vocab) if bias else None}
    teacher = {"hidden": rand(3, 4, H_T, scale=2.0), "weight": rand(vocab, H_T), "bias": rand(vocab) if bias else None}
    return student, teacher


def _leaves(student):
    return {key: None if value is None else value.clone().requires_grad_() for key, value in student.items()}


def _unfused(div, part, student, teacher, softcaps=(None, None), mask=None, **prefix):
    def logits(model, cap):
        z = model["hidden"] @ model["weight"].T + (0 if model["bias"] is None else model["bias"])
        return z if cap is None else cap * torch.tanh(z / cap)

    method = {"both": div.per_token, "teacher": div.teacher_side, "student": div.student_side}[part]
    return method(logits(student, softcaps[0]), logits(teacher, softcaps[1]).detach(), mask=mask, **prefix)


def _fused(div, part, student, teacher, softcaps=(None, None), mask=None, **prefix):
    return div.fused(student["hidden"], student["weight"], teacher["hidden"], teacher["weight"], part=part,
                     student_bias=student["bias"], teacher_bias=teacher["bias"], mask=mask,
                     student_softcap=softcaps[0], teacher_softcap=softcaps[1], **prefix)


def _compare(div, part, dtype, tolerance, softcaps=(None, None), mask=None, seed=0, prefix=None, reduce=None):
    student, teacher = _inputs(dtype, seed)
    weights = torch.rand(3, 4, dtype=dtype, generator=torch.Generator().manual_seed(seed + 7))
    reduce = reduce or (lambda values: (values * weights).sum())
    results = []
    for compute in (_unfused, _fused):
        leaves = _leaves(student)
        prefix_leaves = {key: value.clone().requires_grad_() for key, value in (prefix or {}).items()}
        values = compute(div, part, leaves, teacher, softcaps, mask, **prefix_leaves)
        inputs = [leaves["hidden"], leaves["weight"], leaves["bias"], *prefix_leaves.values()]
        grads = torch.autograd.grad(reduce(values), inputs, allow_unused=True) if values.requires_grad else \
            [torch.zeros_like(x) for x in inputs]
        results.append((values.detach(), [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)]))
    (unfused, unfused_grads), (fused, fused_grads) = results
    torch.testing.assert_close(fused, unfused, **tolerance)
    for mine, reference in zip(fused_grads, unfused_grads, strict=True):
        torch.testing.assert_close(mine, reference, **tolerance)


FLOAT64 = {"rtol": 1e-10, "atol": 1e-10}
FLOAT32 = {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("part", ["both", "teacher", "student"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fused_equals_unfused_float64(name, params, part, temperature):
    div = get_divergence(name, temperature=temperature, chunk_tokens=5, **params)
    _compare(div, part, torch.float64, FLOAT64)


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_fused_equals_unfused_float32(name, params):
    _compare(get_divergence(name, **params), "both", torch.float32, FLOAT32)


@pytest.mark.parametrize("beta", [0.3, 0.5])
@pytest.mark.parametrize("part", ["both", "teacher", "student"])
def test_fused_prefix_mixture_with_prefix_gradients(beta, part):
    prefix = {"teacher_prefix_logprob": -3 * torch.rand(3, 4, dtype=torch.float64),
              "student_prefix_logprob": -3 * torch.rand(3, 4, dtype=torch.float64)}
    div = get_divergence("jsd", beta=beta, mixture="prefix", temperature=0.8)
    _compare(div, part, torch.float64, FLOAT64, prefix=prefix)


@pytest.mark.parametrize("name", ["kl", "js", "tvd", "akl"])
def test_fused_with_soft_capping(name):
    _compare(get_divergence(name), "both", torch.float64, FLOAT64, softcaps=(3.0, 5.0))


@pytest.mark.parametrize("reduce", ["masked_mean", "sum_per_sequence", "weighted"])
def test_fused_masks_and_the_reductions_training_uses(reduce):
    mask = torch.tensor([[True, True, False, True], [True, False, False, False], [True, True, True, True]])
    reductions = {"masked_mean": lambda values: masked_mean(values, mask),
                  "sum_per_sequence": lambda values: sum_per_sequence(values, mask).mean(),
                  "weighted": None}  # non-uniform per-row weights: backward recomputes with them
    _compare(get_divergence("jsd", beta=0.3), "both", torch.float64, FLOAT64, mask=mask, reduce=reductions[reduce])


def test_padded_vocabulary_rows_are_masked_like_minus_inf_logits():
    student, teacher = _inputs(torch.float64, 3)
    for model in (student, teacher):
        model["bias"][-4:] = float("-inf")  # padded rows: a weight row masked to a -inf logit
    div = get_divergence("kl")
    leaves = _leaves(student)
    values = _fused(div, "both", leaves, teacher)
    grads = torch.autograd.grad(values.sum(), [leaves["hidden"], leaves["weight"], leaves["bias"]])
    trimmed = {key: value[:-4] if key != "hidden" else value for key, value in student.items()}
    trimmed_teacher = {key: value[:-4] if key != "hidden" else value for key, value in teacher.items()}
    reference = _leaves(trimmed)
    expected = _unfused(div, "both", reference, trimmed_teacher)
    expected_grads = torch.autograd.grad(expected.sum(), [reference["hidden"], reference["weight"], reference["bias"]])
    torch.testing.assert_close(values, expected)
    torch.testing.assert_close(grads[0], expected_grads[0])
    torch.testing.assert_close(grads[1][:-4], expected_grads[1])
    assert (grads[1][-4:] == 0).all() and (grads[2][-4:] == 0).all()


def test_teacher_gets_no_gradient_and_a_second_backward_recomputes():
    student, teacher = _inputs(torch.float64, 4)
    teacher = {key: value.clone().requires_grad_() for key, value in teacher.items()}
    leaves = _leaves(student)
    values = _fused(get_divergence("js"), "both", leaves, teacher)
    first = torch.autograd.grad(values.sum(), [leaves["hidden"], leaves["weight"]], retain_graph=True)
    second = torch.autograd.grad(values.sum(), [leaves["hidden"], leaves["weight"]])
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)
    assert all(value.grad is None for value in teacher.values())


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fused_loss_adds_cross_entropy_in_the_same_pass(temperature):
    student, teacher = _inputs(torch.float64, 5)
    labels = torch.tensor([[1, 2, -100, 4], [5, -100, -100, -100], [7, 8, 9, 10]])
    valid = labels != -100
    div = get_divergence("rkl", temperature=temperature)
    leaves = _leaves(student)
    total, values, ce = fused_loss(div, "both", LinearHead(leaves["weight"], leaves["bias"]),
                                   leaves["hidden"].reshape(-1, H_S),
                                   LinearHead(teacher["weight"], teacher["bias"]), teacher["hidden"].reshape(-1, H_T),
                                   div_weights=(valid / valid.sum()).reshape(-1).double(), labels=labels.reshape(-1),
                                   ce_weights=(0.5 * valid / valid.sum()).reshape(-1).double())
    grads = torch.autograd.grad(total, [leaves["hidden"], leaves["weight"], leaves["bias"]])
    reference = _leaves(student)
    logits = reference["hidden"] @ reference["weight"].T + reference["bias"]
    teacher_logits = teacher["hidden"] @ teacher["weight"].T + teacher["bias"]
    expected = masked_mean(div.per_token(logits, teacher_logits), valid) + 0.5 * torch.nn.functional.cross_entropy(
        logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    expected_grads = torch.autograd.grad(expected, [reference["hidden"], reference["weight"], reference["bias"]])
    torch.testing.assert_close(total, expected, **FLOAT64)
    for mine, wanted in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(mine, wanted, **FLOAT64)
    assert ce.shape == (12,) and values.shape == (12,)


def test_bad_shapes_are_named():
    student, teacher = _inputs(torch.float32, 6)
    with pytest.raises(ValueError, match="do not fit"):
        get_divergence("kl").fused(student["hidden"], student["weight"].T, teacher["hidden"], teacher["weight"])
    with pytest.raises(ValueError, match="same vocabulary"):
        get_divergence("kl").fused(student["hidden"], student["weight"], teacher["hidden"], teacher["weight"][:-1])


def test_fused_uses_the_separate_teacher_temperature():
    _compare(get_divergence("rkl", temperature=1.5, teacher_temperature=0.1), "both", torch.float64, FLOAT64)


def test_fused_cross_entropy_alone_is_mle_without_logits():
    student, _ = _inputs(torch.float64, 8)
    labels = torch.tensor([[1, 2, -100, 4], [5, -100, -100, -100], [7, 8, 9, 10]]).reshape(-1)
    valid = labels != -100
    leaves = _leaves(student)
    total, _, ce = fused_loss(None, "both", LinearHead(leaves["weight"], leaves["bias"], softcap=4.0),
                              leaves["hidden"].reshape(-1, H_S), None, None, None, labels=labels,
                              ce_weights=(valid / valid.sum()).double(), chunk_rows=5)
    grads = torch.autograd.grad(total, [leaves["hidden"], leaves["weight"], leaves["bias"]])
    reference = _leaves(student)
    logits = 4.0 * torch.tanh((reference["hidden"] @ reference["weight"].T + reference["bias"]) / 4.0)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, V), labels, ignore_index=-100)
    expected_grads = torch.autograd.grad(expected, [reference["hidden"], reference["weight"], reference["bias"]])
    torch.testing.assert_close(total, expected, **FLOAT64)
    for mine, wanted in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(mine, wanted, **FLOAT64)
