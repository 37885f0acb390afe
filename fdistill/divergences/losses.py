"""Token-level divergences between teacher ``p`` and student ``q`` given as logits ``[..., V]``.

Every divergence defines its math once, on one chunk of rows, as the two halves of the f-DISTILL step-wise
decomposition (Wen et al. 2023, Eqs. 6-10, Theorem 1)::

    teacher_side(p_t, q_t)  -- evaluated on teacher-sampled prefixes  (expectation under p)
    student_side(p_t, q_t)  -- evaluated on student-sampled prefixes  (expectation under q)
    per_token = teacher_side + student_side  -- the full token-level divergence D(p_t || q_t) (GKD Eq. 2)

A half that is identically zero is ``None`` and is never computed. The shared chunked autograd mechanism
(``chunked.py``) runs the math in float32 (float64 for float64 inputs) on a bounded chunk of tokens.

Vocabulary entries whose logit is ``-inf`` (padded vocabulary) have probability zero. An entry that is
``-inf`` for either model is removed for both and both distributions are renormalised over the shared
support: exact for a padded vocabulary (both ``-inf``), and it keeps every divergence finite, ``>= 0`` and
zero for equal inputs when only one model masks an entry (where e.g. KL(p||q) would be infinite). A
position with no shared finite entry gets divergence 0 and gradient 0. NaN or ``+inf`` in either input is
never a mask: it raises :class:`NonFiniteInputError` naming the tensor and the position (a diverged model
must not train on a loss of 0).
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import torch
from torch import Tensor

from fdistill.divergences.chunked import (
    DEFAULT_CHUNK_ELEMENTS,
    NonFiniteInputError,
    chunked_rows,
    default_chunk_rows,
)
from fdistill.divergences.registry import register_divergence

MIXTURES = ("step", "prefix")


class TokenDistributions:
    """Teacher ``p`` and student ``q`` on one chunk: log-probabilities (0 outside the shared support) and
    probabilities (exactly 0 outside it, computed on first use), in the compute dtype."""

    def __init__(self, log_p: Tensor, log_q: Tensor, support: Tensor | None):
        self.log_p, self.log_q, self.support = log_p, log_q, support

    def _probs(self, log_probs: Tensor) -> Tensor:
        probs = log_probs.exp()
        return probs if self.support is None else probs.masked_fill(~self.support, 0.0)

    @functools.cached_property
    def p(self) -> Tensor:
        return self._probs(self.log_p)

    @functools.cached_property
    def q(self) -> Tensor:
        return self._probs(self.log_q)


def token_distributions(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> TokenDistributions:
    """Temperature-scaled log-softmaxes of both models, renormalised over their shared finite support."""
    if temperature != 1.0:
        student_logits, teacher_logits = student_logits / temperature, teacher_logits / temperature
    # one reduction per input detects any -inf/+inf/NaN (the masked path below is exact in every case)
    if bool(torch.isfinite(student_logits.sum()) & torch.isfinite(teacher_logits.sum())):
        log_p, log_q = torch.log_softmax(teacher_logits, dim=-1), torch.log_softmax(student_logits, dim=-1)
        return TokenDistributions(log_p, log_q, support=None)
    for name, logits in (("student logits", student_logits), ("teacher logits", teacher_logits)):
        reject_nan_and_positive_inf(name, logits)
    support = torch.isfinite(student_logits) & torch.isfinite(teacher_logits)
    has_support = support.any(dim=-1, keepdim=True)

    def log_probs(logits: Tensor) -> Tensor:
        restricted = logits.masked_fill(~support, float("-inf")).masked_fill(~has_support, 0.0)
        return torch.log_softmax(restricted, dim=-1).masked_fill(~support, 0.0)

    return TokenDistributions(log_probs(teacher_logits), log_probs(student_logits), support)


def reject_nan_and_positive_inf(name: str, values: Tensor) -> None:
    """Raise :class:`NonFiniteInputError` at the first NaN or +inf of ``values`` ([rows, V] or [rows])."""
    bad = torch.isnan(values) | (values == float("inf"))
    if bool(bad.any()):
        position = bad.nonzero()[0].tolist()
        kind = "NaN" if bool(torch.isnan(values[tuple(position)])) else "+inf"
        raise NonFiniteInputError(name, kind, row=position[0], column=position[1] if len(position) > 1 else None)


def kl(weights: Tensor, log_weights: Tensor, log_other: Tensor) -> Tensor:
    """KL(a || b) = Σ_v a(v) (log a(v) - log b(v)) over the last dim (``weights`` = a, exactly 0 off-support)."""
    return (weights * (log_weights - log_other)).sum(dim=-1)


def log_mixture(log_a: Tensor, log_b: Tensor, log_weight_a, log_weight_b) -> Tensor:
    """log(w_a·a + w_b·b) from log-probabilities and log-weights (floats or per-row ``[rows, 1]`` tensors)."""
    return torch.logaddexp(log_a + log_weight_a, log_b + log_weight_b)


def _check_in_range(divergence: str, name: str, value, low: float, high: float, *, high_open: bool = False):
    """Raise a ValueError naming the parameter, its value and the allowed range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(
            f"divergence {divergence!r}: {name}={value!r} is out of range; use a number in [{low}, {high}{bracket}"
        )
    return float(value)


class Divergence:
    """Base class: ``per_token``, ``teacher_side``, ``student_side`` on logits; ``p`` = teacher, ``q`` = student.

    Subclasses implement :meth:`halves` on one chunk and set ``self.sides`` = (teacher side non-zero,
    student side non-zero) in ``__init__``.
    """

    name: ClassVar[str]
    #: True where the exact prefix mixture needs ``teacher_prefix_logprob`` / ``student_prefix_logprob``
    uses_prefix_logprobs: bool = False

    def __init__(self, temperature: float = 1.0, chunk_tokens: int | None = None):
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"divergence {self.name!r}: temperature={temperature!r} must be a finite number > 0")
        if chunk_tokens is not None and not (isinstance(chunk_tokens, int) and chunk_tokens >= 1):
            raise ValueError(
                f"divergence {self.name!r}: chunk_tokens={chunk_tokens!r} must be a positive integer or None "
                f"(None: about {DEFAULT_CHUNK_ELEMENTS} tokens x vocabulary elements per chunk)"
            )
        self.temperature = float(temperature)
        self.chunk_tokens = chunk_tokens
        self.sides = (True, True)

    @property
    def needs(self) -> frozenset[str]:
        """Sample sources the f-DISTILL objective needs: teacher prefixes for a non-zero teacher side,
        student prefixes for a non-zero student side (``data`` is never required by a divergence)."""
        has_teacher, has_student = self.sides
        return frozenset(source for source, used in (("teacher", has_teacher), ("student", has_student)) if used)

    def halves(self, dist: TokenDistributions, *prefix_logprobs: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(teacher_side, student_side) per row of one chunk; ``None`` for an identically zero half."""
        raise NotImplementedError

    def per_token(self, student_logits: Tensor, teacher_logits: Tensor, *, mask: Tensor | None = None,
                  **prefix_logprobs: Tensor) -> Tensor:
        """Full token-level divergence D(p_t || q_t) (GKD Eq. 2), shape ``logits.shape[:-1]``, in nats.
        ``mask`` (same shape, True = valid): other positions are not computed (value and gradient 0)."""
        return self._evaluate("both", student_logits, teacher_logits, prefix_logprobs, mask)

    def teacher_side(self, student_logits: Tensor, teacher_logits: Tensor, *, mask: Tensor | None = None,
                     **prefix_logprobs: Tensor) -> Tensor:
        """f-DISTILL step-wise term for teacher-sampled prefixes (Wen et al. Eqs. 6-10)."""
        return self._evaluate("teacher", student_logits, teacher_logits, prefix_logprobs, mask)

    def student_side(self, student_logits: Tensor, teacher_logits: Tensor, *, mask: Tensor | None = None,
                     **prefix_logprobs: Tensor) -> Tensor:
        """f-DISTILL step-wise term for student-sampled prefixes (Wen et al. Eqs. 6-10)."""
        return self._evaluate("student", student_logits, teacher_logits, prefix_logprobs, mask)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "sides")
        return f"{type(self).__name__}({self.name!r}, {params})"

    def _prefix_inputs(self, prefix_logprobs: dict[str, Tensor], lead_shape: torch.Size) -> list[Tensor]:
        expected = ("teacher_prefix_logprob", "student_prefix_logprob")
        unknown = sorted(set(prefix_logprobs) - set(expected))
        if unknown:
            raise TypeError(f"divergence {self.name!r}: unknown keyword argument(s) {unknown}; accepted: {expected}")
        if not self.uses_prefix_logprobs:
            if prefix_logprobs:
                raise TypeError(
                    f"divergence {self.name!r} does not use prefix log-probabilities "
                    f"(only js/jsd with mixture='prefix' do); drop {sorted(prefix_logprobs)}"
                )
            return []
        missing = [k for k in expected if k not in prefix_logprobs]
        if missing:
            raise ValueError(
                f"divergence {self.name!r} with mixture='prefix' needs {missing}: log p(y_<t), log q(y_<t) of "
                f"shape {tuple(lead_shape)} (or use mixture='step')"
            )
        tensors = []
        for key in expected:
            value = prefix_logprobs[key]
            if value.shape != lead_shape:
                raise ValueError(f"{key} has shape {tuple(value.shape)}; expected logits.shape[:-1] = {tuple(lead_shape)}")
            tensors.append(value.reshape(-1))
        return tensors

    def _evaluate(self, part: str, student_logits: Tensor, teacher_logits: Tensor, prefix_logprobs,
                  mask: Tensor | None = None) -> Tensor:
        if student_logits.shape != teacher_logits.shape or student_logits.dim() < 1:
            raise ValueError(
                f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
                "must have the same shape [..., V]"
            )
        if not (student_logits.is_floating_point() and teacher_logits.is_floating_point()):
            raise TypeError("logits must be floating point tensors")
        lead_shape, vocab = student_logits.shape[:-1], student_logits.shape[-1]
        extras = self._prefix_inputs(prefix_logprobs, lead_shape)
        wide = torch.float64 in (student_logits.dtype, teacher_logits.dtype)
        compute_dtype = torch.float64 if wide else torch.float32
        has_teacher, has_student = self.sides
        if (part == "teacher" and not has_teacher) or (part == "student" and not has_student):
            return torch.zeros(lead_shape, dtype=compute_dtype, device=student_logits.device)
        rows = self.chunk_tokens or default_chunk_rows(vocab)
        row_fn = functools.partial(self._rows, part, compute_dtype)
        inputs = [student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab), *extras]
        selected = None
        if mask is not None:
            if mask.shape != lead_shape:
                raise ValueError(f"mask has shape {tuple(mask.shape)}; expected logits.shape[:-1] = {tuple(lead_shape)}")
            selected = mask.reshape(-1).bool().nonzero().squeeze(-1)
            inputs = [x.index_select(0, selected) for x in inputs]
        try:
            values = chunked_rows(row_fn, inputs, rows, compute_dtype)
        except NonFiniteInputError as error:
            if selected is not None:
                error = error.shifted(int(selected[error.row]) - error.row)
            raise error.located(f"divergence {self.name!r}", lead_shape) from None
        if selected is not None:
            values = values.new_zeros(lead_shape.numel()).index_put((selected,), values)
        return values.reshape(lead_shape)

    def _rows(self, part: str, dtype: torch.dtype, student: Tensor, teacher: Tensor, *extras: Tensor) -> Tensor:
        for name, values in zip(("teacher_prefix_logprob", "student_prefix_logprob"), extras, strict=False):
            reject_nan_and_positive_inf(name, values)
        dist = token_distributions(student.to(dtype), teacher.to(dtype), self.temperature)
        teacher_term, student_term = self.halves(dist, *(x.to(dtype) for x in extras))
        chosen = {"teacher": [teacher_term], "student": [student_term], "both": [teacher_term, student_term]}[part]
        terms = [t for t in chosen if t is not None]
        return functools.reduce(torch.add, terms) if terms else dist.p.new_zeros(dist.p.shape[:-1])


@register_divergence("fkl_rkl")
class ForwardReverseKL(Divergence):
    """w·KL(p||q) + (1-w)·KL(q||p); teacher side w·KL(p||q), student side (1-w)·KL(q||p) (f-DISTILL Eq. 7-8)."""

    def __init__(self, weight: float = 0.5, temperature: float = 1.0, chunk_tokens: int | None = None):
        super().__init__(temperature, chunk_tokens)
        self.weight = _check_in_range(self.name, "weight", weight, 0.0, 1.0)
        self.sides = (self.weight > 0, self.weight < 1)

    def halves(self, dist, *prefix_logprobs):
        w = self.weight
        forward = w * kl(dist.p, dist.log_p, dist.log_q) if w > 0 else None
        reverse = (1 - w) * kl(dist.q, dist.log_q, dist.log_p) if w < 1 else None
        return forward, reverse


@register_divergence("kl")
class ForwardKL(ForwardReverseKL):
    """KL(p||q), all on the teacher side (f-DISTILL Eq. 7; word-level KD, Hinton et al. 2015)."""

    def __init__(self, temperature: float = 1.0, chunk_tokens: int | None = None):
        super().__init__(1.0, temperature, chunk_tokens)


@register_divergence("rkl")
class ReverseKL(ForwardReverseKL):
    """KL(q||p), all on the student side (f-DISTILL Eq. 8; MiniLLM)."""

    def __init__(self, temperature: float = 1.0, chunk_tokens: int | None = None):
        super().__init__(0.0, temperature, chunk_tokens)


@register_divergence("jsd")
class GeneralizedJSD(Divergence):
    """Generalized JSD (GKD Eq. 1): β·KL(p||m) + (1-β)·KL(q||m), m = β·p + (1-β)·q.

    Endpoints: the formula vanishes at β=0 and β=1 (GKD notes JSD(β)/β → KL(p||q) as β → 0), so, as in
    TRL's ``GKDTrainer.generalized_jsd_loss``, β=0 is defined as KL(p||q) and β=1 as KL(q||p) exactly
    (``kl`` / ``rkl``). Interior β uses Eq. 1 unscaled (like TRL). β=0.5 is the Jensen-Shannon divergence.

    Halves: teacher side β·KL(p_t||m_t), student side (1-β)·KL(q_t||m_t) (f-DISTILL Eqs. 9-10 for β=½);
    the endpoints give kl's / rkl's halves. ``mixture``:

    * ``step`` (f-DISTILL code, default): m_t = β·p_t + (1-β)·q_t at every step;
    * ``prefix`` (exact, f-DISTILL Sec. 7): the conditional of the sequence-level mixture
      M = β·P + (1-β)·Q, m_t = w·p_t + (1-w)·q_t with w = β·P(y_<t) / (β·P(y_<t) + (1-β)·Q(y_<t)); needs
      ``teacher_prefix_logprob`` = log P(y_<t) and ``student_prefix_logprob`` = log Q(y_<t). Then
      E_P[Σ_t teacher_side] + E_Q[Σ_t student_side] = β·KL(P||M) + (1-β)·KL(Q||M) exactly (chain rule of KL).
      With ``step`` the same sum equals β·KL(P||M̃) + (1-β)·KL(Q||M̃) for the autoregressive M̃ built from
      the step mixtures, i.e. the exact value plus KL(M||M̃) ≥ 0: an upper bound.

    Gradients flow into the prefix log-probabilities when they require grad (detach them to treat the
    mixture weight as a constant).
    """

    def __init__(self, beta: float = 0.5, mixture: str = "step", temperature: float = 1.0, chunk_tokens: int | None = None):
        super().__init__(temperature, chunk_tokens)
        self.beta = _check_in_range(self.name, "beta", beta, 0.0, 1.0)
        if mixture not in MIXTURES:
            raise ValueError(f"divergence {self.name!r}: mixture={mixture!r} is not one of {MIXTURES}")
        self.mixture = mixture
        self.uses_prefix_logprobs = mixture == "prefix"
        self.sides = (self.beta < 1, self.beta > 0)

    def _mixture_log_weights(self, prefix_logprobs: tuple[Tensor, ...]):
        log_beta, log_rest = math.log(self.beta), math.log1p(-self.beta)
        if self.mixture == "step":
            return log_beta, log_rest
        teacher_prefix, student_prefix = prefix_logprobs
        log_teacher, log_student = teacher_prefix + log_beta, student_prefix + log_rest
        normaliser = torch.logaddexp(log_teacher, log_student)
        return (log_teacher - normaliser).unsqueeze(-1), (log_student - normaliser).unsqueeze(-1)

    def halves(self, dist, *prefix_logprobs):
        if self.beta == 0:
            return kl(dist.p, dist.log_p, dist.log_q), None
        if self.beta == 1:
            return None, kl(dist.q, dist.log_q, dist.log_p)
        log_m = log_mixture(dist.log_p, dist.log_q, *self._mixture_log_weights(prefix_logprobs))
        return self.beta * kl(dist.p, dist.log_p, log_m), (1 - self.beta) * kl(dist.q, dist.log_q, log_m)


@register_divergence("js")
class JensenShannon(GeneralizedJSD):
    """JS(p, q) = ½KL(p||m) + ½KL(q||m), m = ½p + ½q (f-DISTILL Eq. 9-10): ``jsd`` with β = ½."""

    def __init__(self, mixture: str = "step", temperature: float = 1.0, chunk_tokens: int | None = None):
        super().__init__(0.5, mixture, temperature, chunk_tokens)


@register_divergence("tvd")
class TotalVariation(Divergence):
    """TVD(p, q) = ½Σ|p-q|; halves ¼Σ|p-q| each, whose f-DISTILL sum upper-bounds the sequence-level TVD
    (Wen et al. Eq. 11-12, Theorem 1)."""

    def __init__(self, temperature: float = 1.0, chunk_tokens: int | None = None):
        super().__init__(temperature, chunk_tokens)

    def halves(self, dist, *prefix_logprobs):
        quarter = 0.25 * (dist.p - dist.q).abs().sum(dim=-1)
        return quarter, quarter


@register_divergence("skl")
class SkewKL(Divergence):
    """α-skew KL of DistiLLM (Ko et al. 2024, Eq. 3): KL(p || α·p + (1-α)·q); teacher side only, like kl.

    α = 0 is KL(p||q); α must stay below 1 (α = 1 is identically zero).
    """

    reverse: ClassVar[bool] = False

    def __init__(self, alpha: float = 0.1, temperature: float = 1.0, chunk_tokens: int | None = None):
        super().__init__(temperature, chunk_tokens)
        self.alpha = _check_in_range(self.name, "alpha", alpha, 0.0, 1.0, high_open=True)
        self.sides = (not self.reverse, self.reverse)

    def halves(self, dist, *prefix_logprobs):
        own, own_log, other_log = (dist.q, dist.log_q, dist.log_p) if self.reverse else (dist.p, dist.log_p, dist.log_q)
        skewed = other_log if self.alpha == 0 else log_mixture(own_log, other_log, math.log(self.alpha), math.log1p(-self.alpha))
        value = kl(own, own_log, skewed)
        return (None, value) if self.reverse else (value, None)


@register_divergence("srkl")
class SkewReverseKL(SkewKL):
    """α-skew reverse KL of DistiLLM (Ko et al. 2024, Eq. 4): KL(q || α·q + (1-α)·p); student side only."""

    reverse: ClassVar[bool] = True


@register_divergence("akl")
class AdaptiveKL(Divergence):
    """Adaptive KL of Wu et al. 2024 (Eqs. 11-15).

    Sort the teacher probabilities in descending order; the head is the smallest prefix of that order whose
    teacher mass is ≥ μ (a token is in the head when the mass strictly before it is < μ), the tail the rest.
    With ε = |p - q|, g_head = Σ_head ε and g_tail = Σ_tail ε:

        AKL = g_head/(g_head+g_tail)·KL(p||q) + g_tail/(g_head+g_tail)·KL(q||p)

    (weights ½/½ where p = q exactly, where the reference code would divide 0 by 0). Halves: the
    forward-KL part on the teacher side, the reverse-KL part on the student side, with the same weights.

    ``detach_weights`` (default True, as the reference code ``AKL.py`` of Wu et al., which computes the
    weights from ``student_probs.detach()``): gradients do not flow through the weights. Note: the
    reference code puts the token whose cumulative mass first exceeds μ into the tail (unless it is the
    top token); this follows the paper's "smallest set with mass ≥ μ" and puts it into the head.
    """

    swap_weights: ClassVar[bool] = False

    def __init__(
        self, mu: float = 0.5, detach_weights: bool = True, temperature: float = 1.0, chunk_tokens: int | None = None
    ):
        super().__init__(temperature, chunk_tokens)
        self.mu = _check_in_range(self.name, "mu", mu, 0.0, 1.0)
        if not isinstance(detach_weights, bool):
            raise ValueError(f"divergence {self.name!r}: detach_weights={detach_weights!r} must be true or false")
        self.detach_weights = detach_weights

    def gap_weights(self, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """(g_head, g_tail) / (g_head + g_tail) per row (Wu et al. Eqs. 11-14)."""
        p_sorted, order = p.sort(dim=-1, descending=True)
        gap = (p_sorted - q.gather(-1, order)).abs()
        in_head = (p_sorted.cumsum(dim=-1) - p_sorted) < self.mu
        head_gap = (gap * in_head).sum(dim=-1)
        tail_gap = (gap * ~in_head).sum(dim=-1)
        total = head_gap + tail_gap
        has_gap = total > 0
        safe_total = torch.where(has_gap, total, torch.ones_like(total))
        half = torch.full_like(total, 0.5)
        return torch.where(has_gap, head_gap / safe_total, half), torch.where(has_gap, tail_gap / safe_total, half)

    def halves(self, dist, *prefix_logprobs):
        if self.detach_weights:
            head_weight, tail_weight = self.gap_weights(dist.p.detach(), dist.q.detach())
        else:
            head_weight, tail_weight = self.gap_weights(dist.p, dist.q)
        if self.swap_weights:
            head_weight, tail_weight = tail_weight, head_weight
        return head_weight * kl(dist.p, dist.log_p, dist.log_q), tail_weight * kl(dist.q, dist.log_q, dist.log_p)


@register_divergence("akl_r")
class AdaptiveKLReversed(AdaptiveKL):
    """The AKL ablation with the weights swapped (Wu et al. Eq. 16): g_tail/(g_head+g_tail)·KL(p||q) +
    g_head/(g_head+g_tail)·KL(q||p)."""

    swap_weights: ClassVar[bool] = True
