"""Token-level divergences for distillation (f-DISTILL, GKD, AKL, DistiLLM), one registry, reductions.

Convention: ``p`` = teacher, ``q`` = student, both given as logits ``[..., V]``; ``temperature`` divides both.
See ``docs/divergences.md`` for every divergence with its equation and paper reference.
"""

from fdistill.divergences import losses as _losses  # noqa: F401  (registers the divergences)
from fdistill.divergences.chunked import NonFiniteInputError
from fdistill.divergences.losses import AdaptiveKL, Divergence, TokenDistributions, token_distributions
from fdistill.divergences.reductions import masked_mean, sum_per_sequence
from fdistill.divergences.registry import available_divergences, get_divergence, register_divergence

__all__ = [
    "AdaptiveKL",
    "Divergence",
    "NonFiniteInputError",
    "TokenDistributions",
    "available_divergences",
    "get_divergence",
    "masked_mean",
    "register_divergence",
    "sum_per_sequence",
    "token_distributions",
]
