"""Token-level divergences between teacher ``p`` and student ``q`` given as logits ``[..., V]``.

Every divergence defines its math once, on one chunk of rows, as the two halves of the f-DISTILL step-wise
decomposition (Wen et al. 2023, Eqs. 6-10, Theorem 1)::

    teacher_side(p_t, q_t)  -- evaluated on teacher-sampled prefixes  (expectation under p)
    student_side(p_t, q_t)  -- evaluated on student-sampled prefixes  (expectation under q)
    per_token = teacher_side + student_side  -- the full token-level divergence D(p_t || q_t) (GKD Eq. 2)

twice: :meth:`Divergence.halves` is the differentiable definition (the autograd oracle of the tests, and
the path for gradients into the teacher's logits), :meth:`Divergence.closed_form` gives each part's value
and its gradient in closed form as ``h = q ⊙ ∂L/∂q`` (so ``∂L/∂s = h − q·Σ_v h`` for student logits ``s``,
divided by the temperature), computed together chunk by chunk without an autograd graph. A half that is
identically zero is ``None`` and never computed. Math runs in float32 (float64 for float64 inputs).

Vocabulary entries whose logit is ``-inf`` (padded vocabulary) have probability zero. An entry that is
``-inf`` for either model is removed for both and both distributions are renormalised over the shared
support: exact for a padded vocabulary (both ``-inf``), and it keeps every divergence finite, ``>= 0`` and
zero for equal inputs when only one model masks an entry (where e.g. KL(p||q) would be infinite). A
position with no shared finite entry gets divergence 0 and gradient 0. NaN or ``+inf`` in either input is
never a mask: it raises :class:`NonFiniteInputError` naming the tensor and the position (a diverged model
must not train on a loss of 0).

``temperature_scaling="squared"`` multiplies values and gradients by τ² (Hinton et al. 2015; the official
f-DISTILL code does so for KL/JS); ``"none"`` (default, as TRL and Liger-Kernel) does not.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from fdistill.divergences.chunked import (
    DEFAULT_CHUNK_ELEMENTS,
    NonFiniteInputError,
    autograd_row_grads,
    chunked_rows,
    default_chunk_rows,
    deferred_flag,
    once_checked,
    oracle_requested,
)
from fdistill.divergences.registry import register_divergence

MIXTURES = ("step", "prefix")
PARTS = ("both", "teacher", "student")
TEMPERATURE_SCALINGS = ("none", "squared")


class TokenDistributions:
    """Teacher ``p`` and student ``q`` on one chunk: log-probabilities (0 outside the shared support) and
    probabilities (exactly 0 outside it), in the compute dtype, each computed on first use with torch's fused
    softmax kernels (``p`` from ``log_p`` once that exists); ``support`` is None when every entry is finite."""

    def __init__(self, teacher_logits: Tensor | None, student_logits: Tensor | None, support: Tensor | None = None,
                 log_p: Tensor | None = None, log_q: Tensor | None = None, p: Tensor | None = None,
                 q: Tensor | None = None, probabilities_only: bool = False):
        #: False: probabilities are always exp(log-probabilities), whichever is asked for first (so that two
        #: divergences agree to the last bit); True: a divergence without logs (TVD) gets the softmax alone
        self.probabilities_only = probabilities_only
        self._logits = {"p": teacher_logits, "q": student_logits}
        self._log = {"p": log_p, "q": log_q}
        self._probs = {"p": p, "q": q}
        self.support = support

    def _log_of(self, which: str) -> Tensor:
        if self._log[which] is None:
            self._log[which] = torch.log_softmax(self._logits[which], dim=-1)
        return self._log[which]

    def _probs_of(self, which: str) -> Tensor:
        if self._probs[which] is None:
            if self.probabilities_only and self._log[which] is None:
                self._probs[which] = torch.softmax(self._logits[which], dim=-1)
            else:
                self._probs[which] = self._log_of(which).exp()
        return self._probs[which]

    @property
    def log_p(self) -> Tensor:
        return self._log_of("p")

    @property
    def log_q(self) -> Tensor:
        return self._log_of("q")

    @property
    def p(self) -> Tensor:
        return self._probs_of("p")

    @property
    def q(self) -> Tensor:
        return self._probs_of("q")


def reject_nan_and_positive_inf(name: str, values: Tensor) -> None:
    """Raise :class:`NonFiniteInputError` at the first NaN or +inf of ``values`` ([rows, V] or [rows])."""
    bad = torch.isnan(values) | (values == float("inf"))
    if bool(bad.any()):
        position = bad.nonzero()[0].tolist()
        kind = "NaN" if bool(torch.isnan(values[tuple(position)])) else "+inf"
        raise NonFiniteInputError(name, kind, row=position[0], column=position[1] if len(position) > 1 else None)


def token_distributions(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
                        teacher_temperature: float | None = None, probabilities_only: bool = False
                        ) -> TokenDistributions:
    """Temperature-scaled softmaxes of both models (the teacher's at `teacher_temperature` when given, GKD
    Table A.1), renormalised over their shared finite support."""
    teacher_temperature = temperature if teacher_temperature is None else teacher_temperature
    if temperature != 1.0:
        student_logits = student_logits / temperature
    if teacher_temperature != 1.0:
        teacher_logits = teacher_logits / teacher_temperature
    # one reduction per input detects any -inf/+inf/NaN (the masked path below is exact in every case)
    finite = torch.isfinite(student_logits.sum()) & torch.isfinite(teacher_logits.sum())
    deferred = deferred_flag()
    if deferred is not None:  # assume finite; the caller checks once per loss call (chunked.once_checked)
        deferred.add(~finite)
        return TokenDistributions(teacher_logits, student_logits, probabilities_only=probabilities_only)
    if bool(finite):
        return TokenDistributions(teacher_logits, student_logits, probabilities_only=probabilities_only)
    for name, logits in (("student logits", student_logits), ("teacher logits", teacher_logits)):
        reject_nan_and_positive_inf(name, logits)
    support = torch.isfinite(student_logits) & torch.isfinite(teacher_logits)
    has_support = support.any(dim=-1, keepdim=True)

    def restricted(logits: Tensor) -> tuple[Tensor, Tensor]:
        log_probs = torch.log_softmax(logits.masked_fill(~support, float("-inf")).masked_fill(~has_support, 0.0), -1)
        return log_probs.masked_fill(~support, 0.0), log_probs.exp().masked_fill(~support, 0.0)

    (log_p, p), (log_q, q) = restricted(teacher_logits), restricted(student_logits)
    return TokenDistributions(None, None, support, log_p, log_q, p, q)


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_v a·b per row (torch.linalg.vecdot: no [rows, V] temporary; einsum's batched matmul is ~15x slower)."""
    return torch.linalg.vecdot(a, b)


def kl(weights: Tensor, log_weights: Tensor, log_other: Tensor) -> Tensor:
    """KL(a || b) = Σ_v a(v) (log a(v) - log b(v)) over the last dim (``weights`` = a, exactly 0 off-support)."""
    return rowdot(weights, log_weights - log_other)


def log_mixture(log_a: Tensor, log_b: Tensor, log_weight_a, log_weight_b) -> Tensor:
    """log(w_a·a + w_b·b) from log-probabilities and log-weights (floats or per-row ``[rows, 1]`` tensors)."""
    return torch.logaddexp(log_a + log_weight_a, log_b + log_weight_b)


def safe_log(probabilities: Tensor) -> Tensor:
    """log of a mixture of probabilities, finite where it underflows (there every term it weights is 0)."""
    return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log_()


@dataclass
class ClosedForm:
    """One part's values [rows], ``h = q ⊙ ∂L/∂q`` [rows, V] (None: no student gradient, e.g. a zero part) and
    the gradients of the prefix log-probabilities (teacher, student) [rows] where the part uses them."""

    values: Tensor
    h: Tensor | None
    prefix_grads: tuple[Tensor, Tensor] | None = None
    #: instead of h: writes ∂L/∂s itself (before the factor τ-scaling/τ) into `out` (or a new tensor for None),
    #: e.g. q − p for KL(p||q), skipping the projection and the temporary
    gradient: Callable[[Tensor | None], Tensor] | None = None


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

    Subclasses implement :meth:`halves` (differentiable) and :meth:`closed_form` on one chunk and set
    ``self.sides`` = (teacher side non-zero, student side non-zero) in ``__init__``.
    """

    name: ClassVar[str]
    #: True where the exact prefix mixture needs ``teacher_prefix_logprob`` / ``student_prefix_logprob``
    uses_prefix_logprobs: bool = False
    #: True for a divergence that needs no log-probabilities of one model or both (TVD, ENGINE's student): their
    #: probabilities come from one softmax instead of exp(log_softmax)
    probabilities_only: ClassVar[bool] = False

    def __init__(self, temperature: float = 1.0, chunk_tokens: int | None = None,
                 temperature_scaling: str = "none", teacher_temperature: float | None = None):
        for key, value in (("temperature", temperature), ("teacher_temperature", teacher_temperature)):
            if value is None and key == "teacher_temperature":
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"divergence {self.name!r}: {key}={value!r} must be a finite number > 0")
        if chunk_tokens is not None and not (isinstance(chunk_tokens, int) and chunk_tokens >= 1):
            raise ValueError(
                f"divergence {self.name!r}: chunk_tokens={chunk_tokens!r} must be a positive integer or None "
                f"(None: about {DEFAULT_CHUNK_ELEMENTS} tokens x vocabulary elements per chunk)"
            )
        if temperature_scaling not in TEMPERATURE_SCALINGS:
            raise ValueError(f"divergence {self.name!r}: temperature_scaling={temperature_scaling!r}; use one of "
                             f"{TEMPERATURE_SCALINGS} (squared: multiply by τ² as Hinton et al. and the f-DISTILL code)")
        self.temperature = float(temperature)
        #: the teacher's softmax temperature (None: `temperature`); GKD uses 0.1 when students are evaluated
        #: by temperature sampling (Table A.1, Fig. A.14)
        self.teacher_temperature = None if teacher_temperature is None else float(teacher_temperature)
        self.chunk_tokens = chunk_tokens
        self.temperature_scaling = temperature_scaling
        self.sides = (True, True)

    @property
    def needs(self) -> frozenset[str]:
        """Sample sources the f-DISTILL objective needs: teacher prefixes for a non-zero teacher side,
        student prefixes for a non-zero student side (``data`` is never required by a divergence)."""
        has_teacher, has_student = self.sides
        return frozenset(source for source, used in (("teacher", has_teacher), ("student", has_student)) if used)

    @property
    def scale(self) -> float:
        """The factor of values and gradients: τ² with ``temperature_scaling="squared"``, else 1."""
        return self.temperature ** 2 if self.temperature_scaling == "squared" else 1.0

    def halves(self, dist: TokenDistributions, *prefix_logprobs: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(teacher_side, student_side) per row of one chunk, differentiable; ``None`` for a zero half."""
        raise NotImplementedError

    def closed_form(self, dist: TokenDistributions, part: str, *prefix_logprobs: Tensor) -> ClosedForm:
        """`part`'s values and gradient on one chunk (see the module docstring)."""
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

    def fused(self, student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
              part: str = "both", student_bias: Tensor | None = None, teacher_bias: Tensor | None = None, *,
              mask: Tensor | None = None, student_softcap: float | None = None,
              teacher_softcap: float | None = None, **prefix_logprobs: Tensor) -> Tensor:
        """`part` of the divergence on the logits ``hidden @ weight.T + bias`` of each model, computed from the
        hidden states chunk by chunk so the logits never exist in full (see :mod:`fdistill.divergences.fused`).
        Gradients flow to the student hidden states, weight and bias, never to the teacher's."""
        from fdistill.divergences.fused import fused_per_token

        return fused_per_token(self, part, student_hidden, student_weight, student_bias, teacher_hidden,
                               teacher_weight, teacher_bias, mask=mask, student_softcap=student_softcap,
                               teacher_softcap=teacher_softcap, **prefix_logprobs)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "sides")
        return f"{type(self).__name__}({self.name!r}, {params})"

    def prefix_inputs(self, prefix_logprobs: dict[str, Tensor], lead_shape: torch.Size) -> list[Tensor]:
        """The prefix log-probabilities in the order (teacher, student), flattened; checked."""
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

    def part_is_zero(self, part: str) -> bool:
        has_teacher, has_student = self.sides
        return (part == "teacher" and not has_teacher) or (part == "student" and not has_student)

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
        extras = self.prefix_inputs(prefix_logprobs, lead_shape)
        wide = torch.float64 in (student_logits.dtype, teacher_logits.dtype)
        compute_dtype = torch.float64 if wide else torch.float32
        if self.part_is_zero(part):
            return torch.zeros(lead_shape, dtype=compute_dtype, device=student_logits.device)
        rows = self.chunk_tokens or default_chunk_rows(vocab, student_logits.device)
        inputs = [student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab), *extras]
        selected = None
        if mask is not None:
            if mask.shape != lead_shape:
                raise ValueError(f"mask has shape {tuple(mask.shape)}; expected logits.shape[:-1] = {tuple(lead_shape)}")
            selected = mask.reshape(-1).bool().nonzero().squeeze(-1)
            inputs = [x.index_select(0, selected) for x in inputs]
        teacher_grad = torch.is_grad_enabled() and teacher_logits.requires_grad
        if oracle_requested() or teacher_grad:  # the differentiable definition (closed forms cover the student)
            row_grad_fn = autograd_row_grads(functools.partial(self._oracle_rows, part, compute_dtype))
        else:
            row_grad_fn = functools.partial(self._closed_form_rows, part, compute_dtype)
        try:
            values = once_checked(lambda: chunked_rows(row_grad_fn, inputs, rows, compute_dtype))
        except NonFiniteInputError as error:
            if selected is not None:
                error = error.shifted(int(selected[error.row]) - error.row)
            raise error.located(f"divergence {self.name!r}", lead_shape) from None
        if selected is not None:
            values = values.new_zeros(lead_shape.numel()).index_put((selected,), values)
        return values.reshape(lead_shape)

    def _check_prefix(self, extras) -> None:
        deferred = deferred_flag()
        for name, values in zip(("teacher_prefix_logprob", "student_prefix_logprob"), extras, strict=False):
            if deferred is not None:
                deferred.add((torch.isnan(values) | (values == float("inf"))).any())
            else:
                reject_nan_and_positive_inf(name, values)

    def _oracle_rows(self, part: str, dtype: torch.dtype, student: Tensor, teacher: Tensor, *extras: Tensor) -> Tensor:
        self._check_prefix(extras)
        dist = token_distributions(student.to(dtype), teacher.to(dtype), self.temperature, self.teacher_temperature,
                                   self.probabilities_only)
        teacher_term, student_term = self.halves(dist, *(x.to(dtype) for x in extras))
        chosen = {"teacher": [teacher_term], "student": [student_term], "both": [teacher_term, student_term]}[part]
        terms = [t for t in chosen if t is not None]
        values = functools.reduce(torch.add, terms) if terms else dist.p.new_zeros(dist.p.shape[:-1])
        return values * self.scale if self.scale != 1.0 else values

    def _closed_form_rows(self, part: str, dtype: torch.dtype, pieces, out_grads) -> Tensor:
        student, teacher, *extras = pieces
        self._check_prefix(extras)
        with torch.no_grad():
            dist = token_distributions(student.to(dtype), teacher.to(dtype), self.temperature,
                                       self.teacher_temperature, self.probabilities_only)
            result = self.closed_form(dist, part, *(x.to(dtype) for x in extras))
            factor = self.scale
            if out_grads[0] is not None:
                logit_gradient(result, dist.q, factor / self.temperature, out_grads[0])
            prefix = result.prefix_grads or (torch.zeros_like(result.values), torch.zeros_like(result.values))
            for out, grad in zip(out_grads[2:], prefix, strict=False):
                if out is not None:
                    out.copy_(grad * factor if factor != 1.0 else grad)
            return result.values * factor if factor != 1.0 else result.values


def logit_gradient(result: ClosedForm, q: Tensor, factor: float, out: Tensor | None = None) -> Tensor:
    """∂L/∂z = factor·(h − q·Σ_v h) for ``h = q ⊙ ∂L/∂q`` (softmax Jacobian; or ``result.gradient``'s ∂L/∂s),
    written into `out` (a gradient buffer slice, any float dtype; a new tensor for None)."""
    direct = out if out is not None and out.dtype == q.dtype else None
    if result.gradient is not None:
        grad = result.gradient(direct)
        if factor != 1.0:
            grad.mul_(factor)
    elif result.h is None:
        grad = torch.zeros_like(q) if direct is None else direct.zero_()
    else:
        h = result.h
        total = h.sum(dim=-1, keepdim=True)
        if direct is None:
            grad = h.addcmul_(q, total, value=-1.0)
            if factor != 1.0:
                grad.mul_(factor)
        elif factor == 1.0:
            grad = torch.addcmul(h, q, total, value=-1.0, out=direct)
        else:
            grad = torch.mul(h, factor, out=direct).addcmul_(q, total, value=-factor)
    if out is not None and grad is not out:
        out.copy_(grad)
        return out
    return grad


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return b if a is None else a if b is None else a.add_(b)


@register_divergence("fkl_rkl")
class ForwardReverseKL(Divergence):
    """w·KL(p||q) + (1-w)·KL(q||p); teacher side w·KL(p||q), student side (1-w)·KL(q||p) (f-DISTILL Eq. 7-8).

    Gradients: ∂KL(p||q)/∂s = q − p (h = −p); ∂KL(q||p)/∂s = q ⊙ (log q − log p − KL(q||p)) (h = q(log q − log p)).
    """

    def __init__(self, weight: float = 0.5, **common):
        super().__init__(**common)
        self.weight = _check_in_range(self.name, "weight", weight, 0.0, 1.0)
        self.sides = (self.weight > 0, self.weight < 1)

    def halves(self, dist, *prefix_logprobs):
        w = self.weight
        forward = w * kl(dist.p, dist.log_p, dist.log_q) if w > 0 else None
        reverse = (1 - w) * kl(dist.q, dist.log_q, dist.log_p) if w < 1 else None
        return forward, reverse

    def closed_form(self, dist, part, *prefix_logprobs):
        w = self.weight
        use_forward = part in ("both", "teacher") and w > 0
        use_reverse = part in ("both", "student") and w < 1
        if use_forward and not use_reverse and w == 1.0:  # KL(p||q): ∂/∂s = q − p directly
            return ClosedForm(kl(dist.p, dist.log_p, dist.log_q), None,
                              gradient=lambda out: torch.sub(dist.q, dist.p, out=out))
        log_ratio = dist.log_q - dist.log_p  # log q − log p
        values, h = dist.p.new_zeros(dist.p.shape[:-1]), None
        if use_forward:
            values = values - w * rowdot(dist.p, log_ratio)
            h = dist.p * (-w)
        if use_reverse:
            values = values + (1 - w) * rowdot(dist.q, log_ratio)
            h = _add(h, log_ratio.mul_(dist.q).mul_(1 - w))
        return ClosedForm(values, h)


@register_divergence("kl")
class ForwardKL(ForwardReverseKL):
    """KL(p||q), all on the teacher side (f-DISTILL Eq. 7; word-level KD, Hinton et al. 2015)."""

    def __init__(self, **common):
        super().__init__(1.0, **common)


@register_divergence("rkl")
class ReverseKL(ForwardReverseKL):
    """KL(q||p), all on the student side (f-DISTILL Eq. 8; MiniLLM)."""

    def __init__(self, **common):
        super().__init__(0.0, **common)


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
    mixture weight as a constant). Closed form, with r = (c_p·p + c_q·q)/m for the part's coefficients
    (c_p, c_q) = (β, 1−β) | (β, 0) | (0, 1−β): h = c_q·q(log q − log m + 1) − (1−w)·q·r, and
    ∂L/∂w = −Σ_v r_v (p_v − q_v), ∂L/∂log P(y_<t) = w(1−w)·∂L/∂w = −∂L/∂log Q(y_<t).
    """

    def __init__(self, beta: float = 0.5, mixture: str = "step", **common):
        super().__init__(**common)
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

    def _endpoint(self, dist, part) -> ClosedForm:
        """β = 0 / 1: the closed forms of kl / rkl."""
        return (ForwardKL() if self.beta == 0 else ReverseKL()).closed_form(dist, part)

    def closed_form(self, dist, part, *prefix_logprobs):
        beta = self.beta
        if beta in (0.0, 1.0):
            result = self._endpoint(dist, part)
            if self.mixture == "prefix":  # the endpoints do not depend on the mixture weight
                result.prefix_grads = (torch.zeros_like(result.values), torch.zeros_like(result.values))
            return result
        if self.mixture == "step":
            weight = beta
        else:
            log_weight, _ = self._mixture_log_weights(prefix_logprobs)
            weight = log_weight.exp()  # [rows, 1]
        mixture = dist.p * weight + dist.q * (1 - weight)
        log_m = safe_log(mixture)
        coef_p = beta if part in ("both", "teacher") else 0.0
        coef_q = 1 - beta if part in ("both", "student") else 0.0
        values = dist.p.new_zeros(dist.p.shape[:-1])
        h = None
        if coef_p:
            values = values + coef_p * rowdot(dist.p, dist.log_p - log_m)
        if coef_q:
            log_ratio = dist.log_q - log_m
            values = values + coef_q * rowdot(dist.q, log_ratio)
            h = log_ratio.mul_(dist.q).mul_(coef_q)  # c_q·q(log q − log m); the +1 cancels in the projection
        prefix_grads = None
        if self.mixture == "step" and part == "both":
            return ClosedForm(values, h)  # r ≡ 1: the −(1−β)·q term cancels in the projection
        # r = (c_p p + c_q q) / m; h gets −(1−w)·q·r
        ratio = (dist.p * coef_p + dist.q * coef_q).div_(mixture.clamp_min_(torch.finfo(mixture.dtype).tiny))
        h = _add(h, (dist.q * ratio).mul_(-(1 - weight)))
        if self.mixture == "prefix":
            d_weight = -rowdot(ratio, dist.p - dist.q)
            d_teacher_prefix = d_weight * (weight * (1 - weight)).squeeze(-1)
            prefix_grads = (d_teacher_prefix, -d_teacher_prefix)
        return ClosedForm(values, h, prefix_grads)


@register_divergence("js")
class JensenShannon(GeneralizedJSD):
    """JS(p, q) = ½KL(p||m) + ½KL(q||m), m = ½p + ½q (f-DISTILL Eq. 9-10): ``jsd`` with β = ½."""

    def __init__(self, mixture: str = "step", **common):
        super().__init__(0.5, mixture, **common)


@register_divergence("tvd")
class TotalVariation(Divergence):
    """TVD(p, q) = ½Σ|p-q|; halves ¼Σ|p-q| each, whose f-DISTILL sum upper-bounds the sequence-level TVD
    (Wen et al. Eq. 11-12, Theorem 1). Gradient: h = −c·q ⊙ sign(p − q), c = ½ (both) or ¼ (a half)."""

    probabilities_only: ClassVar[bool] = True

    def halves(self, dist, *prefix_logprobs):
        quarter = 0.25 * (dist.p - dist.q).abs().sum(dim=-1)
        return quarter, quarter

    def closed_form(self, dist, part, *prefix_logprobs):
        coefficient = 0.5 if part == "both" else 0.25
        difference = dist.p - dist.q
        values = torch.linalg.vector_norm(difference, ord=1, dim=-1).mul_(coefficient)
        g = difference.sign_().mul_(-coefficient)  # ∂L/∂q; ∂L/∂s = q ⊙ (g − ⟨q, g⟩)

        def gradient(out):
            return torch.mul(g.sub_(rowdot(dist.q, g).unsqueeze(-1)), dist.q, out=out)

        return ClosedForm(values, None, gradient=gradient)


@register_divergence("engine")
class TeacherCrossEntropy(Divergence):
    """ENGINE's energy (Tu et al. 2020), step-wise: the teacher's cross-entropy of the student's distribution
    Σ_v q(v)·(−log p(v)) on student-sampled prefixes (student side only; f-DISTILL Table 2's ENGINE). Not a
    divergence: it is minimised by putting q on the teacher's mode, not by q = p. Gradient (h = −q·log p, no
    student log-probabilities needed): ∂L/∂s = q ⊙ (−log p − L), written straight into the buffer."""

    #: q is the student's softmax itself (the energy needs no log q)
    probabilities_only = True

    def __init__(self, **common):
        super().__init__(**common)
        self.sides = (False, True)

    def halves(self, dist, *prefix_logprobs):
        return None, -rowdot(dist.q, dist.log_p)

    def closed_form(self, dist, part, *prefix_logprobs):
        energy = -rowdot(dist.q, dist.log_p)

        def gradient(out):
            return torch.add(dist.log_p, energy.unsqueeze(-1), out=out).mul_(dist.q).neg_()

        return ClosedForm(energy, None, gradient=gradient)


@register_divergence("skl")
class SkewKL(Divergence):
    """α-skew KL of DistiLLM (Ko et al. 2024, Eq. 3): KL(p || α·p + (1-α)·q); teacher side only, like kl.

    α = 0 is KL(p||q); α must stay below 1 (α = 1 is identically zero). Gradients with m the skewed mixture:
    skl h = −(1−α)·p·q/m; srkl h = q(log q − log m) − α·q²/m.
    """

    reverse: ClassVar[bool] = False

    def __init__(self, alpha: float = 0.1, **common):
        super().__init__(**common)
        self.alpha = _check_in_range(self.name, "alpha", alpha, 0.0, 1.0, high_open=True)
        self.sides = (not self.reverse, self.reverse)

    def _own_other(self, dist):
        return (dist.q, dist.log_q, dist.p, dist.log_p) if self.reverse else (dist.p, dist.log_p, dist.q, dist.log_q)

    def halves(self, dist, *prefix_logprobs):
        own, own_log, _, other_log = self._own_other(dist)
        skewed = other_log if self.alpha == 0 else log_mixture(own_log, other_log, math.log(self.alpha), math.log1p(-self.alpha))
        value = kl(own, own_log, skewed)
        return (None, value) if self.reverse else (value, None)

    def closed_form(self, dist, part, *prefix_logprobs):
        if self.alpha == 0:
            return (ReverseKL() if self.reverse else ForwardKL()).closed_form(dist, part)
        own, own_log, other, _ = self._own_other(dist)
        alpha = self.alpha
        mixture = own * alpha + other * (1 - alpha)
        log_m = safe_log(mixture)
        values = rowdot(own, own_log - log_m)
        q_over_m = dist.q / mixture.clamp_min_(torch.finfo(mixture.dtype).tiny)
        if self.reverse:  # own = q
            h = (dist.log_q - log_m).mul_(dist.q).addcmul_(dist.q, q_over_m, value=-alpha)
        else:
            h = q_over_m.mul_(dist.p).mul_(-(1 - alpha))
        return ClosedForm(values, h)


@register_divergence("srkl")
class SkewReverseKL(SkewKL):
    """α-skew reverse KL of DistiLLM (Ko et al. 2024, Eq. 4): KL(q || α·q + (1-α)·p); student side only."""

    reverse: ClassVar[bool] = True


#: float dtype -> (the integer dtype of its bit pattern, its mantissa bits), for AdaptiveKL.head_mask's bins
_FLOAT_BITS = {torch.float32: (torch.int32, 23), torch.float64: (torch.int64, 52)}
_HEAD_BIN_BITS = 6      # 2**6 bins per octave of probability
_HEAD_BINS = 64 << 6    # 64 octaves below the row's top token; everything less probable shares the last bin


def _bisect_boundary(p: Tensor, bits: Tensor, bins: Tensor, boundary: Tensor, in_boundary: Tensor,
                     before_boundary: Tensor, target: Tensor, bin_shift: int) -> Tensor:
    """The smallest bit pattern b in the boundary bin's range with before_boundary + Σ{p_v : v in the bin, bits_v > b}
    < target, per row [rows, 1] (one past the range when none): the bit pattern of the last head token (AKL's
    head = every token whose strictly more probable mass is below μ). Bisection over the bin's bit range, a
    fixed number of steps: no host sync."""
    top = bits.amax(dim=-1, keepdim=True)
    last_bin = boundary == _HEAD_BINS - 1  # the last bin holds everything below: its range reaches down to 0
    high = top - (boundary << bin_shift)  # the bin's largest bit pattern
    low = torch.where(last_bin, torch.zeros_like(high), high - (1 << bin_shift) + 1)
    high = high + 1  # one past the range: no token of the bin is in the head
    masked = torch.where(in_boundary, p.double(), torch.zeros((), dtype=torch.float64, device=p.device))
    for _ in range(bits.element_size() * 8):  # enough halvings for the widest range (the last bin's)
        middle = low + (high - low) // 2
        above = before_boundary + (masked * (bits > middle)).sum(dim=-1, keepdim=True)
        found = above < target
        high = torch.where(found, middle, high)
        low = torch.where(found, low, middle + 1)
    return low


@register_divergence("akl")
class AdaptiveKL(Divergence):
    """Adaptive KL of Wu et al. 2024 (Eqs. 11-15).

    Sort the teacher probabilities in descending order; the head is the smallest prefix of that order whose
    teacher mass is ≥ μ (a token is in the head when the mass strictly before it is < μ), the tail the rest.
    With ε = |p - q|, g_head = Σ_head ε and g_tail = Σ_tail ε:

        AKL = g_head/(g_head+g_tail)·KL(p||q) + g_tail/(g_head+g_tail)·KL(q||p)

    (weights ½/½ where p = q exactly, where the reference code would divide 0 by 0). Halves: the
    forward-KL part on the teacher side, the reverse-KL part on the student side, with the same weights.
    The cumulative teacher mass is summed in float64 relative to its total, and μ ≥ 1 (μ ≤ 0) puts every
    token in the head (tail) exactly, so μ = 1 is KL(p||q) and μ = 0 is KL(q||p) to the last digit (a float32
    cumulative sum reaches 1 before the last tokens and gave ~2-5% of the weight to a spurious tail).

    ``detach_weights`` (default True, as the reference code ``AKL.py`` of Wu et al., which computes the
    weights from ``student_probs.detach()``): gradients do not flow through the weights; with False they do
    (closed form: ∂w_head/∂q_v = −sign(p_v − q_v)(head_v − w_head)/(g_head + g_tail)). Note: the reference
    code puts the token whose cumulative mass first exceeds μ into the tail (unless it is the top token);
    this follows the paper's "smallest set with mass ≥ μ" and puts it into the head.
    """

    swap_weights: ClassVar[bool] = False

    def __init__(self, mu: float = 0.5, detach_weights: bool = True, **common):
        super().__init__(**common)
        self.mu = _check_in_range(self.name, "mu", mu, 0.0, 1.0)
        if not isinstance(detach_weights, bool):
            raise ValueError(f"divergence {self.name!r}: detach_weights={detach_weights!r} must be true or false")
        self.detach_weights = detach_weights

    def head_mask(self, p: Tensor, sync_free: bool | None = None) -> Tensor:
        """True for the head tokens of each row (Wu et al. Eqs. 11-12), in vocabulary order: a token is in the
        head when the teacher mass of the tokens strictly more probable than it, summed in float64, is below μ
        times the row's total mass (so rounding never moves a token to the tail, and tokens tied with the last
        head token join it, whatever order a sort would give ties); μ ≥ 1 / μ ≤ 0: all head / all tail.

        Without a sort over the vocabulary (the sort was ~90% of AKL's time at V = 50k): tokens are binned by
        their probability's bit pattern (monotone in the value, ~64 bins per octave below the row's top token);
        the float64 bin masses decide every bin but the one where the cumulative mass crosses μ, and only that
        bin's tokens are ordered: by a top-k over the few of them (its width is read on the host: on the CPU), or,
        with `sync_free` (default: on an accelerator, where that read would stall the device once per chunk), by a
        fixed number of bisection steps over the bit patterns of that bin (the smallest value b whose strictly
        larger tokens hold less than μ of the mass: exactly the last head token's value)."""
        if self.mu >= 1:
            return torch.ones_like(p, dtype=torch.bool)
        if self.mu <= 0:
            return torch.zeros_like(p, dtype=torch.bool)
        p = p.detach()
        if p.dtype not in _FLOAT_BITS:
            p = p.float()
        int_dtype, mantissa_bits = _FLOAT_BITS[p.dtype]
        bits = p.contiguous().view(int_dtype)  # monotone in the value for p >= 0
        distance = bits.amax(dim=-1, keepdim=True) - bits  # 0 for the top token
        bins = distance.bitwise_right_shift_(mantissa_bits - _HEAD_BIN_BITS).clamp_(max=_HEAD_BINS - 1).long()
        mass = torch.zeros(*p.shape[:-1], _HEAD_BINS, dtype=torch.float64, device=p.device)
        mass.scatter_add_(-1, bins, p.double())
        through = mass.cumsum(dim=-1)  # mass of the bins up to and including each one
        target = self.mu * through[..., -1:]
        # the bin where the mass crosses μ (μ < 1); a row without mass (all −inf) has no head
        boundary = (through <= target).sum(dim=-1, keepdim=True).clamp_(max=_HEAD_BINS - 1)
        before_boundary = through.gather(-1, boundary) - mass.gather(-1, boundary)
        in_boundary = bins == boundary
        if p.device.type != "cpu" if sync_free is None else sync_free:
            last_head = _bisect_boundary(p, bits, bins, boundary, in_boundary, before_boundary, target,
                                         mantissa_bits - _HEAD_BIN_BITS)
            return ((bins < boundary) | (in_boundary & (bits >= last_head))) & (target > 0)
        width = int(in_boundary.sum(dim=-1).max())
        candidates = torch.where(in_boundary, p, torch.full_like(p, -1.0)).topk(width, dim=-1).values
        candidate_mass = candidates.clamp(min=0).double()
        mass_before = before_boundary + candidate_mass.cumsum(dim=-1) - candidate_mass
        last = ((mass_before < target) & (candidates >= 0)).sum(dim=-1, keepdim=True) - 1
        threshold = torch.where(last >= 0, candidates.gather(-1, last.clamp(min=0)),
                                torch.full_like(last, float("inf"), dtype=p.dtype))
        return ((bins < boundary) | (in_boundary & (p >= threshold))) & (target > 0)

    def gap_weights(self, p: Tensor, q: Tensor, head: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(g_head, g_tail) / (g_head + g_tail) per row (Wu et al. Eqs. 11-14)."""
        head = self.head_mask(p) if head is None else head
        gap = (p - q).abs()
        head_gap = rowdot(gap, head.to(gap.dtype))
        total = gap.sum(dim=-1)
        has_gap = total > 0
        safe_total = torch.where(has_gap, total, torch.ones_like(total))
        head_weight = torch.where(has_gap, head_gap / safe_total, torch.full_like(total, 0.5))
        return head_weight, 1 - head_weight

    def halves(self, dist, *prefix_logprobs):
        if self.detach_weights:
            head_weight, tail_weight = self.gap_weights(dist.p.detach(), dist.q.detach())
        else:
            head_weight, tail_weight = self.gap_weights(dist.p, dist.q)
        if self.swap_weights:
            head_weight, tail_weight = tail_weight, head_weight
        return head_weight * kl(dist.p, dist.log_p, dist.log_q), tail_weight * kl(dist.q, dist.log_q, dist.log_p)

    def closed_form(self, dist, part, *prefix_logprobs):
        head = self.head_mask(dist.p)
        head_weight, tail_weight = self.gap_weights(dist.p, dist.q, head)
        forward_weight, reverse_weight = (tail_weight, head_weight) if self.swap_weights else (head_weight, tail_weight)
        log_ratio = dist.log_q - dist.log_p
        forward = -rowdot(dist.p, log_ratio)   # KL(p||q)
        reverse = rowdot(dist.q, log_ratio)    # KL(q||p)
        use_forward, use_reverse = part in ("both", "teacher"), part in ("both", "student")
        values = forward_weight * forward * use_forward + reverse_weight * reverse * use_reverse
        if use_reverse:  # h = reverse_weight·q·log(q/p) − forward_weight·p, in place on log_ratio
            h = log_ratio.mul_(dist.q).mul_(reverse_weight.unsqueeze(-1))
            if use_forward:
                h.addcmul_(dist.p, forward_weight.unsqueeze(-1), value=-1.0)
        else:
            h = dist.p * (-forward_weight).unsqueeze(-1)
        if not self.detach_weights:
            # ∂w_forward/∂q_v = s·D_v with D_v = −sign(p_v − q_v)(head_v − w_head)/G and s = ±1 (swapped)
            total = (dist.p - dist.q).abs().sum(dim=-1, keepdim=True)
            has_gap = total > 0
            sign = -1.0 if self.swap_weights else 1.0
            d_weight = (dist.p - dist.q).sign_().neg_().mul_(head.to(dist.p.dtype) - head_weight.unsqueeze(-1))
            d_weight = d_weight.div_(torch.where(has_gap, total, torch.ones_like(total))).mul_(has_gap)
            through_weights = forward * use_forward - reverse * use_reverse
            h = _add(h, d_weight.mul_(dist.q).mul_((sign * through_weights).unsqueeze(-1)))
        return ClosedForm(values, h)


@register_divergence("akl_r")
class AdaptiveKLReversed(AdaptiveKL):
    """The AKL ablation with the weights swapped (Wu et al. Eq. 16): g_tail/(g_head+g_tail)·KL(p||q) +
    g_head/(g_head+g_tail)·KL(q||p)."""

    swap_weights: ClassVar[bool] = True
