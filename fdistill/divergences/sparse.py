"""Divergences against a sparse teacher: at each position the teacher's distribution is known only on a few
tokens (a cached or served signal), the student's densely (its logits, or its hidden states and head in the
fused path: only its log-sum-exp and the gathered entries are needed, never [tokens, V] logits in full).

Two kinds of signal (:class:`SparseSignal`):

* ``topk``: the k most probable tokens, their log-probabilities and the log of the mass outside them (the tail
  r). Three ways to treat the tail (``tail``):
    - ``renormalize``: the teacher renormalised over its top-k, p̃ = p/(1 − r); KL(p̃ ‖ q) exactly.
    - ``zero``: the top-k terms alone, not renormalised (a target of mass 1 − r): Σ_S p (log p − log q).
    - ``bucket``: the (k+1)-outcome coarsening, the tail one outcome of mass r for the teacher and q_tail for
      the student: the exact divergence between the coarsened distributions. For every f-divergence (KL, RKL,
      JS, JSD(β), TVD, the skew KLs, FKL+RKL) this equals the divergence against p̂ = the top-k, and the tail r
      spread in the student's own shape (p̂_v = r·q_v/q_tail), gradient included (on the tail p̂/q is constant,
      so each term collapses to the coarsened one), so every registry divergence's closed form serves
      unchanged; AKL (not an f-divergence) is then AKL against p̂.
* ``sampled`` (RSKD, Anshumann et al. 2025): m tokens drawn from a proposal π (the teacher at a proposal
  temperature) with their teacher and proposal log-probabilities; the importance-weighted estimate
  (1/m) Σ_j (p_j/π_j)(log p_j − log q_j) of KL(p ‖ q) and its gradient are unbiased.

The KL-type losses share one closed form: value Σ_j a_j (c_j − log q_j), gradient ∂/∂z = (Σ_j a_j)·q − Σ_j a_j e_j
(+ the bucket's r·(log r − log q_tail), gradient r·q − r·q/q_tail off the top-k).

Which divergences a sparse teacher supports (:func:`check_sparse_support`): ``kl`` (and FKL+RKL's teacher half)
with every tail and ``sampled``; every other registry divergence but ENGINE with ``tail=bucket`` only
(renormalize and zero leave the teacher zero off its top-k, where RKL-type terms are infinite, and a mixture's
teacher half is not a KL). The teacher's temperature must be 1 (the signal holds its log-probabilities at 1).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

KINDS = ("topk", "sampled")
TAILS = ("renormalize", "bucket", "zero")


@dataclass
class SparseSignal:
    """A teacher's distribution at R positions: token ids [R, k] and their teacher log-probabilities [R, k];
    ``log_tail`` [R] (topk: log of the mass outside the k, −inf when they hold it all); ``log_proposal`` [R, k]
    (sampled: the proposal's log-probabilities of the drawn ids)."""

    kind: str
    ids: Tensor
    logp: Tensor
    log_tail: Tensor | None = None
    log_proposal: Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}; expected one of {KINDS}")
        if self.ids.shape != self.logp.shape or self.ids.dim() != 2:
            raise ValueError(f"ids {tuple(self.ids.shape)} and logp {tuple(self.logp.shape)} must both be [rows, k]")
        if self.kind == "topk" and (self.log_tail is None or self.log_tail.shape != self.ids.shape[:1]):
            raise ValueError("a top-k signal needs log_tail [rows]")
        if self.kind == "sampled" and (self.log_proposal is None or self.log_proposal.shape != self.ids.shape):
            raise ValueError("a sampled signal needs log_proposal [rows, m]")

    def select(self, index: Tensor) -> SparseSignal:
        """The rows `index` (a boolean mask or integer indices)."""
        return SparseSignal(self.kind, *(None if getattr(self, item.name) is None else getattr(self, item.name)[index]
                                         for item in fields(self)[1:]))

    def to(self, device) -> SparseSignal:
        return SparseSignal(self.kind, *(None if getattr(self, item.name) is None else getattr(self, item.name).to(device)
                                         for item in fields(self)[1:]))

    def pieces(self) -> list[Tensor]:
        """Row-aligned tensors for chunking: ids, logp, log_tail (zeros when absent), log_proposal (likewise)."""
        rows = self.ids.shape[0]
        tail = self.log_tail if self.log_tail is not None else self.logp.new_zeros(rows)
        proposal = self.log_proposal if self.log_proposal is not None else torch.zeros_like(self.logp)
        return [self.ids, self.logp, tail, proposal]


def direct_kl_weight(divergence, part: str) -> float | None:
    """The factor c when `part` of `divergence` is c·KL(p ‖ q) (the sparse KL closed form applies), else None."""
    if divergence.name == "kl":
        return 0.0 if part == "student" else 1.0
    if divergence.name == "fkl_rkl" and part == "teacher":
        return divergence.weight
    return None


def check_sparse_support(divergence, part: str, kind: str, tail: str) -> None:
    """Raise a ValueError naming what works when `part` of `divergence` cannot use a `kind`/`tail` signal."""
    if kind not in KINDS or tail not in TAILS:
        raise ValueError(f"teacher signal kind={kind!r}, tail={tail!r}; expected kind in {KINDS}, tail in {TAILS}")
    if divergence.temperature != 1.0 or divergence.teacher_temperature not in (None, 1.0):
        raise ValueError(f"divergence {divergence.name!r} at temperature {divergence.temperature} (teacher "
                         f"{divergence.teacher_temperature}): a sparse teacher signal holds log-probabilities at "
                         "temperature 1; use temperature 1 or the dense teacher")
    if divergence.name == "engine":
        raise ValueError("divergence 'engine' reads the teacher's log-probability of every student token; it cannot "
                         "use a sparse teacher signal (use the dense teacher)")
    if divergence.uses_prefix_logprobs:
        raise ValueError(f"divergence {divergence.name!r} with mixture='prefix' needs the teacher's prefix "
                         "log-probabilities; use mixture='step' or the dense teacher")
    direct = direct_kl_weight(divergence, part) is not None
    if (kind == "sampled" or tail != "bucket") and not direct:
        what = "sampled tokens" if kind == "sampled" else f"tail={tail}"
        raise ValueError(f"the {part!r} part of divergence {divergence.name!r} cannot use a sparse teacher with {what}: "
                         "only KL(p‖q) (kl, and the teacher half of fkl_rkl) can; every other divergence except engine "
                         "works with a top-k signal and tail=bucket (the exact divergence between the (k+1)-outcome "
                         "coarsened distributions)")


def sparse_kl_chunk(z: Tensor, pieces: list[Tensor], kind: str, tail: str, factor: float
                    ) -> tuple[Tensor, Tensor]:
    """factor·KL-type loss per row of student logits `z` [c, V] against one chunk of a sparse signal, and its
    gradient ∂/∂z [c, V] (see the module docstring)."""
    ids, logp, log_tail, log_proposal = pieces
    ids, logp = ids.long(), logp.to(z.dtype)
    log_q = torch.log_softmax(z, dim=-1)
    q = log_q.exp()
    log_q_ids = log_q.gather(-1, ids)
    if kind == "sampled":
        weights = torch.exp(logp - log_proposal.to(z.dtype)) / ids.shape[-1]
        constants = logp
    elif tail == "renormalize":
        log_mass = torch.logsumexp(logp, dim=-1, keepdim=True)
        constants = logp - log_mass
        weights = constants.exp()
    else:
        weights, constants = logp.exp(), logp
    values = (weights * (constants - log_q_ids)).sum(-1)
    total = weights.sum(-1)
    tail_grad = None
    if kind == "topk" and tail == "bucket":
        log_tail = log_tail.to(z.dtype)
        log_q_tail = torch.logsumexp(log_q.scatter(-1, ids, float("-inf")), dim=-1)
        # no tail where the top-k hold every entry (a tail mass there is rounding: nothing is outside)
        tail_mass = torch.where(torch.isfinite(log_q_tail), log_tail.exp(), torch.zeros_like(log_tail))
        values = values + torch.where(tail_mass > 0, tail_mass * (log_tail - log_q_tail), torch.zeros_like(tail_mass))
        total = total + tail_mass
        share = torch.where(tail_mass > 0, torch.exp(log_tail - log_q_tail), torch.zeros_like(tail_mass))
        tail_grad = (q * share.unsqueeze(-1)).scatter_(-1, ids, 0.0)
    grad = q.mul_(total.unsqueeze(-1)).scatter_add_(-1, ids, -weights)
    if tail_grad is not None:
        grad.sub_(tail_grad)
    if factor != 1.0:
        values, grad = values * factor, grad.mul_(factor)
    return values, grad


def bucket_teacher_logits(z: Tensor, pieces: list[Tensor]) -> Tensor:
    """log p̂ [c, V]: the teacher's top-k log-probabilities, and the tail mass r spread in the student's shape
    (log r + log q_v − log q_tail): a full distribution against which every f-divergence is the coarsened one."""
    ids, logp, log_tail, _ = pieces
    ids = ids.long()
    log_q = torch.log_softmax(z, dim=-1)
    log_q_tail = torch.logsumexp(log_q.scatter(-1, ids, float("-inf")), dim=-1, keepdim=True)
    log_p_hat = log_q + (log_tail.to(z.dtype).unsqueeze(-1) - log_q_tail)
    return log_p_hat.scatter_(-1, ids, logp.to(z.dtype))


def sparse_per_token(divergence, part: str, student_logits: Tensor, signal: SparseSignal, tail: str) -> Tensor:
    """`part` of `divergence` per row of materialised student logits [R, V] against `signal` (rows aligned), with
    gradients to the logits (chunked, closed form)."""
    from fdistill.divergences.chunked import chunked_rows, default_chunk_rows
    from fdistill.divergences.losses import logit_gradient, token_distributions

    check_sparse_support(divergence, part, signal.kind, tail)
    wide = student_logits.dtype == torch.float64
    compute_dtype = torch.float64 if wide else torch.float32
    if divergence.part_is_zero(part):
        return torch.zeros(student_logits.shape[0], dtype=compute_dtype, device=student_logits.device)
    factor = direct_kl_weight(divergence, part)

    def row_grads(pieces, out_grads):
        z, *signal_pieces = pieces
        z = z.to(compute_dtype)
        with torch.no_grad():
            if factor is not None:
                values, grad = sparse_kl_chunk(z, signal_pieces, signal.kind, tail, factor * divergence.scale)
            else:
                dist = token_distributions(z, bucket_teacher_logits(z, signal_pieces), 1.0)
                result = divergence.closed_form(dist, part)
                values = result.values * divergence.scale
                grad = logit_gradient(result, dist.q, divergence.scale) if (
                    result.h is not None or result.gradient is not None) else torch.zeros_like(z)
            if out_grads[0] is not None:
                out_grads[0].copy_(grad)
        return values

    rows = divergence.chunk_tokens or default_chunk_rows(student_logits.shape[-1], student_logits.device)
    return chunked_rows(row_grads, [student_logits, *signal.pieces()], rows, compute_dtype)
