"""Divergences: float64 references, gradcheck, chunking, robustness, registry, reductions, configs, benchmark."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fdistill.divergences import (
    AdaptiveKL,
    Divergence,
    NonFiniteInputError,
    available_divergences,
    get_divergence,
    masked_mean,
    register_divergence,
    sum_per_sequence,
)
from fdistill.divergences.chunked import autograd_oracle
from tests.divergence_reference import CONFIGS, halves

REPO = Path(__file__).resolve().parents[1]
ALL_KEYS = {"kl", "rkl", "js", "tvd", "jsd", "skl", "srkl", "fkl_rkl", "akl", "akl_r", "engine"}
SHAPES = [(5, 7), (2, 3, 11), (3, 1, 2, 64)]
CONFIG_IDS = [f"{name}-{params}" for name, params in CONFIGS]


def _random_logits(shape, seed, scale=3.0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)


def _assert_matches(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-6):
    """Float32 result vs float64 reference: 1e-6 relative to the tensor's largest value (element-wise
    relative error is meaningless for a 1e-6 value obtained from O(10) float32 log-probabilities)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=rtol * max(scale, 1e-3))


# --- registry and parameters -----------------------------------------------------------------------------


def test_registry_lists_every_key():
    assert set(available_divergences()) == ALL_KEYS


def test_duplicate_name_is_rejected():
    with pytest.raises(ValueError, match="already registered"):

        @register_divergence("kl")
        class AnotherKL(Divergence):
            pass


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match="valid names: akl, akl_r, engine, fkl_rkl, js, jsd, kl"):
        get_divergence("kld")


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("jsd", {"beta": 1.5}, "beta=1.5 is out of range"),
        ("jsd", {"beta": -0.1}, "beta=-0.1 is out of range"),
        ("jsd", {"mixture": "sequence"}, "mixture='sequence' is not one of"),
        ("skl", {"alpha": 1.0}, r"alpha=1.0 is out of range; use a number in \[0.0, 1.0\)"),
        ("srkl", {"alpha": -1}, "alpha=-1 is out of range"),
        ("fkl_rkl", {"weight": 2}, "weight=2 is out of range"),
        ("akl", {"mu": 1.2}, "mu=1.2 is out of range"),
        ("akl", {"detach_weights": "yes"}, "detach_weights='yes' must be true or false"),
        ("kl", {"temperature": 0.0}, "temperature=0.0 must be a finite number > 0"),
        ("kl", {"chunk_tokens": 0}, "chunk_tokens=0 must be a positive integer"),
    ],
)
def test_out_of_range_parameters_raise_clear_errors(name, params, message):
    with pytest.raises(ValueError, match=message):
        get_divergence(name, **params)


def test_unknown_parameter_names_the_accepted_ones():
    with pytest.raises(TypeError, match="unknown parameter.*'beta'.*accepts: alpha, chunk_tokens"):
        get_divergence("skl", beta=0.5)


def test_prefix_logprobs_are_checked():
    s, t = _random_logits((2, 3, 5), 0), _random_logits((2, 3, 5), 1)
    with pytest.raises(TypeError, match="does not use prefix log-probabilities"):
        get_divergence("kl").per_token(s, t, teacher_prefix_logprob=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="needs \\['teacher_prefix_logprob', 'student_prefix_logprob'\\]"):
        get_divergence("js", mixture="prefix").per_token(s, t)
    with pytest.raises(ValueError, match="expected logits.shape\\[:-1\\] = \\(2, 3\\)"):
        get_divergence("js", mixture="prefix").per_token(
            s, t, teacher_prefix_logprob=torch.zeros(2), student_prefix_logprob=torch.zeros(2)
        )
    with pytest.raises(ValueError, match="must have the same shape"):
        get_divergence("kl").per_token(s, t[..., :4])


@pytest.mark.parametrize(
    ("name", "params", "needs"),
    [
        ("kl", {}, {"teacher"}),
        ("rkl", {}, {"student"}),
        ("js", {}, {"teacher", "student"}),
        ("tvd", {}, {"teacher", "student"}),
        ("jsd", {"beta": 0.0}, {"teacher"}),
        ("jsd", {"beta": 1.0}, {"student"}),
        ("skl", {}, {"teacher"}),
        ("srkl", {}, {"student"}),
        ("fkl_rkl", {"weight": 1.0}, {"teacher"}),
        ("akl", {}, {"teacher", "student"}),
    ],
)
def test_needs(name, params, needs):
    assert get_divergence(name, **params).needs == frozenset(needs)


# --- values against the float64 reference ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_reference(name, params, shape):
    seed = abs(hash((name, str(params), shape))) % 2**31
    s, t = _random_logits(shape, seed), _random_logits(shape, seed + 1)
    expected_teacher, expected_student = halves(name, params, s, t)
    div = get_divergence(name, **params)
    values = {part: getattr(div, part)(s, t) for part in ("teacher_side", "student_side", "per_token")}
    assert all(v.shape == shape[:-1] and v.dtype == torch.float32 for v in values.values())
    _assert_matches(values["teacher_side"], expected_teacher)
    _assert_matches(values["student_side"], expected_student)
    _assert_matches(values["per_token"], expected_teacher + expected_student)


@pytest.mark.parametrize(("name", "params"), [("kl", {}), ("js", {}), ("akl", {}), ("tvd", {})])
def test_temperature_divides_both_logits(name, params):
    s, t = _random_logits((4, 9), 3), _random_logits((4, 9), 4)
    expected_teacher, expected_student = halves(name, params, s, t, temperature=2.5)
    _assert_matches(get_divergence(name, temperature=2.5, **params).per_token(s, t), expected_teacher + expected_student)


@pytest.mark.parametrize("beta", [0.3, 0.5])
def test_prefix_mixture_matches_reference(beta):
    s, t = _random_logits((3, 4, 6), 5), _random_logits((3, 4, 6), 6)
    prefix = (-3 * torch.rand(3, 4), -3 * torch.rand(3, 4))
    kwargs = {"teacher_prefix_logprob": prefix[0], "student_prefix_logprob": prefix[1]}
    div = get_divergence("jsd", beta=beta, mixture="prefix")
    expected_teacher, expected_student = halves("jsd", {"beta": beta}, s, t, prefix=prefix)
    _assert_matches(div.teacher_side(s, t, **kwargs), expected_teacher)
    _assert_matches(div.student_side(s, t, **kwargs), expected_student)
    # equal prefix probabilities give back the step mixture
    equal = {"teacher_prefix_logprob": prefix[0], "student_prefix_logprob": prefix[0]}
    torch.testing.assert_close(div.per_token(s, t, **equal), get_divergence("jsd", beta=beta).per_token(s, t))


# --- gradients ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_gradcheck_float64(name, params):
    s = _random_logits((3, 5), 7, dtype=torch.float64).requires_grad_()
    t = _random_logits((3, 5), 8, dtype=torch.float64).requires_grad_()
    div = get_divergence(name, chunk_tokens=2, **params)  # two chunks, the last one partial
    if isinstance(div, AdaptiveKL) and div.detach_weights:
        # by design not the derivative of the value: compare with the reference's autograd, whose weights
        # come from numpy and so are constants as well
        weights = torch.rand(3, dtype=torch.float64)
        ours = torch.autograd.grad((div.per_token(s, t) * weights).sum(), (s, t))
        expected = torch.autograd.grad((sum(halves(name, params, s, t)) * weights).sum(), (s, t))
        for a, b in zip(ours, expected, strict=True):
            torch.testing.assert_close(a, b)
        return
    assert torch.autograd.gradcheck(div.per_token, (s, t), fast_mode=True)


@pytest.mark.parametrize("part", ["teacher_side", "student_side"])
def test_gradcheck_float64_halves(part):
    s = _random_logits((3, 5), 7, dtype=torch.float64).requires_grad_()
    t = _random_logits((3, 5), 8, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(getattr(get_divergence("jsd", beta=0.3, chunk_tokens=2), part), (s, t), fast_mode=True)


def test_gradcheck_prefix_mixture_including_prefix_logprobs():
    s = _random_logits((2, 5), 9, dtype=torch.float64).requires_grad_()
    t = _random_logits((2, 5), 10, dtype=torch.float64).requires_grad_()
    prefix_p = (-torch.rand(2, dtype=torch.float64)).requires_grad_()
    prefix_q = (-torch.rand(2, dtype=torch.float64)).requires_grad_()
    div = get_divergence("jsd", beta=0.3, mixture="prefix")

    def both_sides(s, t, lp, lq):
        kwargs = {"teacher_prefix_logprob": lp, "student_prefix_logprob": lq}
        return div.teacher_side(s, t, **kwargs), div.student_side(s, t, **kwargs)

    assert torch.autograd.gradcheck(both_sides, (s, t, prefix_p, prefix_q), fast_mode=True)


def test_akl_detach_weights_changes_only_the_gradient():
    s = _random_logits((4, 8), 11).requires_grad_()
    t = _random_logits((4, 8), 12)
    grads = {}
    for detach in (True, False):
        value = get_divergence("akl", detach_weights=detach).per_token(s, t).sum()
        (grads[detach],) = torch.autograd.grad(value, s)
        grads[(detach, "value")] = value.detach()
    torch.testing.assert_close(grads[(True, "value")], grads[(False, "value")])
    assert not torch.allclose(grads[True], grads[False])


@pytest.mark.parametrize("name", ["kl", "js", "akl"])
def test_chunk_size_does_not_change_values_or_gradients(name):
    t = _random_logits((5, 3, 17), 13)
    results = []
    for chunk_tokens in (1, 4, None):
        s = _random_logits((5, 3, 17), 14).requires_grad_()
        value = get_divergence(name, chunk_tokens=chunk_tokens).per_token(s, t)
        (grad,) = torch.autograd.grad((value * torch.linspace(0, 1, 3)).sum(), s)
        results.append((value.detach(), grad))
    for value, grad in results[1:]:
        torch.testing.assert_close(value, results[0][0], rtol=0, atol=0)
        torch.testing.assert_close(grad, results[0][1], rtol=0, atol=0)


def test_second_backward_through_retained_graph_recomputes_the_same_gradient():
    s = _random_logits((6, 9), 15).requires_grad_()
    t = _random_logits((6, 9), 16).requires_grad_()
    loss = masked_mean(get_divergence("js", chunk_tokens=4).per_token(s, t), torch.ones(6, dtype=torch.bool))
    first = torch.autograd.grad(loss, (s, t), retain_graph=True)
    second = torch.autograd.grad(loss, (s, t))
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)


def test_gradient_matches_plain_autograd_of_the_reference():
    s = _random_logits((4, 10), 17, dtype=torch.float64).requires_grad_()
    t = _random_logits((4, 10), 18, dtype=torch.float64).requires_grad_()
    weights = torch.rand(4, dtype=torch.float64)
    ours = torch.autograd.grad((get_divergence("jsd", beta=0.3).per_token(s, t) * weights).sum(), (s, t))
    teacher_half, student_half = halves("jsd", {"beta": 0.3}, s, t)
    expected = torch.autograd.grad(((teacher_half + student_half) * weights).sum(), (s, t))
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b)


# --- robustness --------------------------------------------------------------------------------------------


def _check_finite(name, params, s, t, mask=None):
    s = s.detach().requires_grad_()
    values = get_divergence(name, **params).per_token(s, t)
    assert torch.isfinite(values).all(), (name, values)
    loss = masked_mean(values, torch.ones(values.shape, dtype=torch.bool) if mask is None else mask)
    loss.backward()
    assert torch.isfinite(s.grad).all(), name
    return values.detach()


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_padded_vocabulary_equals_the_unpadded_divergence(name, params):
    s, t = _random_logits((2, 3, 6), 19), _random_logits((2, 3, 6), 20)
    pad = torch.full((2, 3, 4), float("-inf"))
    padded = _check_finite(name, params, torch.cat([s, pad], -1), torch.cat([t, pad], -1))
    torch.testing.assert_close(padded, get_divergence(name, **params).per_token(s, t))


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_one_sided_minus_inf_and_empty_rows_stay_finite(name, params):
    s, t = _random_logits((3, 6), 21), _random_logits((3, 6), 22)
    s[0, 1] = float("-inf")  # student masks an entry the teacher keeps
    t[1, 2] = float("-inf")  # and the other way round
    s[2], t[2] = float("-inf"), float("-inf")  # a position with no finite entry at all
    values = _check_finite(name, params, s, t)
    assert values[2] == 0
    # the masked entry is removed from both distributions (renormalised over the shared support)
    keep = [0, 2, 3, 4, 5]
    expected = get_divergence(name, **params).per_token(s[0, keep], t[0, keep])
    torch.testing.assert_close(values[0], expected)


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_huge_logits_stay_finite(name, params):
    s = _random_logits((4, 8), 23, scale=1e4)
    t = _random_logits((4, 8), 24, scale=1e4)
    values = _check_finite(name, params, s, t)
    expected_teacher, expected_student = halves(name, params, s, t)
    torch.testing.assert_close(values.double(), expected_teacher + expected_student, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("name", "params"), [("kl", {}), ("js", {}), ("tvd", {}), ("akl", {})])
def test_half_precision_inputs_are_computed_in_float32(name, params, dtype):
    s, t = _random_logits((3, 4, 12), 25, dtype=dtype), _random_logits((3, 4, 12), 26, dtype=dtype)
    values = _check_finite(name, params, s, t)
    assert values.dtype == torch.float32
    expected_teacher, expected_student = halves(name, params, s.float(), t.float())
    _assert_matches(values, expected_teacher + expected_student)


@pytest.mark.parametrize("name", ["kl", "rkl", "js", "tvd", "akl"])
def test_masked_positions_are_not_computed(name):
    s, t = _random_logits((2, 4, 5), 27), _random_logits((2, 4, 5), 28)
    s[0, 3] = float("nan")  # garbage in a padded position: never looked at
    labels = torch.tensor([[5, 6, 7, -100], [-100, 1, 2, -100]])
    mask = labels != -100
    s.requires_grad_()
    values = get_divergence(name).per_token(s, t, mask=mask)
    loss = masked_mean(values, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert (s.grad[~mask] == 0).all() and (values[~mask] == 0).all()
    unmasked = get_divergence(name).per_token(s.detach()[mask], t[mask])
    torch.testing.assert_close(values[mask], unmasked)


@pytest.mark.parametrize("name", ["kl", "rkl", "js", "jsd", "tvd", "skl", "srkl", "akl", "fkl_rkl"])
@pytest.mark.parametrize(("tensor", "bad"), [("student", float("nan")), ("teacher", float("nan")),
                                             ("student", float("inf")), ("teacher", float("inf"))])
def test_nan_and_positive_inf_raise_with_the_tensor_and_position(name, tensor, bad):
    """NaN/+inf is a diverged model, never a masked entry: a loss of 0 would hide it (only -inf masks)."""
    s, t = _random_logits((2, 3, 10), 29), _random_logits((2, 3, 10), 30)
    (s if tensor == "student" else t)[1, 2, 7] = bad
    kind = "NaN" if bad != bad else r"\+inf"
    for chunk_tokens in (None, 1):  # the position is reported in the caller's shape, whatever the chunking
        with pytest.raises(NonFiniteInputError, match=rf"{tensor} logits contain {kind} at position \(1, 2, 7\)"):
            get_divergence(name, chunk_tokens=chunk_tokens).per_token(s.requires_grad_(), t)
        s = s.detach()


def test_negative_inf_stays_a_masked_entry():
    s, t = _random_logits((2, 3, 10), 31), _random_logits((2, 3, 10), 32)
    s[..., 4], t[..., 4] = float("-inf"), float("-inf")
    values = get_divergence("kl").per_token(s, t)
    expected = get_divergence("kl").per_token(torch.cat([s[..., :4], s[..., 5:]], -1),
                                              torch.cat([t[..., :4], t[..., 5:]], -1))
    torch.testing.assert_close(values, expected)


# --- reductions --------------------------------------------------------------------------------------------


def test_masked_mean_and_sum_per_sequence():
    values = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert masked_mean(values, mask).item() == pytest.approx((1 + 2 + 4 + 6) / 4)
    torch.testing.assert_close(sum_per_sequence(values, mask), torch.tensor([3.0, 10.0]))
    masked_mean(values, mask).backward()
    torch.testing.assert_close(values.grad, mask.float() / 4)
    empty = masked_mean(values, torch.zeros_like(mask))
    assert empty.item() == 0 and empty.requires_grad
    with pytest.raises(ValueError, match="same shape"):
        masked_mean(values, mask[:, :2])


# --- configs and benchmark ---------------------------------------------------------------------------------


def test_every_divergence_has_a_loadable_config():
    files = [REPO / "conf" / "divergence" / f"{key}.yaml" for key in sorted(ALL_KEYS)]
    for file in files:
        config = yaml.safe_load(file.read_text())
        config = config.get("divergence", config)  # baseline configs (engine) also set pipeline values
        assert {"name", "temperature", "params"} <= set(config) and config["name"] == file.stem
        div = get_divergence(config["name"], temperature=config["temperature"], **(config["params"] or {}))
        assert div.per_token(_random_logits((2, 5), 1), _random_logits((2, 5), 2)).shape == (2,)


def _import_benchmark():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench_divergences
    finally:
        sys.path.pop(0)
    return bench_divergences


def test_benchmark_naive_references_agree_with_fdistill():
    bench = _import_benchmark()
    s, t = _random_logits((6, 40), 29), _random_logits((6, 40), 30)
    for label, key, params in bench.CASES:
        expected = get_divergence(key, **params).per_token(s, t)
        torch.testing.assert_close(bench.naive_per_token(key, params, s, t), expected, msg=label)


def test_benchmark_writes_a_table(tmp_path, monkeypatch):
    bench = _import_benchmark()
    # cases in this process instead of fresh subprocesses (the real run isolates them)
    def in_process(args, impl, label, tokens, vocab, hidden):
        return bench.run_case(impl, label, tokens, vocab, hidden, args.threads, None, repeats=1)

    monkeypatch.setattr(bench, "_subprocess_case", in_process)
    out = tmp_path / "bench.md"
    monkeypatch.setattr(sys, "argv", ["bench_divergences.py", "--sizes", "4x16", "--cases", "kl,akl", "--rounds", "2",
                                      "--fused-sizes", "4x16x8", "--threads", "1", "--no-liger", "--out", str(out)])
    bench.main()
    text = out.read_text()
    assert "| 4 × 16 | kl |" in text and "| 4 × 16 | akl |" in text and "Machine:" in text
    assert "| 4 × 16 × 8 |" in text and "Load average" in text


@pytest.mark.slow
def test_benchmark_cli_runs_each_case_in_a_subprocess(tmp_path):
    out = tmp_path / "bench.md"
    command = [sys.executable, str(REPO / "scripts" / "bench_divergences.py"), "--sizes", "4x16", "--cases", "kl",
               "--rounds", "1", "--fused-sizes", "4x16x8", "--no-liger", "--out", str(out)]
    subprocess.run(command, check=True, cwd=REPO, capture_output=True)
    assert "| 4 × 16 | kl |" in out.read_text()


# --- closed-form gradients against the autograd oracle -------------------------------------------------------

ORACLE_CONFIGS = [*CONFIGS, ("akl_r", {"detach_weights": False, "mu": 0.3}), ("jsd", {"beta": 0.7}),
                  ("srkl", {"alpha": 0.0}), ("fkl_rkl", {"weight": 0.0}), ("akl", {"mu": 1.0}), ("akl", {"mu": 0.0})]


def _gradients(div, part, s, t, weights, oracle, **prefix):
    leaves = [x.detach().clone().requires_grad_() for x in (s, *prefix.values())]
    kwargs = dict(zip(prefix, leaves[1:], strict=True))
    with autograd_oracle() if oracle else contextlib.nullcontext():
        values = getattr(div, part)(leaves[0], t, **kwargs)
        if not values.requires_grad:  # an identically zero part
            return values, [torch.zeros_like(leaf) for leaf in leaves]
        grads = torch.autograd.grad((values * weights).sum(), leaves)
    return values.detach(), grads


@pytest.mark.parametrize(("name", "params"), ORACLE_CONFIGS, ids=lambda item: str(item))
@pytest.mark.parametrize("part", ["per_token", "teacher_side", "student_side"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_closed_form_equals_autograd_oracle_float64(name, params, part, temperature):
    s, t = _random_logits((3, 4, 11), 40, dtype=torch.float64), _random_logits((3, 4, 11), 41, dtype=torch.float64)
    s[0, 1, 3], t[0, 1, 3] = float("-inf"), float("-inf")  # a padded entry
    t[2, 0, 5] = float("-inf")                              # one-sided: removed for both
    weights = torch.rand(3, 4, dtype=torch.float64)
    div = get_divergence(name, temperature=temperature, chunk_tokens=5, **params)
    ours, ours_grads = _gradients(div, part, s, t, weights, oracle=False)
    oracle, oracle_grads = _gradients(div, part, s, t, weights, oracle=True)
    torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours_grads[0], oracle_grads[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("part", ["per_token", "teacher_side", "student_side"])
def test_closed_form_prefix_mixture_gradients_equal_the_oracle(beta, part):
    s, t = _random_logits((2, 3, 7), 42, dtype=torch.float64), _random_logits((2, 3, 7), 43, dtype=torch.float64)
    prefix = {"teacher_prefix_logprob": -3 * torch.rand(2, 3, dtype=torch.float64),
              "student_prefix_logprob": -3 * torch.rand(2, 3, dtype=torch.float64)}
    weights = torch.rand(2, 3, dtype=torch.float64)
    div = get_divergence("jsd", beta=beta, mixture="prefix", temperature=1.3)
    ours, ours_grads = _gradients(div, part, s, t, weights, oracle=False, **prefix)
    oracle, oracle_grads = _gradients(div, part, s, t, weights, oracle=True, **prefix)
    torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-12)
    for mine, reference in zip(ours_grads, oracle_grads, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_closed_form_float32_is_close_to_the_float64_oracle(name, params):
    s, t = _random_logits((64, 300), 44) * 3, _random_logits((64, 300), 45) * 3
    weights = torch.rand(64)
    div = get_divergence(name, **params)
    ours, ours_grads = _gradients(div, "per_token", s, t, weights, oracle=False)
    oracle, oracle_grads = _gradients(div, "per_token", s.double(), t.double(), weights.double(), oracle=True)
    torch.testing.assert_close(ours.double(), oracle, rtol=1e-5, atol=1e-6)
    # float32 rounding of the closed form is of the order of the float32 autograd path's (a few 1e-6 here)
    torch.testing.assert_close(ours_grads[0].double(), oracle_grads[0], rtol=1e-4, atol=5e-6)


def test_akl_mu_one_is_exactly_kl_and_mu_zero_exactly_rkl_in_float32():
    s, t = torch.randn(1, 4, 32000) * 3, torch.randn(1, 4, 32000) * 3
    torch.testing.assert_close(get_divergence("akl", mu=1.0).per_token(s, t), get_divergence("kl").per_token(s, t),
                               rtol=0, atol=0)
    torch.testing.assert_close(get_divergence("akl", mu=0.0).per_token(s, t), get_divergence("rkl").per_token(s, t),
                               rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mu", [0.05, 0.5, 0.9, 0.999])
def test_akl_head_is_every_token_whose_strictly_more_probable_mass_is_below_mu(dtype, mu):
    """The binned head split == the definition, by pairwise comparison in float64 (no sort): rows flat to
    peaked, integer logits (many exact ties: tied tokens share one fate), −inf padding, an all −inf row."""
    torch.manual_seed(5)
    logits = torch.cat([torch.randn(4, 600) * scale for scale in (0.1, 1.0, 3.0, 30.0)]).to(dtype)
    logits[-2:] = logits[-2:].round()  # ties
    logits[1, 450:] = float("-inf")
    logits = torch.cat([logits, torch.full((1, 600), float("-inf"), dtype=dtype)])
    p = torch.softmax(logits, -1).nan_to_num(0.0)
    wide = p.double()
    more_probable_mass = (wide.unsqueeze(-2) * (wide.unsqueeze(-2) > wide.unsqueeze(-1))).sum(-1)
    expected = more_probable_mass < mu * wide.sum(-1, keepdim=True)
    for sync_free in (False, True):  # top-k over the boundary bin (CPU) and bisection (accelerators, no host sync)
        head = get_divergence("akl", mu=mu).head_mask(p, sync_free=sync_free)
        assert torch.equal(head, expected), (sync_free, (head != expected).nonzero()[:5])
        assert not head[-1].any()


def test_akl_head_split_in_float32_matches_float64():
    t = torch.randn(8, 32000) * 3
    div = get_divergence("akl", mu=0.9)
    head32 = div.head_mask(torch.softmax(t, -1))
    head64 = div.head_mask(torch.softmax(t.double(), -1))
    assert (head32 != head64).sum() <= 2  # ties at the boundary token at most, not a spurious tail


@pytest.mark.parametrize("name", ["kl", "js", "tvd", "akl"])
def test_temperature_scaling_squared_multiplies_values_and_gradients_by_tau_squared(name):
    s, t = _random_logits((4, 9), 46).requires_grad_(), _random_logits((4, 9), 47)
    plain = get_divergence(name, temperature=2.0).per_token(s, t)
    (plain_grad,) = torch.autograd.grad(plain.sum(), s)
    squared = get_divergence(name, temperature=2.0, temperature_scaling="squared").per_token(s, t)
    (squared_grad,) = torch.autograd.grad(squared.sum(), s)
    torch.testing.assert_close(squared, 4 * plain)
    torch.testing.assert_close(squared_grad, 4 * plain_grad)
    with pytest.raises(ValueError, match="temperature_scaling='cubed'"):
        get_divergence(name, temperature_scaling="cubed")


@pytest.mark.parametrize(("name", "params"), [("kl", {}), ("rkl", {}), ("jsd", {"beta": 0.9}), ("tvd", {})])
def test_a_separate_teacher_temperature_scales_only_the_teacher(name, params):
    """GKD Table A.1: teacher softmax temperature 0.1 while the student's stays 1."""
    s, t = _random_logits((4, 9), 48, dtype=torch.float64).requires_grad_(), _random_logits((4, 9), 49, dtype=torch.float64)
    values = get_divergence(name, teacher_temperature=0.1, **params).per_token(s, t)
    expected = get_divergence(name, **params).per_token(s, t / 0.1)
    torch.testing.assert_close(values, expected)
    (grad,) = torch.autograd.grad(values.sum(), s)
    (expected_grad,) = torch.autograd.grad(expected.sum(), s)
    torch.testing.assert_close(grad, expected_grad)
