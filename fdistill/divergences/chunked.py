"""One chunked autograd mechanism shared by every divergence.

A naive token-level divergence on logits ``[N, V]`` materialises several ``[N, V]`` float32 intermediates
(two log-softmaxes, probabilities, the mixture, products) and autograd keeps most of them for backward.
:class:`ChunkedRowFunction` instead runs a per-row function on ``chunk_rows`` rows at a time, so at most one
chunk of ``[chunk_rows, V]`` temporaries exists at once:

* forward, when a gradient is wanted: each chunk's values *and* per-row gradients are computed at once by
  a ``row_grad_fn`` and written into one buffer per input (the size of the gradient that backward must
  return anyway). The divergences give them in closed form (``losses.py``); :func:`autograd_row_grads`
  gets them by differentiating the chunk with autograd, the test oracle;
* backward: the stored per-row gradients are scaled in place by the incoming per-row gradient and handed
  over, so no second ``[N, V]`` buffer is allocated. A later backward through the same graph
  (``retain_graph=True``, ``gradcheck``) finds them handed over and recomputes chunk by chunk instead.

Nothing here is per-divergence.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fdistill.errors import FdistillError

#: default chunk budget on the CPU: rows × vocabulary elements per chunk (4 MiB per float32 temporary: the
#: chunk's temporaries stay in the last-level cache; 2**21 elements were ~25% slower on CPU, 2**18 no faster)
DEFAULT_CHUNK_ELEMENTS = 2**20
#: on a GPU: 2**28 elements (1 GiB per float32 temporary: 2,092 rows at Llama-3's 128,256 entries), at least
#: GPU_MIN_CHUNK_ROWS rows, so that each chunk's matmuls are compute-bound and the [V, H] head weights and their
#: float32 gradient are read and written once per ~2k tokens instead of once per 8
GPU_CHUNK_ELEMENTS = 2**28
GPU_MIN_CHUNK_ROWS = 1024
#: the fused lm-head path on the CPU: at least this many rows per chunk, since every chunk re-reads both [V, H]
#: head weights and updates the [V, H] weight gradient (2,048 × 50,257 × 576 JS: 7.6 s at the cache-sized 20
#: rows, 5.1 s at 64; 1,024 × 128,256 × 2,048: 70 s at 8 rows, 20 s at 128; 2 threads, this CPU)
FUSED_CPU_MIN_CHUNK_ROWS = 128

#: row_grad_fn(pieces, out_grads) -> values [rows]; writes the per-row gradient of each wanted input into its
#: slice of the gradient buffer (``out_grads[i]``; None for inputs without a gradient)
RowGradFn = Callable[[Sequence[Tensor], Sequence[Tensor | None]], Tensor]


class NonFiniteInputError(FdistillError, ValueError):
    """NaN or +inf in a divergence input (``-inf`` is a masked vocabulary entry, never an error).

    Raised inside a chunk with the chunk-local ``row``; :func:`chunked_rows` shifts it to the row of the
    whole input and :meth:`located` turns it into a position of the caller's shape.
    """

    def __init__(self, tensor: str, kind: str, row: int, column: int | None = None, where: str = "",
                 position: tuple[int, ...] | None = None):
        self.tensor, self.kind, self.row, self.column, self.where = tensor, kind, row, column, where
        self.position = position
        at = position if position is not None else (row,) if column is None else (row, column)
        super().__init__(
            f"{where + ': ' if where else ''}{tensor} contain {kind} at position {tuple(at)}: the model (or its "
            "input) has diverged. A NaN/+inf is never treated as a masked entry (only -inf is); check the "
            "learning rate, the mixed precision setting and the last good checkpoint")

    def shifted(self, offset: int) -> NonFiniteInputError:
        return NonFiniteInputError(self.tensor, self.kind, self.row + offset, self.column, self.where)

    def located(self, where: str, lead_shape: torch.Size) -> NonFiniteInputError:
        """The same error with the position in ``lead_shape`` (+ the vocabulary index, if any)."""
        index = tuple(int(i) for i in np.unravel_index(self.row, tuple(lead_shape))) if len(lead_shape) else ()
        position = index + (() if self.column is None else (self.column,))
        return NonFiniteInputError(self.tensor, self.kind, self.row, self.column, where, position)


_ORACLE = threading.local()
_DEFERRED = threading.local()


class FinitenessFlag:
    """Whether any chunk of a loss call met a NaN/±inf input, accumulated on the device (no host sync)."""

    def __init__(self) -> None:
        self.bad: Tensor | None = None

    def add(self, bad: Tensor) -> None:
        self.bad = bad if self.bad is None else self.bad | bad

    def found(self) -> bool:
        """The one host sync of the loss call."""
        return self.bad is not None and bool(self.bad)


@contextmanager
def deferred_finiteness() -> Iterator[FinitenessFlag]:
    """Within the block, the divergences assume finite inputs and record on the device whether that held (one
    reduction per chunk, no host sync); the caller reads the flag once, after the last chunk, and computes the
    call again on the exact path (−inf entries masked, NaN/+inf raised) only where it did not hold. So a loss
    call makes one host sync instead of one per chunk."""
    flag, previous = FinitenessFlag(), getattr(_DEFERRED, "flag", None)
    _DEFERRED.flag = flag
    try:
        yield flag
    finally:
        _DEFERRED.flag = previous


def deferred_flag() -> FinitenessFlag | None:
    return getattr(_DEFERRED, "flag", None)


def once_checked(compute: Callable[[], Any]) -> Any:
    """``compute()`` under :func:`deferred_finiteness`, and once more on the exact path if an input was not
    finite (a masked vocabulary or a diverged model: rare, so the common call pays one host sync)."""
    with deferred_finiteness() as flag:
        result = compute()
    return compute() if flag.found() else result


@contextmanager
def autograd_oracle() -> Iterator[None]:
    """Within the block, divergences differentiate their definition with autograd instead of using their
    closed-form gradients (the tests compare the two)."""
    previous = getattr(_ORACLE, "on", False)
    _ORACLE.on = True
    try:
        yield
    finally:
        _ORACLE.on = previous


def oracle_requested() -> bool:
    return getattr(_ORACLE, "on", False)


def default_chunk_rows(vocab_size: int, device: torch.device | str | None = None, fused: bool = False) -> int:
    """Rows per chunk so that one ``[rows, vocab_size]`` temporary holds the device's budget: cache-sized on the
    CPU (:data:`DEFAULT_CHUNK_ELEMENTS`; for the fused lm-head path at least :data:`FUSED_CPU_MIN_CHUNK_ROWS`),
    :data:`GPU_CHUNK_ELEMENTS` (and at least :data:`GPU_MIN_CHUNK_ROWS` rows) on an accelerator."""
    if device is not None and torch.device(device).type != "cpu":
        return max(GPU_MIN_CHUNK_ROWS, GPU_CHUNK_ELEMENTS // max(1, vocab_size))
    rows = max(1, DEFAULT_CHUNK_ELEMENTS // max(1, vocab_size))
    return max(rows, FUSED_CPU_MIN_CHUNK_ROWS) if fused else rows


def autograd_row_grads(row_fn: Callable[..., Tensor]) -> RowGradFn:
    """The row-gradient function of a differentiable ``row_fn(*pieces) -> values [rows]``: every output row
    depends only on its own input row, so the gradient of the chunk's sum is the per-row gradient."""

    def row_grads(pieces: Sequence[Tensor], out_grads: Sequence[Tensor | None]) -> Tensor:
        want_grads = [out is not None for out in out_grads]
        if not any(want_grads):
            with torch.no_grad():
                return row_fn(*pieces)
        with torch.enable_grad():
            leaves = [piece.detach().requires_grad_(want) for piece, want in zip(pieces, want_grads, strict=True)]
            values = row_fn(*leaves)
            wanted = [leaf for leaf, want in zip(leaves, want_grads, strict=True) if want]
            if values.requires_grad:
                found = torch.autograd.grad(values, wanted, grad_outputs=torch.ones_like(values), allow_unused=True)
            else:
                found = (None,) * len(wanted)
        found_iter = iter(found)
        for out in out_grads:
            if out is not None:
                grad = next(found_iter)
                out.copy_(grad) if grad is not None else out.zero_()
        return values.detach()

    return row_grads


def _row_view(weights: Tensor, like: Tensor) -> Tensor:
    """Per-row weights ``[rows]`` shaped to broadcast against ``like`` (``[rows]`` or ``[rows, V]``)."""
    return weights.reshape(weights.shape + (1,) * (like.dim() - 1)).to(like.dtype)


def _run_chunks(row_grad_fn: RowGradFn, inputs: Sequence[Tensor], chunk_rows: int, values: Tensor,
                grads: Sequence[Tensor | None], grad_values: Tensor | None = None) -> None:
    """Fill `values` and the gradient buffers chunk by chunk (scaled by `grad_values` when given)."""
    for start in range(0, inputs[0].shape[0], chunk_rows):
        chunk = slice(start, start + chunk_rows)
        outs = [None if buffer is None else buffer[chunk] for buffer in grads]
        try:
            values[chunk] = row_grad_fn([x[chunk] for x in inputs], outs)
        except NonFiniteInputError as error:
            raise error.shifted(start) from None
        if grad_values is not None:
            for out in outs:
                if out is not None:
                    out.mul_(_row_view(grad_values[chunk], out))


class ChunkedRowFunction(torch.autograd.Function):
    """``row_grad_fn`` over row-aligned inputs (student [N, V], teacher [N, V], extras [N]), ``chunk_rows``
    rows at a time; returns the values [N] and gives the stored per-row gradients in backward."""

    @staticmethod
    def forward(ctx, row_grad_fn, chunk_rows, want_grads, out_dtype, *inputs):  # noqa: D102
        values = torch.empty(inputs[0].shape[0], dtype=out_dtype, device=inputs[0].device)
        grads = [torch.empty_like(x) if want else None for x, want in zip(inputs, want_grads, strict=True)]
        _run_chunks(row_grad_fn, inputs, chunk_rows, values, grads)
        ctx.row_grad_fn, ctx.chunk_rows, ctx.want_grads = row_grad_fn, chunk_rows, want_grads
        ctx.eager_grads = grads if any(want_grads) else None
        ctx.save_for_backward(*inputs)
        return values

    @staticmethod
    def backward(ctx, grad_values):  # noqa: D102
        eager, ctx.eager_grads = ctx.eager_grads, None  # hand the buffers over exactly once
        if eager is not None:
            ones = bool((grad_values == 1).all())  # e.g. values.sum(): the buffers are the gradients already
            grads = [None if g is None else g if ones else g.mul_(_row_view(grad_values, g)) for g in eager]
        else:  # a second backward through a retained graph: recompute chunk by chunk
            inputs = ctx.saved_tensors
            grads = [torch.zeros_like(x) if want else None for x, want in zip(inputs, ctx.want_grads, strict=True)]
            scratch = torch.empty(inputs[0].shape[0], dtype=grad_values.dtype, device=grad_values.device)
            _run_chunks(ctx.row_grad_fn, inputs, ctx.chunk_rows, scratch, grads, grad_values)
        return (None, None, None, None, *grads)


def chunked_rows(row_grad_fn: RowGradFn, inputs: Sequence[Tensor], chunk_rows: int, out_dtype: torch.dtype) -> Tensor:
    """Apply ``row_grad_fn`` to row-aligned ``inputs`` in chunks, with gradients for inputs that require them."""
    want_grads = tuple(torch.is_grad_enabled() and x.requires_grad for x in inputs)
    return ChunkedRowFunction.apply(row_grad_fn, chunk_rows, want_grads, out_dtype, *inputs)
