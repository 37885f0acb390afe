"""Independent float64 references for the divergence tests: plain softmax / log arithmetic, no fdistill code."""

from __future__ import annotations

import numpy as np
import torch

# (registry key, parameters) covering every divergence and the parameter edge cases
CONFIGS = [
    ("kl", {}),
    ("rkl", {}),
    ("js", {}),
    ("tvd", {}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 0.3}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 1.0}),
    ("skl", {"alpha": 0.1}),
    ("skl", {"alpha": 0.0}),
    ("srkl", {"alpha": 0.1}),
    ("fkl_rkl", {"weight": 0.3}),
    ("akl", {}),
    ("akl", {"mu": 0.8, "detach_weights": False}),
    ("akl_r", {}),
    ("engine", {}),
]


def log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    z = logits.double() / temperature
    z = z - z.max(dim=-1, keepdim=True).values
    return z - z.exp().sum(dim=-1, keepdim=True).log()


def kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Σ a (log a - log b) from log-probabilities (a = 0 where exp underflows: the term is 0)."""
    return (log_a.exp() * (log_a - log_b)).sum(dim=-1)


def log_mix(weight, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """log(w·a + (1-w)·b) for a scalar or per-row weight w."""
    weight = torch.as_tensor(weight, dtype=torch.float64)
    if weight.dim():
        weight = weight.unsqueeze(-1)
    return torch.logaddexp(weight.log() + log_a, torch.log1p(-weight) + log_b)


def akl_weights(p: torch.Tensor, q: torch.Tensor, mu: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-by-row loop: head = smallest set of top teacher tokens with mass ≥ mu (Wu et al. Eqs. 11-14)."""
    p_rows, q_rows = p.reshape(-1, p.shape[-1]).numpy(), q.reshape(-1, q.shape[-1]).numpy()
    heads, tails = [], []
    for p_row, q_row in zip(p_rows, q_rows, strict=True):
        mass, g_head, g_tail = 0.0, 0.0, 0.0
        for index in np.argsort(-p_row, kind="stable"):
            if mass < mu:
                g_head += abs(p_row[index] - q_row[index])
            else:
                g_tail += abs(p_row[index] - q_row[index])
            mass += p_row[index]
        total = g_head + g_tail
        heads.append(g_head / total if total > 0 else 0.5)
        tails.append(g_tail / total if total > 0 else 0.5)
    shape = p.shape[:-1]
    return torch.tensor(heads, dtype=torch.float64).reshape(shape), torch.tensor(tails, dtype=torch.float64).reshape(shape)


def halves(name, params, student_logits, teacher_logits, temperature=1.0, prefix=None):
    """(teacher_side, student_side) in float64; ``prefix`` = (log P(y_<t), log Q(y_<t)) for mixture='prefix'."""
    lp, lq = log_softmax(teacher_logits, temperature), log_softmax(student_logits, temperature)
    zero = torch.zeros(lp.shape[:-1], dtype=torch.float64)
    if name == "kl":
        return kl(lp, lq), zero
    if name == "rkl":
        return zero, kl(lq, lp)
    if name == "tvd":
        quarter = 0.25 * (lp.exp() - lq.exp()).abs().sum(-1)
        return quarter, quarter
    if name == "fkl_rkl":
        w = params["weight"]
        return w * kl(lp, lq), (1 - w) * kl(lq, lp)
    if name == "skl":
        return kl(lp, log_mix(params["alpha"], lp, lq)), zero
    if name == "srkl":
        return zero, kl(lq, log_mix(params["alpha"], lq, lp))
    if name in ("js", "jsd"):
        beta = params.get("beta", 0.5)
        if beta == 0:
            return kl(lp, lq), zero
        if beta == 1:
            return zero, kl(lq, lp)
        w = beta
        if prefix is not None:
            teacher_prefix, student_prefix = (x.double().exp() for x in prefix)
            w = beta * teacher_prefix / (beta * teacher_prefix + (1 - beta) * student_prefix)
        lm = log_mix(w, lp, lq)
        return beta * kl(lp, lm), (1 - beta) * kl(lq, lm)
    if name == "engine":  # ENGINE's step-wise energy: the teacher's cross-entropy of q
        return zero, -(lq.exp() * lp).sum(-1)
    if name in ("akl", "akl_r"):
        head, tail = akl_weights(lp.exp().detach(), lq.exp().detach(), params.get("mu", 0.5))
        if name == "akl_r":
            head, tail = tail, head
        return head * kl(lp, lq), tail * kl(lq, lp)
    raise KeyError(name)
