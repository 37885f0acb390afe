"""Divergences against a sparse teacher (fdistill/divergences/sparse.py), against float64 references written here:
the full signal equals the dense divergence, the bucket tail equals the divergence between the coarsened
(k+1)-outcome distributions, renormalize equals KL to the renormalised teacher, the sampled estimator is unbiased,
and the fused path equals the materialised one."""

from __future__ import annotations

import pytest
import torch

from fdistill.divergences import get_divergence
from fdistill.divergences.fused import LinearHead, sparse_fused_loss
from fdistill.divergences.sparse import SparseSignal, check_sparse_support, sparse_per_token

ROWS, VOCAB = 6, 40


def _logits(seed: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(ROWS, VOCAB, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def topk_signal(teacher_logits: torch.Tensor, k: int) -> SparseSignal:
    log_p = torch.log_softmax(teacher_logits, -1)
    logp, ids = log_p.topk(k, dim=-1)
    log_tail = torch.logsumexp(log_p.scatter(-1, ids, float("-inf")), -1)
    return SparseSignal("topk", ids, logp, log_tail=log_tail)


def _grad(loss_of, student: torch.Tensor):
    z = student.clone().requires_grad_()
    value = loss_of(z)
    if not value.requires_grad:  # an identically zero part (e.g. RKL's teacher side)
        return value.detach(), torch.zeros_like(z)
    (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), grad


@pytest.mark.parametrize("tail", ["renormalize", "bucket", "zero"])
def test_the_full_signal_is_the_dense_kl_exactly(tail):
    student, teacher = _logits(1), _logits(2)
    signal = topk_signal(teacher, VOCAB)  # k = V: nothing outside
    value, grad = _grad(lambda z: sparse_per_token(get_divergence("kl"), "both", z, signal, tail), student)
    expected, expected_grad = _grad(lambda z: get_divergence("kl").per_token(z, teacher), student)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def _coarsened(z: torch.Tensor, signal: SparseSignal) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher, student) log-probabilities over the k+1 outcomes: the top-k tokens and the tail."""
    log_q = torch.log_softmax(z, -1)
    student_top = log_q.gather(-1, signal.ids)
    student_tail = torch.logsumexp(log_q.scatter(-1, signal.ids, float("-inf")), -1, keepdim=True)
    return (torch.cat([signal.logp, signal.log_tail.unsqueeze(-1)], -1), torch.cat([student_top, student_tail], -1))


@pytest.mark.parametrize("name", ["kl", "rkl", "js", "jsd", "tvd", "skl", "srkl", "fkl_rkl"])
@pytest.mark.parametrize("part", ["both", "teacher", "student"])
def test_the_bucket_tail_is_the_divergence_between_the_coarsened_distributions(name, part):
    student, teacher = _logits(3), _logits(4)
    signal = topk_signal(teacher, 7)
    div = get_divergence(name, **({"beta": 0.3} if name == "jsd" else {}))
    method = {"both": "per_token", "teacher": "teacher_side", "student": "student_side"}[part]

    def coarsened(z):
        teacher_logp, student_logp = _coarsened(z, signal)
        return getattr(div, method)(student_logp, teacher_logp)  # the registry divergence on k+1 outcomes

    value, grad = _grad(lambda z: sparse_per_token(div, part, z, signal, "bucket"), student)
    expected, expected_grad = _grad(coarsened, student)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)


def test_renormalize_is_kl_to_the_renormalised_teacher_and_zero_the_truncated_sum():
    student, teacher = _logits(5), _logits(6)
    signal = topk_signal(teacher, 9)

    def renormalised_kl(z):
        p = signal.logp.exp() / signal.logp.exp().sum(-1, keepdim=True)
        return (p * (p.log() - torch.log_softmax(z, -1).gather(-1, signal.ids))).sum(-1)

    def truncated(z):
        return (signal.logp.exp() * (signal.logp - torch.log_softmax(z, -1).gather(-1, signal.ids))).sum(-1)

    for tail, reference in (("renormalize", renormalised_kl), ("zero", truncated)):
        value, grad = _grad(lambda z, tail=tail: sparse_per_token(get_divergence("kl"), "both", z, signal, tail),
                            student)
        expected, expected_grad = _grad(reference, student)
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_the_sampled_estimator_is_unbiased_in_value_and_gradient():
    """Tokens drawn from a proposal that is not the teacher (temperature 1.5), importance-weighted: over 3,000 draws
    of m = 8 per row, the mean value and the mean gradient's projection on a fixed direction are within 4 standard
    errors of the exact KL(p ‖ q) and its gradient's."""
    student, teacher = _logits(7, 1.0), _logits(8, 1.5)
    proposal = torch.log_softmax(teacher / 1.5, -1)
    log_p = torch.log_softmax(teacher, -1)
    direction = torch.randn(ROWS, VOCAB, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    exact, exact_grad = _grad(lambda z: get_divergence("kl").per_token(z, teacher), student)
    generator = torch.Generator().manual_seed(10)
    values, projections = [], []
    for _ in range(3000):
        ids = torch.multinomial(proposal.exp(), 8, replacement=True, generator=generator)
        signal = SparseSignal("sampled", ids, log_p.gather(-1, ids), log_proposal=proposal.gather(-1, ids))
        value, grad = _grad(lambda z, s=signal: sparse_per_token(get_divergence("kl"), "both", z, s, "bucket"), student)
        values.append(value)
        projections.append((grad * direction).sum(-1))
    for draws, target in ((torch.stack(values), exact), (torch.stack(projections), (exact_grad * direction).sum(-1))):
        standard_error = draws.std(0) / len(draws) ** 0.5
        assert ((draws.mean(0) - target).abs() < 4 * standard_error).all(), (draws.mean(0), target, standard_error)
        assert (standard_error < 0.1 * target.abs().max()).all()  # tight enough to mean something


@pytest.mark.parametrize(("name", "tail"), [("kl", "bucket"), ("kl", "renormalize"), ("kl", "zero"), ("js", "bucket"),
                                            ("tvd", "bucket"), ("akl", "bucket")])
def test_the_fused_sparse_loss_equals_the_materialised_one(name, tail):
    torch.manual_seed(11)
    hidden, weight = torch.randn(ROWS, 8, dtype=torch.float64), torch.randn(VOCAB, 8, dtype=torch.float64)
    signal = topk_signal(_logits(12), 5)
    div = get_divergence(name)
    weights = torch.rand(ROWS, dtype=torch.float64)

    def materialised(h, w):
        return (sparse_per_token(div, "both", h @ w.T, signal, tail) * weights).sum()

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    expected = materialised(h, w)
    expected_grads = torch.autograd.grad(expected, (h, w))
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    total, _, _ = sparse_fused_loss(div, "both", LinearHead(w2), h2, signal, tail, weights, chunk_rows=2)
    found_grads = torch.autograd.grad(total, (h2, w2))
    torch.testing.assert_close(total, expected, rtol=1e-10, atol=1e-12)
    for found, reference in zip(found_grads, expected_grads, strict=True):
        torch.testing.assert_close(found, reference, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("name", "part", "kind", "tail", "named"), [
    ("rkl", "both", "topk", "renormalize", "tail=bucket"),
    ("js", "teacher", "sampled", "bucket", "only KL"),
    ("engine", "student", "topk", "bucket", "engine"),
    ("kl", "both", "topk", "spread", "tail in"),
])
def test_a_divergence_that_cannot_use_the_signal_is_refused_naming_what_can(name, part, kind, tail, named):
    with pytest.raises(ValueError, match=named):
        check_sparse_support(get_divergence(name), part, kind, tail)
    with pytest.raises(ValueError, match="temperature 1"):
        check_sparse_support(get_divergence("kl", temperature=2.0), "both", "topk", "bucket")
