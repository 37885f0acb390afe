"""Pre-distillation (Shleifer & Rush 2020, Sec. 3; f-DISTILL Sec. 3.1): on the references,
L = w_mle·NLL + w_kl·(1/N) Σ_t KL(p_t‖q_t) + w_hidden·mean over mapped layers of MSE(h_student, h_teacher),
where student layer i is paired with the teacher layer it was copied from."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fdistill.config import PredistillConfig
from fdistill.divergences import get_divergence, masked_mean
from fdistill.models import paired_hidden_states, token_logits, token_logits_and_hidden_states
from fdistill.training.objectives import IGNORE_INDEX, BatchSources


class PredistillObjective:
    def __init__(self, cfg: PredistillConfig, teacher, sources: BatchSources) -> None:
        self.cfg, self.teacher, self.sources = cfg, teacher, sources
        self.kl = get_divergence("kl")

    def __call__(self, student, micro_step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.sources.references(micro_step)
        valid = batch["labels"] != IGNORE_INDEX
        use_hidden = self.cfg.weight_hidden > 0
        logits, states = token_logits_and_hidden_states(student, batch, output_hidden_states=use_hidden)
        mle = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
        loss = self.cfg.weight_mle * mle
        logs = {"mle": float(mle.detach())}
        if self.cfg.weight_kl > 0:
            with torch.no_grad():
                teacher_logits = token_logits(self.teacher, batch)
            kl = masked_mean(self.kl.per_token(logits, teacher_logits), valid)
            loss = loss + self.cfg.weight_kl * kl
            logs["kl"] = float(kl.detach())
        if use_hidden:
            hidden = self._hidden_mse(student, states, batch, valid)
            loss = loss + self.cfg.weight_hidden * hidden
            logs["hidden_mse"] = float(hidden.detach())
        return loss, logs

    def _hidden_mse(self, student, states: dict, batch: dict, valid: torch.Tensor) -> torch.Tensor:
        """MSE over real (non-padding) positions of each stack, averaged over the mapped layer pairs."""
        pairs = paired_hidden_states(self.teacher, student, batch, student_states=states)
        masks = {"encoder": batch["attention_mask"].bool(), "decoder": valid}
        if "encoder" not in pairs:  # decoder-only: hidden states cover prompt + target positions
            masks["decoder"] = batch["attention_mask"].bool()
        terms = [F.mse_loss(s[masks[stack]].float(), t[masks[stack]].float())
                 for stack, layer_pairs in pairs.items() for s, t in layer_pairs]
        return torch.stack(terms).mean()
