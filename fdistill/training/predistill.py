"""Pre-distillation (Shleifer & Rush 2020, Sec. 3; f-DISTILL Sec. 3.1): on the references,
L = w_mle·NLL + w_kl·(1/N) Σ_t KL(p_t‖q_t) + w_hidden·mean over mapped layers of MSE(h_student, h_teacher),
where student layer i is paired with the teacher layer it was copied from (with `normalize_hidden`, both
states are layer-normalised per token first). MLE and KL come from one pass
over the output distributions (`TokenLoss`, fused or not); the hidden states from the same forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fdistill.config import PredistillConfig
from fdistill.divergences import get_divergence
from fdistill.models import paired_hidden_states, token_logits_and_hidden_states
from fdistill.training.objectives import IGNORE_INDEX, BatchSources, TokenLoss


class PredistillObjective:
    def __init__(self, cfg: PredistillConfig, teacher, sources: BatchSources, token_loss: TokenLoss) -> None:
        self.cfg, self.teacher, self.sources, self.token_loss = cfg, teacher, sources, token_loss
        self.kl = get_divergence("kl")

    def __call__(self, student, micro_step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.sources.references(micro_step)
        use_hidden = self.cfg.weight_hidden > 0
        if self.cfg.weight_kl > 0:
            scaled, logs, states = self.token_loss.divergence(
                self.kl, "both", student, batch, "token", ce_weight=self.cfg.weight_mle / self.cfg.weight_kl,
                output_hidden_states=use_hidden)
            loss = self.cfg.weight_kl * scaled
            logs = {"mle": logs.get("mle", 0.0), "kl": logs["divergence"]}
        else:
            loss, logs, states = self._mle_only(student, batch, use_hidden)
        if use_hidden:
            hidden = self._hidden_mse(student, states, batch)
            loss = loss + self.cfg.weight_hidden * hidden
            logs["hidden_mse"] = float(hidden.detach())
        return loss, logs

    def _mle_only(self, student, batch: dict, use_hidden: bool):
        if not use_hidden:
            mle = self.token_loss.nll(student, batch)
            return self.cfg.weight_mle * mle, {"mle": float(mle.detach())}, {}
        logits, student_states = token_logits_and_hidden_states(student, batch)
        mle = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
        return self.cfg.weight_mle * mle, {"mle": float(mle.detach())}, {"student": student_states, "teacher": None}

    def _hidden_mse(self, student, states: dict, batch: dict) -> torch.Tensor:
        """MSE over real (non-padding) positions of each stack, averaged over the mapped layer pairs."""
        pairs = paired_hidden_states(self.teacher, student, batch, student_states=states["student"],
                                     teacher_states=states["teacher"] or None)
        valid = batch["labels"] != IGNORE_INDEX
        masks = {"encoder": batch["attention_mask"].bool(), "decoder": valid}
        if "encoder" not in pairs:  # decoder-only: hidden states cover prompt + target positions
            masks["decoder"] = batch["attention_mask"].bool()
        terms = [self._mse(self._scaled(s[masks[stack]]), self._scaled(t[masks[stack]]))
                 for stack, layer_pairs in pairs.items() for s, t in layer_pairs]
        return torch.stack(terms).mean()

    def _mse(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the elements of the *global* batch (the counts of every process summed; their
        gradients are averaged, hence the factor of their number), as one process would compute it."""
        parallel = None if self.token_loss is None else self.token_loss.parallel
        if parallel is None or parallel.world_size == 1:
            return F.mse_loss(student, teacher)
        count = parallel.global_sum(torch.tensor(float(student.numel()), device=student.device))
        return F.mse_loss(student, teacher, reduction="sum") * (parallel.world_size / count.clamp_min(1.0))

    def _scaled(self, states: torch.Tensor) -> torch.Tensor:
        states = states.float()
        return F.layer_norm(states, states.shape[-1:]) if self.cfg.normalize_hidden else states
