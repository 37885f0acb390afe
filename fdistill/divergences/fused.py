"""Fused lm-head losses: a divergence computed from the models' hidden states and output-head weights, a
chunk of tokens at a time, so the ``[tokens, V]`` logits never exist in full (the idea of Liger-Kernel's
fused linear losses, here for every registry divergence and part, the prefix mixture and temperature).

Per chunk: the student logits ``z = softcap(h_s W_sᵀ + b_s)`` and the teacher's (no gradient) are formed, the
divergence's closed form (``losses.py``) gives the values and ``∂L/∂z``; through the soft-cap
(``∂z/∂u = 1 − (z/cap)²``) this becomes ``∂L/∂u``, from which the chunk's ``∂L/∂h_s = ∂L/∂u · W_s`` and its
contributions ``∂L/∂uᵀ h_s`` and ``Σ ∂L/∂u`` to the weight and bias gradients (accumulated in float32) are
computed at once, all in forward. An optional cross-entropy term on labels (MLE, same logits) joins the
same pass.

* :func:`fused_per_token` (``Divergence.fused``): per-token values. The gradients are computed assuming
  every valid row's output gradient is equal (as after ``masked_mean`` or ``sum_per_sequence(...).mean()``);
  backward checks that and otherwise recomputes the pass with the actual per-row weights.
* :func:`fused_loss`: a scalar ``Σ_rows div_weight·D + ce_weight·CE`` with the row weights given up front
  (the training objectives): one pass, backward only scales.

Matmuls run in the hidden states' dtype (the autocast dtype under mixed precision, as the model's own head
would), the divergence math in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fdistill.divergences.chunked import NonFiniteInputError, default_chunk_rows, once_checked
from fdistill.divergences.losses import PARTS, Divergence, logit_gradient, token_distributions
from fdistill.divergences.sparse import (
    SparseSignal,
    bucket_teacher_logits,
    check_sparse_support,
    direct_kl_weight,
    sparse_kl_chunk,
)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SparseTeacher:
    """The teacher of a fused pass given as a sparse signal (`fdistill.divergences.sparse`) instead of a head."""

    signal: SparseSignal
    tail: str

    @property
    def kind(self) -> str:
        return self.signal.kind

    def chunk(self, rows: slice) -> list[Tensor]:
        return [piece[rows] for piece in self.signal.pieces()]


@dataclass(frozen=True)
class LinearHead:
    """An output head: ``logits = softcap(hidden @ weight.T + bias)`` with ``softcap(u) = cap·tanh(u/cap)``
    (Gemma 2's ``final_logit_softcapping``; None: no cap). ``weight`` is [V, H], ``bias`` [V] or None."""

    weight: Tensor
    bias: Tensor | None = None
    softcap: float | None = None

    def check(self, hidden: Tensor, name: str) -> None:
        if self.weight.dim() != 2 or hidden.shape[-1] != self.weight.shape[1]:
            raise ValueError(f"{name} hidden states {tuple(hidden.shape)} and weight {tuple(self.weight.shape)} do "
                             "not fit: need hidden [..., H] and weight [V, H]")
        if self.bias is not None and self.bias.shape != self.weight.shape[:1]:
            raise ValueError(f"{name} bias {tuple(self.bias.shape)} must be [V] = [{self.weight.shape[0]}]")
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"{name} softcap={self.softcap!r} must be a positive number or None")


def head_logits(head: LinearHead, hidden: Tensor) -> Tensor:
    """float32 logits of rows of hidden states [rows, H] through `head` (for a few rows at a time)."""
    return _logits(head, head.weight.to(_matmul_dtype(hidden)), hidden.to(_matmul_dtype(hidden)), torch.float32)


def _matmul_dtype(hidden: Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def _logits(head: LinearHead, weight: Tensor, hidden: Tensor, compute_dtype: torch.dtype) -> Tensor:
    logits = (hidden @ weight.T).to(compute_dtype)
    if head.bias is not None:
        logits += head.bias.to(compute_dtype)
    if head.softcap is not None:
        logits = torch.tanh_(logits.div_(head.softcap)).mul_(head.softcap)
    return logits


@dataclass
class _PassResult:
    values: Tensor                   # [rows] divergence values
    ce: Tensor | None                # [rows] cross-entropy on the labels
    grad_hidden: Tensor | None       # [rows, H_s]
    grad_weight: Tensor | None       # [V, H_s] float32
    grad_bias: Tensor | None         # [V] float32
    grad_prefix: list[Tensor | None]  # teacher, student prefix log-prob gradients [rows]


def _fused_pass(div: Divergence | None, part: str, student: LinearHead, teacher: LinearHead | None,
                student_hidden: Tensor, teacher_hidden: Tensor | None, extras: Sequence[Tensor],
                div_weights: Tensor | None, labels: Tensor | None, ce_weights: Tensor | None, want: Sequence[bool],
                chunk_rows: int | None) -> _PassResult:
    """Values and the gradients weighted per row by `div_weights` / `ce_weights` (None: values only).
    `want` = (student hidden, weight, bias, teacher prefix, student prefix). `div=None`: cross-entropy only."""
    rows, vocab = student_hidden.shape[0], student.weight.shape[0]
    wide = torch.float64 in (student_hidden.dtype, student.weight.dtype)
    compute_dtype = torch.float64 if wide else torch.float32
    matmul_dtype = _matmul_dtype(student_hidden)
    s_weight = student.weight.to(matmul_dtype)
    sparse = isinstance(teacher, SparseTeacher)
    t_weight = None if div is None or sparse else teacher.weight.to(_matmul_dtype(teacher_hidden))
    direct = None if not sparse or div is None else direct_kl_weight(div, part)
    grads = div_weights is not None
    values = torch.empty(rows, dtype=compute_dtype, device=student_hidden.device)
    ce = torch.empty_like(values) if labels is not None else None
    grad_hidden = torch.empty_like(student_hidden) if grads and want[0] else None
    grad_weight = torch.zeros(student.weight.shape, dtype=compute_dtype, device=values.device) if grads and want[1] else None
    grad_bias = torch.zeros(vocab, dtype=compute_dtype, device=values.device) if grads and want[2] else None
    grad_prefix = [torch.empty_like(values) if grads and flag else None for flag in want[3:5]]
    step = chunk_rows or default_chunk_rows(vocab, student_hidden.device, fused=True)
    zero_part = div is None or div.part_is_zero(part)
    temperature = 1.0 if div is None else div.temperature
    device_type = student_hidden.device.type
    with torch.no_grad(), torch.autocast(device_type, enabled=False):
        for start in range(0, rows, step):
            chunk = slice(start, start + step)
            hidden = student_hidden[chunk].to(matmul_dtype)
            z = _logits(student, s_weight, hidden, compute_dtype)
            dist = None
            if div is not None and direct is None:
                if sparse:  # a top-k signal, tail=bucket: the teacher's coarsened distribution as a full one
                    teacher_z = bucket_teacher_logits(z, teacher.chunk(chunk))
                else:
                    teacher_z = _logits(teacher, t_weight, teacher_hidden[chunk].to(t_weight.dtype), compute_dtype)
                try:
                    dist = token_distributions(z, teacher_z, div.temperature, div.teacher_temperature,
                                               div.probabilities_only and labels is None)
                except NonFiniteInputError as error:
                    raise error.shifted(start) from None
            chunk_grad = None
            if zero_part:
                values[chunk] = 0.0
            elif direct is not None:  # KL against a sparse signal: its own closed form
                values[chunk], chunk_grad = sparse_kl_chunk(z, teacher.chunk(chunk), teacher.kind, teacher.tail,
                                                            direct * div.scale)
                if grads:
                    chunk_grad.mul_(div_weights[chunk].to(compute_dtype).unsqueeze(-1))
                else:
                    chunk_grad = None
            else:
                result = div.closed_form(dist, part, *(x[chunk].to(compute_dtype) for x in extras))
                values[chunk] = result.values * div.scale
                if grads and (result.h is not None or result.gradient is not None):
                    chunk_grad = logit_gradient(result, dist.q, div.scale / div.temperature)
                    chunk_grad.mul_(div_weights[chunk].to(compute_dtype).unsqueeze(-1))
                for index, grad in enumerate(grad_prefix):
                    if grad is not None:
                        found = result.prefix_grads[index] if result.prefix_grads else torch.zeros_like(result.values)
                        grad[chunk] = found * div.scale * div_weights[chunk].to(compute_dtype)
            if labels is not None:
                chunk_labels = labels[chunk]
                valid = chunk_labels != IGNORE_INDEX
                reuse = dist is not None and temperature == 1.0
                log_q = dist.log_q if reuse else torch.log_softmax(z, dim=-1)
                safe = chunk_labels.clamp_min(0).unsqueeze(-1)
                ce[chunk] = -log_q.gather(-1, safe).squeeze(-1).masked_fill(~valid, 0.0)
                if grads:
                    ce_grad = dist.q.clone() if reuse else log_q.exp_()
                    ce_grad.scatter_add_(-1, safe, torch.full_like(safe, -1.0, dtype=compute_dtype))
                    ce_grad.mul_((ce_weights[chunk].to(compute_dtype) * valid).unsqueeze(-1))
                    chunk_grad = ce_grad if chunk_grad is None else chunk_grad.add_(ce_grad)
            if chunk_grad is None:
                if grad_hidden is not None:
                    grad_hidden[chunk] = 0.0
                continue
            if student.softcap is not None:
                chunk_grad.mul_(1 - (z / student.softcap).square_())
            if grad_hidden is not None:
                grad_hidden[chunk] = (chunk_grad.to(matmul_dtype) @ s_weight).to(grad_hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(chunk_grad.T, hidden.to(compute_dtype))
            if grad_bias is not None:
                grad_bias += chunk_grad.sum(dim=0)
    return _PassResult(values, ce, grad_hidden, grad_weight, grad_bias, grad_prefix)


def _prepare(div: Divergence, part: str, student: LinearHead, teacher: LinearHead, student_hidden: Tensor,
             teacher_hidden: Tensor, prefix_logprobs: dict) -> tuple[torch.Size, Tensor, Tensor, list[Tensor]]:
    if part not in PARTS:
        raise ValueError(f"part={part!r}; expected one of {PARTS}")
    student.check(student_hidden, "student")
    teacher.check(teacher_hidden, "teacher")
    if student.weight.shape[0] != teacher.weight.shape[0]:
        raise ValueError(f"student and teacher heads emit {student.weight.shape[0]} and {teacher.weight.shape[0]} "
                         "logits: both must cover the same vocabulary (slice the padding rows off)")
    lead = student_hidden.shape[:-1]
    if teacher_hidden.shape[:-1] != lead:
        raise ValueError(f"student hidden {tuple(student_hidden.shape)} and teacher hidden "
                         f"{tuple(teacher_hidden.shape)} must share their leading (token) dimensions")
    extras = div.prefix_inputs(prefix_logprobs, lead)
    return lead, student_hidden.reshape(-1, student_hidden.shape[-1]), \
        teacher_hidden.reshape(-1, teacher_hidden.shape[-1]), extras


class _FusedPerToken(torch.autograd.Function):
    @staticmethod
    def forward(ctx, div, part, student, teacher, chunk_rows, want, s_hidden, s_weight, s_bias, t_hidden, *extras):
        ones = torch.ones(s_hidden.shape[0], dtype=torch.float32, device=s_hidden.device)
        result = once_checked(lambda: _fused_pass(div, part, student, teacher, s_hidden, t_hidden, extras,
                                                  ones if any(want) else None, None, None, want, chunk_rows))
        ctx.args = (div, part, student, teacher, chunk_rows, want)
        ctx.result = result
        ctx.save_for_backward(s_hidden, t_hidden, *extras)
        return result.values

    @staticmethod
    def backward(ctx, grad_values):
        div, part, student, teacher, chunk_rows, want = ctx.args
        result, ctx.result = ctx.result, None
        s_hidden, t_hidden, *extras = ctx.saved_tensors
        uniform = grad_values.numel() == 0 or bool((grad_values == grad_values[0]).all())
        if result is None or not uniform:  # a second backward, or per-row weights: one more pass with them
            result = once_checked(lambda: _fused_pass(div, part, student, teacher, s_hidden, t_hidden, extras,
                                                      grad_values, None, None, want, chunk_rows))
            scale_rows, scale = None, 1.0
        else:
            scale_rows, scale = grad_values, float(grad_values[0]) if grad_values.numel() else 0.0
        grad_hidden = result.grad_hidden  # the pass's buffers are handed over and scaled in place
        if grad_hidden is not None and scale_rows is not None:
            grad_hidden = grad_hidden.mul_(scale_rows.to(grad_hidden.dtype).unsqueeze(-1))
        grad_weight = None if result.grad_weight is None else result.grad_weight.mul_(scale).to(student.weight.dtype)
        grad_bias = None if result.grad_bias is None else result.grad_bias.mul_(scale).to(student.bias.dtype)
        grad_prefix = [None if grad is None else grad * (scale_rows if scale_rows is not None else 1.0)
                       for grad in result.grad_prefix][:len(extras)]
        return (None, None, None, None, None, None, grad_hidden, grad_weight, grad_bias, None, *grad_prefix)


def fused_per_token(div: Divergence, part: str, student_hidden: Tensor, student_weight: Tensor,
                    student_bias: Tensor | None, teacher_hidden: Tensor, teacher_weight: Tensor,
                    teacher_bias: Tensor | None, *, mask: Tensor | None = None, student_softcap: float | None = None,
                    teacher_softcap: float | None = None, chunk_rows: int | None = None,
                    **prefix_logprobs: Tensor) -> Tensor:
    """``Divergence.fused``: per-token values of shape ``hidden.shape[:-1]`` (0 where ``mask`` is False)."""
    student = LinearHead(student_weight, student_bias, student_softcap)
    teacher = LinearHead(teacher_weight.detach(), None if teacher_bias is None else teacher_bias.detach(),
                         teacher_softcap)
    lead, s_flat, t_flat, extras = _prepare(div, part, student, teacher, student_hidden, teacher_hidden.detach(),
                                            prefix_logprobs)
    selected = None
    if mask is not None:
        if mask.shape != lead:
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected hidden.shape[:-1] = {tuple(lead)}")
        selected = mask.reshape(-1).bool().nonzero().squeeze(-1)
        s_flat, t_flat = s_flat.index_select(0, selected), t_flat.index_select(0, selected)
        extras = [x.index_select(0, selected) for x in extras]
    grad_on = torch.is_grad_enabled()
    want = (grad_on and student_hidden.requires_grad, grad_on and student_weight.requires_grad,
            grad_on and student_bias is not None and student_bias.requires_grad,
            *(grad_on and x.requires_grad for x in extras))
    want = tuple(want) + (False,) * (5 - len(want))
    try:
        values = _FusedPerToken.apply(div, part, student, teacher, chunk_rows or div.chunk_tokens, want, s_flat,
                                      student_weight, student_bias, t_flat, *extras)
    except NonFiniteInputError as error:
        if selected is not None:
            error = error.shifted(int(selected[error.row]) - error.row)
        raise error.located(f"divergence {div.name!r} (fused)", lead) from None
    if selected is not None:
        values = values.new_zeros(lead.numel()).index_put((selected,), values)
    return values.reshape(lead)


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, div, part, student, teacher, chunk_rows, want, div_weights, labels, ce_weights, s_hidden,
                s_weight, s_bias, t_hidden):
        result = once_checked(lambda: _fused_pass(div, part, student, teacher, s_hidden, t_hidden, (), div_weights,
                                                  labels, ce_weights, want, chunk_rows))
        total = (result.values * div_weights.to(result.values.dtype)).sum() if div is not None else \
            result.values.new_zeros(())
        if result.ce is not None:
            total = total + (result.ce * ce_weights.to(result.ce.dtype)).sum()
        ctx.result, ctx.dtypes = result, (student.weight.dtype, None if student.bias is None else student.bias.dtype)
        ctx.mark_non_differentiable(result.values)
        ce = result.ce if result.ce is not None else result.values.new_zeros(0)
        ctx.mark_non_differentiable(ce)
        return total, result.values, ce

    @staticmethod
    def backward(ctx, grad_total, _grad_values, _grad_ce):
        result, ctx.result = ctx.result, None
        if result is None:
            raise RuntimeError("fused_loss supports one backward pass (its gradients are computed in forward); "
                               "use Divergence.fused for a second one")
        scale = grad_total.to(result.values.dtype)  # the pass's buffers are handed over and scaled in place
        grad_hidden = None if result.grad_hidden is None else result.grad_hidden.mul_(scale.to(result.grad_hidden.dtype))
        grad_weight = None if result.grad_weight is None else result.grad_weight.mul_(scale).to(ctx.dtypes[0])
        grad_bias = None if result.grad_bias is None else result.grad_bias.mul_(scale).to(ctx.dtypes[1])
        return (None,) * 9 + (grad_hidden, grad_weight, grad_bias, None)


def fused_loss(div: Divergence | None, part: str, student: LinearHead, student_hidden: Tensor,
               teacher: LinearHead | None, teacher_hidden: Tensor | None, div_weights: Tensor | None,
               labels: Tensor | None = None, ce_weights: Tensor | None = None,
               chunk_rows: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """``Σ_rows div_weights·D_part + ce_weights·CE(labels)`` over rows of ``[rows, H]`` hidden states, and the
    per-row divergence and cross-entropy values (detached). Weights are per row ([rows]), e.g.
    ``mask / mask.sum()`` for a masked mean. ``div=None`` (and no teacher): the cross-entropy alone, i.e. MLE
    without materialising the logits."""
    if div is None:
        student.check(student_hidden, "student")
        s_flat, t_flat = student_hidden.reshape(-1, student_hidden.shape[-1]), None
        div_weights = torch.zeros(s_flat.shape[0], device=s_flat.device)
    else:
        teacher = LinearHead(teacher.weight.detach(), None if teacher.bias is None else teacher.bias.detach(),
                             teacher.softcap)
        _, s_flat, t_flat, _ = _prepare(div, part, student, teacher, student_hidden, teacher_hidden.detach(), {})
    if div is not None and div.uses_prefix_logprobs:
        raise ValueError("fused_loss does not take prefix log-probabilities; use Divergence.fused for mixture='prefix'")
    if (labels is None) != (ce_weights is None):
        raise ValueError("labels and ce_weights go together")
    grad_on = torch.is_grad_enabled()
    want = (grad_on and student_hidden.requires_grad, grad_on and student.weight.requires_grad,
            grad_on and student.bias is not None and student.bias.requires_grad, False, False)
    chunk_rows = chunk_rows or (div.chunk_tokens if div is not None else None)
    total, values, ce = _FusedLoss.apply(div, part, student, teacher, chunk_rows, want,
                                         div_weights.reshape(-1), None if labels is None else labels.reshape(-1),
                                         None if ce_weights is None else ce_weights.reshape(-1), s_flat,
                                         student.weight, student.bias, t_flat)
    return total, values, (ce if labels is not None else None)


def sparse_fused_loss(div: Divergence, part: str, student: LinearHead, student_hidden: Tensor, signal: SparseSignal,
                      tail: str, div_weights: Tensor, labels: Tensor | None = None, ce_weights: Tensor | None = None,
                      chunk_rows: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`fused_loss` against a sparse teacher `signal` (rows aligned with `student_hidden` [rows, H]): only the
    student's logits of each chunk exist, never the teacher's (see `fdistill.divergences.sparse`)."""
    check_sparse_support(div, part, signal.kind, tail)
    student.check(student_hidden, "student")
    if signal.ids.shape[0] != student_hidden.shape[0]:
        raise ValueError(f"the signal has {signal.ids.shape[0]} rows, the student hidden states {student_hidden.shape[0]}")
    if (labels is None) != (ce_weights is None):
        raise ValueError("labels and ce_weights go together")
    grad_on = torch.is_grad_enabled()
    want = (grad_on and student_hidden.requires_grad, grad_on and student.weight.requires_grad,
            grad_on and student.bias is not None and student.bias.requires_grad, False, False)
    total, values, ce = _FusedLoss.apply(div, part, student, SparseTeacher(signal.to(student_hidden.device), tail),
                                         chunk_rows or div.chunk_tokens, want, div_weights.reshape(-1),
                                         None if labels is None else labels.reshape(-1),
                                         None if ce_weights is None else ce_weights.reshape(-1), student_hidden,
                                         student.weight, student.bias, None)
    return total, values, (ce if labels is not None else None)


def fused_label_log_probs(head: LinearHead, hidden: Tensor, labels: Tensor, temperature: float = 1.0,
                          chunk_rows: int | None = None) -> Tensor:
    """log softmax(logits / temperature)[label] per row of ``[rows, H]`` hidden states (0 where the label is
    −100), chunk by chunk, without gradient: the prefix log-probabilities of the exact JS mixture."""
    head.check(hidden, "model")
    rows, vocab = hidden.shape[0], head.weight.shape[0]
    matmul_dtype = _matmul_dtype(hidden)
    weight = head.weight.to(matmul_dtype)
    compute_dtype = torch.float64 if torch.float64 in (hidden.dtype, head.weight.dtype) else torch.float32
    out = torch.empty(rows, dtype=compute_dtype, device=hidden.device)
    step = chunk_rows or default_chunk_rows(vocab, hidden.device, fused=True)
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, rows, step):
            chunk = slice(start, start + step)
            logits = _logits(head, weight, hidden[chunk].to(matmul_dtype), compute_dtype)
            if temperature != 1.0:
                logits = logits.div_(temperature)
            valid = labels[chunk] != IGNORE_INDEX
            picked = logits.gather(-1, labels[chunk].clamp_min(0).unsqueeze(-1)).squeeze(-1)
            out[chunk] = (picked - torch.logsumexp(logits, dim=-1)).masked_fill(~valid, 0.0)
    return out


def fused_label_logits(head: LinearHead, hidden: Tensor, labels: Tensor, temperature: float = 1.0,
                       chunk_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """(logit of the label, largest logit) per row of ``[rows, H]`` hidden states, divided by `temperature`,
    chunk by chunk without gradient (the teacher-induced reward of LLMR reads these)."""
    head.check(hidden, "model")
    rows, vocab = hidden.shape[0], head.weight.shape[0]
    matmul_dtype = _matmul_dtype(hidden)
    weight = head.weight.to(matmul_dtype)
    compute_dtype = torch.float64 if torch.float64 in (hidden.dtype, head.weight.dtype) else torch.float32
    chosen = torch.empty(rows, dtype=compute_dtype, device=hidden.device)
    best = torch.empty_like(chosen)
    step = chunk_rows or default_chunk_rows(vocab, hidden.device, fused=True)
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, rows, step):
            chunk = slice(start, start + step)
            logits = _logits(head, weight, hidden[chunk].to(matmul_dtype), compute_dtype)
            if temperature != 1.0:
                logits = logits.div_(temperature)
            chosen[chunk] = logits.gather(-1, labels[chunk].clamp_min(0).unsqueeze(-1)).squeeze(-1)
            best[chunk] = logits.amax(dim=-1)
    return chosen, best
