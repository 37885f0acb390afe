"""Reductions of per-token values under a validity mask (valid = True, e.g. ``labels != -100``)."""

from __future__ import annotations

import torch
from torch import Tensor


def _valid_values(values: Tensor, mask: Tensor) -> Tensor:
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must have the same shape")
    # where, not multiply: a NaN/inf at a masked position must not leak into the result or its gradient
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` is True (0 when there is none, still differentiable)."""
    count = mask.bool().sum().clamp_min(1)
    return _valid_values(values, mask).sum() / count


def sum_per_sequence(values: Tensor, mask: Tensor) -> Tensor:
    """Sum of ``values`` over the valid positions of each sequence: ``[B, T] -> [B]``."""
    if values.dim() != 2:
        raise ValueError(f"sum_per_sequence expects [B, T] values; got shape {tuple(values.shape)}")
    return _valid_values(values, mask).sum(dim=-1)
