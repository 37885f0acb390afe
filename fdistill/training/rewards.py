"""Rewards of student samples for the RL side of distillation (GKD Sec. 3.2 Eq. 5; LLMR), one registry.

Every reward returns per-token rewards ``[B, T]`` aligned with ``batch["labels"]`` (0 at padding): a
sequence-level reward sits on the sequence's last token, so its reward-to-go is the whole-sequence reward
at every position (per-sequence credit), while a per-token reward (``teacher_induced``) gives each action
the rewards from it on (per-token credit).

| name | reward | reference |
| --- | --- | --- |
| ``teacher_induced`` | r(s_t, a_t) = f(s_t, a_t) − max_a' f(s_{t+1}, a'), f the teacher's logits (÷ its temperature); the max term is 0 after the last token | LLMR; KD tutorial, reward induction (Theorem 3: invariant to per-state logit shifts) |
| ``metric`` | a text metric of fdistill's registry (``params.metric``, e.g. rouge2, bleu) of the decoded sample against the input's references | GKD Eq. 5 with a task metric |
| ``synthetic_valid`` | 1 when the sample is a correct verbalisation of its input on the synthetic task (exact ground truth), else 0 | fdistill's testable stand-in |
| ``entailment`` | an NLI classifier's entailment probability of source → sample (``params.model``: a local checkpoint or hub id) | GKD's RLAIF reward (Sec. 3.2, Fig. 6) |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fdistill.errors import ConfigError

IGNORE_INDEX = -100
REWARDS: dict[str, type[Reward]] = {}


def register_reward(name: str):
    def decorator(cls):
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered by {REWARDS[name].__qualname__}")
        cls.name = name
        REWARDS[name] = cls
        return cls

    return decorator


@dataclass
class RewardInputs:
    """What a reward may read about one batch of student samples."""

    batch: dict[str, torch.Tensor]                 # collator batch: input_ids, attention_mask, labels, ...
    sources: Sequence[str]                          # the input texts, one per row
    outputs: Sequence[str]                          # the decoded samples
    references: Sequence[Sequence[str]] | None      # the inputs' references (training pairs)
    teacher_chosen: torch.Tensor | None = None      # [B, T] the teacher's logit of each sampled token
    teacher_best: torch.Tensor | None = None        # [B, T] the teacher's largest logit at each position


class Reward:
    """A reward of student samples (see the module table); ``needs_teacher_logits`` asks the objective for
    the teacher's logits on the sample."""

    name: ClassVar[str]
    needs_teacher_logits: ClassVar[bool] = False
    accepted: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.accepted))
        if unknown:
            raise ConfigError(f"reward {self.name!r}: unknown parameter(s) {unknown}; accepted: "
                              f"{list(self.accepted) or 'none'} (pipeline.distill.rl.reward_params)")
        self.params = params

    def per_token(self, inputs: RewardInputs) -> torch.Tensor:
        """Rewards [B, T]."""
        raise NotImplementedError


def sequence_rewards_on_last_token(values: Sequence[float], labels: torch.Tensor) -> torch.Tensor:
    """A sequence reward per row placed on the row's last valid token ([B, T], zeros elsewhere)."""
    valid = labels != IGNORE_INDEX
    last = valid.long().cumsum(-1).argmax(-1)
    rewards = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    rewards[torch.arange(labels.shape[0], device=labels.device), last] = torch.tensor(
        list(values), dtype=torch.float32, device=labels.device)
    return rewards * valid


@register_reward("teacher_induced")
class TeacherInducedReward(Reward):
    """LLMR: the teacher's logits f(s, a) read as an optimal q-function (Boltzmann policy π ∝ exp f), so by
    Bellman optimality r(s_t, a_t) = f(s_t, a_t) − max_a' f(s_{t+1}, a'); the max term is 0 after the last
    token (EOS, or a sample cut at max_new_tokens, which is treated as terminal)."""

    needs_teacher_logits = True
    accepted = ("temperature",)

    def per_token(self, inputs: RewardInputs) -> torch.Tensor:
        """r_t = f(s_t, a_t) − max_a' f(s_{t+1}, a') from the teacher's chosen and largest logits (already divided
        by the reward's temperature); 0 at padding."""
        valid = inputs.batch["labels"] != IGNORE_INDEX
        best_next = torch.zeros_like(inputs.teacher_best)
        best_next[:, :-1] = inputs.teacher_best[:, 1:]
        best_next = best_next * torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], dim=1)
        return (inputs.teacher_chosen - best_next) * valid


@register_reward("synthetic_valid")
class SyntheticValidReward(Reward):
    """1 for a correct verbalisation of the input on the synthetic task (``SyntheticTask.is_valid``), else 0."""

    accepted = ("task",)

    def per_token(self, inputs: RewardInputs) -> torch.Tensor:
        task = self.params["task"]
        values = [1.0 if task.is_valid(source, output) else 0.0 for source, output in
                  zip(inputs.sources, inputs.outputs, strict=True)]
        return sequence_rewards_on_last_token(values, inputs.batch["labels"])


@register_reward("metric")
class MetricReward(Reward):
    """A text metric of fdistill's registry (sentence level: each sample against its input's references),
    e.g. ``{metric: rouge2}``; values in the metric's own scale (BLEU 0-100, ROUGE 0-1) times ``scale``."""

    accepted = ("metric", "scale")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        from fdistill.evaluation import available_metrics

        metric = params.get("metric")
        if metric not in available_metrics() or metric in ("self_bleu", "distinct_n", "synthetic_exact"):
            raise ConfigError(f"reward 'metric' needs params.metric, a reference-based metric of {available_metrics()}; "
                              f"got {metric!r}")

    def per_token(self, inputs: RewardInputs) -> torch.Tensor:
        from fdistill.evaluation import evaluate_predictions

        if inputs.references is None:
            raise ConfigError("reward 'metric' needs the inputs' references")
        metric, scale = self.params["metric"], float(self.params.get("scale", 1.0))
        values = []
        for output, references in zip(inputs.outputs, inputs.references, strict=True):
            scores, _ = evaluate_predictions([output], [list(references)], [metric])
            values.append(scale * float(scores[metric]))
        return sequence_rewards_on_last_token(values, inputs.batch["labels"])


@register_reward("entailment")
class EntailmentReward(Reward):
    """GKD's RLAIF reward: an NLI classifier's probability that the source entails the sample
    (``params.model``: a local checkpoint or hub id with an "entailment" label; no such checkpoint is
    reachable offline here, so fdistill tests this on a tiny randomly initialised classifier)."""

    accepted = ("model", "batch_size", "device")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not params.get("model"):
            raise ConfigError("reward 'entailment' needs params.model: an NLI checkpoint (local dir or hub id)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(params["model"])
            self.model = AutoModelForSequenceClassification.from_pretrained(params["model"]).eval()
            self.model.to(params.get("device") or "cpu")  # the training device (the pipeline passes it)
        except OSError as error:
            raise ConfigError(f"reward 'entailment': NLI model {params['model']!r} could not be loaded ({error})") from None
        labels = {str(name).lower(): int(index) for index, name in self.model.config.id2label.items()}
        found = [index for name, index in labels.items() if "entail" in name and "not" not in name]
        if len(found) != 1:
            raise ConfigError(f"reward 'entailment': {params['model']!r} has labels {sorted(labels)}; need exactly one "
                              "entailment label")
        self.entailment = found[0]

    @torch.no_grad()
    def per_token(self, inputs: RewardInputs) -> torch.Tensor:
        step = int(self.params.get("batch_size", 32))
        values: list[float] = []
        for start in range(0, len(inputs.outputs), step):
            encoded = self.tokenizer(list(inputs.sources[start:start + step]), list(inputs.outputs[start:start + step]),
                                     truncation=True, padding=True, return_tensors="pt").to(self.model.device)
            probabilities = torch.softmax(self.model(**encoded).logits.float(), dim=-1)
            values += probabilities[:, self.entailment].tolist()
        return sequence_rewards_on_last_token(values, inputs.batch["labels"])


#: reward parameters the pipeline fills (never set in the config)
CONTEXT_PARAMS = ("task", "device")


def check_reward_config(name: str, params: dict, dataset: str) -> None:
    """Config-level checks of a reward (no model is loaded): its name, parameters and what it requires."""
    if name not in REWARDS:
        raise ConfigError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)} (pipeline.distill.rl.reward)")
    cls = REWARDS[name]
    accepted = [key for key in cls.accepted if key not in CONTEXT_PARAMS]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"reward {name!r}: unknown parameter(s) {unknown}; accepted: {accepted or 'none'} "
                          "(pipeline.distill.rl.reward_params)")
    if name == "synthetic_valid" and dataset != "synthetic":
        raise ConfigError(f"reward 'synthetic_valid' is the synthetic task's exact validity; dataset={dataset!r} has "
                          "no ground truth (use reward=metric or teacher_induced)")
    if name == "metric":
        MetricReward(**params)
    if name == "entailment" and not params.get("model"):
        raise ConfigError("reward 'entailment' needs pipeline.distill.rl.reward_params.model: an NLI checkpoint")


def build_reward(name: str, params: dict, **context: Any) -> Reward:
    """The reward `name` with its params (a ConfigError names unknown rewards and parameters); `context`
    fills parameters the pipeline knows (the synthetic task)."""
    if name not in REWARDS:
        raise ConfigError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)} (pipeline.distill.rl.reward)")
    cls = REWARDS[name]
    extra = {key: value for key, value in context.items() if key in cls.accepted and key not in params}
    return cls(**dict(params), **extra)


def reward_to_go(rewards: torch.Tensor) -> torch.Tensor:
    """G_t = Σ_{t' ≥ t} r_{t'} per row ([B, T])."""
    return rewards.flip(-1).cumsum(-1).flip(-1)


def leave_one_out_baseline(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per row, the mean return of the other rows of its group (``group_size`` consecutive samples of one
    input; ``group_size=1``: all other rows of the batch). Independent of the row's own sample, so the
    REINFORCE estimate stays unbiased while its variance drops."""
    rows = returns.shape[0]
    if group_size > 1:
        groups = returns.reshape(rows // group_size, group_size)
        return ((groups.sum(-1, keepdim=True) - groups) / (group_size - 1)).reshape(rows)
    if rows < 2:
        return torch.zeros_like(returns)
    return (returns.sum() - returns) / (rows - 1)


def advantages(rewards: torch.Tensor, valid: torch.Tensor, baseline: str = "mean", group_size: int = 1,
               length_normalize: bool = False) -> torch.Tensor:
    """Per-token advantages [B, T] of the REINFORCE estimator: the reward-to-go G_t minus a baseline that does
    not depend on the row's own sample (``mean``: :func:`leave_one_out_baseline` of the rows' returns G_0;
    ``none``: 0), optionally divided by the row's length. The policy-gradient surrogate is
    −(1/B)·Σ_{b,t} A_{b,t}·log q(y_{b,t}); its expected gradient is ∇ E_{y∼q}[Σ_t r_t]."""
    returns = reward_to_go(rewards * valid)
    if baseline == "mean":
        offset = leave_one_out_baseline(returns[:, 0], group_size)
    elif baseline == "none":
        offset = torch.zeros_like(returns[:, 0])
    else:
        raise ValueError(f"baseline={baseline!r}; expected mean or none")
    result = (returns - offset.unsqueeze(-1)) * valid
    if length_normalize:
        result = result / valid.sum(-1, keepdim=True).clamp_min(1)
    return result
