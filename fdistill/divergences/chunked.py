"""One chunked autograd mechanism shared by every divergence.

A naive token-level divergence on logits ``[N, V]`` materialises several ``[N, V]`` float32 intermediates
(two log-softmaxes, probabilities, the mixture, products) and autograd keeps most of them for backward.
:class:`ChunkedRowFunction` instead runs a per-row function on ``chunk_rows`` rows at a time, so at most one
chunk of ``[chunk_rows, V]`` temporaries exists at once:

* forward, when a gradient is wanted: each chunk is evaluated with autograd enabled and differentiated
  right away (every output row depends only on its own input row, so the gradient of the chunk's sum is
  the per-row gradient). The gradients are written into one buffer per input (the size of the gradient
  that backward must return anyway) and the chunk's graph is dropped;
* backward: the stored per-row gradients are scaled in place by the incoming per-row gradient and handed
  over, so no second ``[N, V]`` buffer is allocated. A later backward through the same graph
  (``retain_graph=True``, ``gradcheck``) finds them handed over and recomputes chunk by chunk instead.

The divergences only define their math on one chunk (see ``losses.py``); nothing here is per-divergence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from fdistill.errors import FdistillError

#: default chunk budget: rows × vocabulary elements per chunk (8 MiB per float32 temporary)
DEFAULT_CHUNK_ELEMENTS = 2**21

RowFunction = Callable[..., Tensor]


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


def default_chunk_rows(vocab_size: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Rows per chunk so that one ``[rows, vocab_size]`` temporary holds ``chunk_elements`` values."""
    return max(1, chunk_elements // max(1, vocab_size))


def _chunk_gradients(
    row_fn: RowFunction, pieces: Sequence[Tensor], want_grads: Sequence[bool]
) -> tuple[Tensor, list[Tensor | None]]:
    """Evaluate ``row_fn`` on one chunk with autograd: (values, per-row gradients of the wanted inputs)."""
    with torch.enable_grad():
        leaves = [piece.detach().requires_grad_(want) for piece, want in zip(pieces, want_grads, strict=True)]
        values = row_fn(*leaves)
        wanted = [leaf for leaf, want in zip(leaves, want_grads, strict=True) if want]
        if values.requires_grad:
            found = torch.autograd.grad(values, wanted, grad_outputs=torch.ones_like(values), allow_unused=True)
        else:
            found = (None,) * len(wanted)
    found_iter = iter(found)
    grads: list[Tensor | None] = []
    for leaf, want in zip(leaves, want_grads, strict=True):
        if not want:
            grads.append(None)
            continue
        grad = next(found_iter)
        grads.append(torch.zeros_like(leaf) if grad is None else grad)
    return values.detach(), grads


def _row_view(weights: Tensor, like: Tensor) -> Tensor:
    """Per-row weights ``[rows]`` shaped to broadcast against ``like`` (``[rows]`` or ``[rows, V]``)."""
    return weights.reshape(weights.shape + (1,) * (like.dim() - 1)).to(like.dtype)


class ChunkedRowFunction(torch.autograd.Function):
    """``row_fn(student [N, V], teacher [N, V], *extras [N]) -> [N]`` evaluated ``chunk_rows`` rows at a time."""

    @staticmethod
    def forward(ctx, row_fn, chunk_rows, want_grads, out_dtype, *inputs):  # noqa: D102
        rows = inputs[0].shape[0]
        values = torch.empty(rows, dtype=out_dtype, device=inputs[0].device)
        grads = [torch.empty_like(x) if want else None for x, want in zip(inputs, want_grads, strict=True)]
        for start in range(0, rows, chunk_rows):
            chunk = slice(start, start + chunk_rows)
            pieces = [x[chunk] for x in inputs]
            try:
                if any(want_grads):
                    chunk_values, chunk_grads = _chunk_gradients(row_fn, pieces, want_grads)
                    for buffer, grad in zip(grads, chunk_grads, strict=True):
                        if buffer is not None:
                            buffer[chunk].copy_(grad)
                else:
                    chunk_values = row_fn(*pieces)
            except NonFiniteInputError as error:
                raise error.shifted(start) from None
            values[chunk] = chunk_values
        ctx.row_fn, ctx.chunk_rows, ctx.want_grads = row_fn, chunk_rows, want_grads
        ctx.eager_grads = grads if any(want_grads) else None
        ctx.save_for_backward(*inputs)
        return values

    @staticmethod
    def backward(ctx, grad_values):  # noqa: D102
        eager, ctx.eager_grads = ctx.eager_grads, None  # hand the buffers over exactly once
        if eager is not None:
            grads = [None if g is None else g.mul_(_row_view(grad_values, g)) for g in eager]
        else:  # a second backward through a retained graph: recompute chunk by chunk
            inputs = ctx.saved_tensors
            grads = [torch.zeros_like(x) if want else None for x, want in zip(inputs, ctx.want_grads, strict=True)]
            for start in range(0, inputs[0].shape[0], ctx.chunk_rows):
                chunk = slice(start, start + ctx.chunk_rows)
                _, chunk_grads = _chunk_gradients(ctx.row_fn, [x[chunk] for x in inputs], ctx.want_grads)
                for buffer, grad in zip(grads, chunk_grads, strict=True):
                    if buffer is not None:  # same arithmetic as the first backward: bitwise equal results
                        buffer[chunk].copy_(grad).mul_(_row_view(grad_values[chunk], grad))
        return (None, None, None, None, *grads)


def chunked_rows(
    row_fn: RowFunction, inputs: Sequence[Tensor], chunk_rows: int, out_dtype: torch.dtype
) -> Tensor:
    """Apply ``row_fn`` to row-aligned ``inputs`` in chunks, with gradients for inputs that require them."""
    want_grads = tuple(torch.is_grad_enabled() and x.requires_grad for x in inputs)
    return ChunkedRowFunction.apply(row_fn, chunk_rows, want_grads, out_dtype, *inputs)
