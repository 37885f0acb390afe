"""Optimizers (AdamW, Adafactor) and the linear warmup / constant / linear cooldown schedule (GKD Table A.1)."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers.optimization import Adafactor

from fdistill.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Adafactor with an explicit learning rate (GKD trains T5 with Adafactor).
    return Adafactor(params, lr=cfg.lr, weight_decay=cfg.weight_decay, scale_parameter=False,
                     relative_step=False, warmup_init=False)


def linear_warmup_cooldown(total_steps: int, warmup_ratio: float, cooldown_ratio: float):
    """Multiplier of the base lr at step s: 0→1 over the warmup, 1, then 1→0 over the cooldown."""
    warmup = int(round(total_steps * warmup_ratio))
    cooldown = int(round(total_steps * cooldown_ratio))
    cooldown_start = total_steps - cooldown

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cooldown and step >= cooldown_start:
            return max(0.0, (total_steps - step) / cooldown)
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, linear_warmup_cooldown(total_steps, cfg.warmup_ratio, cfg.cooldown_ratio))
