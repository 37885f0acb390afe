"""The RL side of distillation: LLMR's teacher-induced reward, the REINFORCE surrogate of GKD Eq. 5, the
rewards registry, α = 1 as on-policy GKD, resuming an RL stage."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from pipeline_cli import REPO

from fdistill.config import DistillConfig, RLConfig, register_configs, validate_config
from fdistill.divergences import get_divergence
from fdistill.errors import ConfigError
from fdistill.models import SeqCollator, build_word_tokenizer, token_logits
from fdistill.pipeline import run_pipeline
from fdistill.training.objectives import BatchSources, GkdObjective, GkdRlObjective, TokenLoss, encode_pairs
from fdistill.training.rewards import (
    RewardInputs,
    TeacherInducedReward,
    advantages,
    build_reward,
    check_reward_config,
    reward_to_go,
)

WORDS = "record ka lo color red blue size tiny so well overall anyway the is and".split()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_word_tokenizer(WORDS, tmp_path_factory.mktemp("tok"))


def tiny_gpt2(tokenizer, seed: int):
    from transformers import AutoModelForCausalLM

    from fdistill.models.architectures import tiny_model_config

    torch.manual_seed(seed)
    config = tiny_model_config({"model_type": "gpt2", "d_model": 16, "decoder_layers": 1, "heads": 2, "ffn_dim": 32,
                                "max_position_embeddings": 64, "dropout": 0.0}, tokenizer)
    return AutoModelForCausalLM.from_config(config).eval()


# ------------------------------------------------------------------ the teacher-induced reward
@pytest.mark.parametrize("fused", [False, True])
def test_the_induced_reward_is_the_hand_computation_from_the_teachers_logits(tokenizer, fused):
    teacher = tiny_gpt2(tokenizer, 0)
    collator = SeqCollator(tokenizer, False, 8, 6)
    batch = collator.from_text(["record ka color red", "record lo"], ["so red overall", "well"])
    chosen, best = TokenLoss(teacher, fused=fused).teacher_chosen_and_best(batch)
    rewards = TeacherInducedReward().per_token(RewardInputs(batch, [], [], None, chosen, best))
    with torch.no_grad():
        logits = token_logits(teacher, batch).double()
    labels = batch["labels"]
    for row in range(2):
        length = int((labels[row] != -100).sum())
        for t in range(labels.shape[1]):
            if t >= length:
                assert rewards[row, t] == 0  # padding
                continue
            expected = logits[row, t, labels[row, t]]
            if t + 1 < length:  # after the last token (eos) the max term is 0
                expected = expected - logits[row, t + 1].max()
            assert math.isclose(float(rewards[row, t]), float(expected), rel_tol=1e-5, abs_tol=1e-5), (row, t)


def test_the_induced_return_is_invariant_to_per_state_logit_shifts():
    """Tutorial Theorem 3: f(s, a) + c(s) changes r_t by c(s_t) − c(s_{t+1}) (c = 0 after the end), so the
    reward-to-go G_t moves by c(s_t), a function of the state alone: the policy gradient is unchanged."""
    torch.manual_seed(1)
    chosen, best = torch.randn(3, 5), torch.randn(3, 5) + 2
    labels = torch.tensor([[1, 2, 3, 4, 5], [1, 2, -100, -100, -100], [7, 8, 9, -100, -100]])
    batch = {"labels": labels}
    shift = torch.randn(3, 5)
    plain = TeacherInducedReward().per_token(RewardInputs(batch, [], [], None, chosen, best))
    shifted = TeacherInducedReward().per_token(RewardInputs(batch, [], [], None, chosen + shift, best + shift))
    valid = labels != -100
    torch.testing.assert_close(reward_to_go(shifted) - reward_to_go(plain), shift * valid)


# ------------------------------------------------------------------ the REINFORCE surrogate, exactly
def _toy_policy(theta: torch.Tensor, sequence: tuple[int, ...]) -> torch.Tensor:
    """log q(y_t | y_<t) of a tabular autoregressive toy: theta[len(prefix), prefix-last-token] are logits over
    {0, 1, 2=eos}; sequences stop at eos or after 3 tokens."""
    out, previous = [], 3
    for position, token in enumerate(sequence):
        out.append(torch.log_softmax(theta[position, previous], dim=-1)[token])
        previous = token
    return torch.stack(out)


def _toy_sequences():
    for length in (1, 2, 3):
        for tokens in itertools.product((0, 1, 2), repeat=length):
            if 2 in tokens[:-1] or (length < 3 and tokens[-1] != 2):
                continue
            yield tokens


def _toy_rewards(sequence):
    """per-token rewards: +1 for a 1, −0.5 for the eos; sequence reward 2 when it ends with (1, eos)."""
    per_token = [1.0 if token == 1 else -0.5 if token == 2 else 0.0 for token in sequence]
    per_token[-1] += 2.0 if sequence[-2:] == (1, 2) else 0.0
    return per_token


def _pad(rows: list[list[float]], width: int = 3) -> torch.Tensor:
    return torch.tensor([row + [0.0] * (width - len(row)) for row in rows])


@pytest.mark.parametrize("baseline", ["none", "mean"])
def test_the_policy_gradient_surrogate_is_the_score_function_estimator_in_expectation(baseline):
    torch.manual_seed(2)
    theta = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    sequences = list(_toy_sequences())
    log_q = [_toy_policy(theta, seq).sum() for seq in sequences]
    probabilities = torch.stack(log_q).exp()
    assert math.isclose(float(probabilities.sum().detach()), 1.0, rel_tol=1e-12)
    exact = sum(p * sum(_toy_rewards(seq)) for p, seq in zip(probabilities, sequences, strict=True))
    (expected_gradient,) = torch.autograd.grad(exact, theta)
    # E over batches of two independent samples of the surrogate's gradient (leave-one-out needs two)
    estimate = torch.zeros_like(theta)
    for first, second in itertools.product(range(len(sequences)), repeat=2):
        pair = (sequences[first], sequences[second])
        weight = (probabilities[first] * probabilities[second]).detach()
        token_log_q = [_toy_policy(theta, seq) for seq in pair]
        valid = _pad([[1.0] * len(seq) for seq in pair]).bool()
        advantage = advantages(_pad([_toy_rewards(seq) for seq in pair]).double(), valid, baseline)
        surrogate = -sum((advantage[row, : len(pair[row])] * token_log_q[row]).sum() for row in range(2)) / 2
        (gradient,) = torch.autograd.grad(surrogate, theta)
        estimate -= weight * gradient
    torch.testing.assert_close(estimate, expected_gradient, rtol=1e-10, atol=1e-12)


def test_the_leave_one_out_baseline_uses_only_the_other_samples():
    rewards = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0], [2.0, 0.0]])
    valid = torch.ones(4, 2, dtype=torch.bool)
    grouped = advantages(rewards, valid, "mean", group_size=2)
    torch.testing.assert_close(grouped[:, 0], torch.tensor([1.0 - 3.0, 3.0 - 1.0, 5.0 - 2.0, 2.0 - 5.0]))
    batch = advantages(rewards, valid, "mean", group_size=1)
    torch.testing.assert_close(batch[0, 0], torch.tensor(1.0 - (3 + 5 + 2) / 3))


# ------------------------------------------------------------------ rewards registry and config checks
@pytest.mark.parametrize(("name", "params", "dataset", "message"), [
    ("bleurtish", {}, "synthetic", "unknown reward 'bleurtish'"),
    ("teacher_induced", {"beta": 1}, "synthetic", "unknown parameter"),
    ("synthetic_valid", {}, "dart", "exact validity"),
    ("metric", {}, "dart", "params.metric"),
    ("metric", {"metric": "self_bleu"}, "dart", "reference-based"),
    ("entailment", {}, "xsum", "NLI checkpoint"),
])
def test_every_reward_rejects_bad_config(name, params, dataset, message):
    with pytest.raises(ConfigError, match=message):
        check_reward_config(name, params, dataset)


def test_the_metric_and_entailment_rewards(tmp_path, tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    collator = SeqCollator(tokenizer, False, 8, 6)
    batch = collator.from_text(["record ka", "record lo"], ["so red", "well blue"])
    inputs = RewardInputs(batch, ["record ka", "record lo"], ["so red overall", "nothing"],
                          [["so red overall"], ["well blue"]])
    rouge = build_reward("metric", {"metric": "rouge1"}).per_token(inputs)
    assert rouge.sum(-1).tolist() == pytest.approx([1.0, 0.0])
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3,
                        id2label={0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"},
                        label2id={"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2})
    BertForSequenceClassification(config).save_pretrained(tmp_path / "nli")
    tokenizer.save_pretrained(tmp_path / "nli")
    entailment = build_reward("entailment", {"model": str(tmp_path / "nli")}).per_token(inputs)
    values = entailment.sum(-1)
    assert ((values > 0) & (values < 1)).all()
    last = (batch["labels"] != -100).sum(-1) - 1
    assert (entailment[torch.arange(2), last] == values).all()  # on the last token: per-sequence credit


# ------------------------------------------------------------------ α = 1 is on-policy GKD; resuming
def _sources(tokenizer, student, seed: int = 0):
    collator = SeqCollator(tokenizer, False, 8, 6)
    examples = [type("Example", (), {"source": f"record {name} color red", "references": ("so red",)})
                for name in ("ka", "lo")]
    training = encode_pairs(collator, [("0", ex.source, ex.references[0]) for ex in examples], examples)
    decoding = DistillConfig().student_sampling
    decoding.max_new_tokens = 5
    return BatchSources(collator=collator, data=training, batch_size=2, seed=seed, device="cpu",
                        student_decoding=decoding)


class _FixedReward:
    """A stand-in reward: +1 on every sampled `favoured` token, 0 elsewhere (per-token credit)."""

    needs_teacher_logits = False
    params: dict = {}

    def __init__(self, favoured: int):
        self.favoured = favoured

    def per_token(self, inputs):
        return (inputs.batch["labels"] == self.favoured).float()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_the_rl_loss_ascends_the_reward_its_gradient_is_the_reinforce_surrogates(tokenizer, fused, alpha):
    """The objective's policy-gradient term has the gradient of −(1−α)/B·Σ A·log q (written here from the
    model's own logits), so gradient descent raises the expected reward; a few steps raise the favoured
    token's probability (a sign error would lower it)."""
    teacher, student = tiny_gpt2(tokenizer, 3), tiny_gpt2(tokenizer, 4)
    favoured = tokenizer.convert_tokens_to_ids("red")
    distill = DistillConfig(regime="gkd_rl", rl=RLConfig(alpha=alpha, reward="teacher_induced", samples_per_input=2))
    sources = _sources(tokenizer, student)
    objective = GkdRlObjective(divergence=get_divergence("rkl"), distill=distill, sources=sources, seed=0,
                               token_loss=TokenLoss(teacher, fused=fused))
    objective.reward = _FixedReward(favoured)
    student.zero_grad()
    loss, _ = objective(student, 5)
    loss.backward()
    got = [p.grad.clone() for p in student.parameters()]

    batch, _, _ = sources.student_samples(student, 5, 2)
    valid = batch["labels"] != -100
    advantage = advantages((batch["labels"] == favoured).float(), valid, "mean", group_size=2)
    log_q = torch.log_softmax(token_logits(student, batch).float(), -1).gather(
        -1, batch["labels"].clamp_min(0).unsqueeze(-1)).squeeze(-1)
    expected = -(1 - alpha) * (advantage * log_q * valid).sum() / batch["labels"].shape[0]
    if alpha > 0:
        expected = expected + alpha * TokenLoss(teacher, fused=False).divergence(get_divergence("rkl"), "both", student,
                                                                                   batch, "token")[0]
    student.zero_grad()
    expected.backward()
    for a, b in zip(got, [p.grad for p in student.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    if alpha > 0:
        return  # the ascent check below is for the reward alone

    def favoured_probability():
        probe = sources.collator.from_text(["record ka color red", "record lo color red"], ["so red", "so red"])
        with torch.no_grad():
            return torch.softmax(token_logits(student, probe).float(), -1)[..., favoured].mean()

    before = favoured_probability()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    for step in range(10):
        optimizer.zero_grad()
        objective(student, step)[0].backward()
        optimizer.step()
    assert favoured_probability() > before


def test_gkd_rl_with_alpha_one_is_on_policy_gkd(tokenizer):
    teacher, student = tiny_gpt2(tokenizer, 3), tiny_gpt2(tokenizer, 4)
    divergence = get_divergence("rkl")
    distill = DistillConfig(regime="gkd_rl", lam=1.0, rl=RLConfig(alpha=1.0))
    results = []
    for objective_class in (GkdObjective, GkdRlObjective):
        student.zero_grad()
        objective = objective_class(divergence=divergence, distill=distill, sources=_sources(tokenizer, student),
                                    seed=0, token_loss=TokenLoss(teacher, fused=True))
        loss, _ = objective(student, 3)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in student.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _synthetic_config(root, overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[
            f"paths.root={root}", f"paths.output_dir={root}/out", f"paths.cache_dir={root}/cache",
            "dataset.params.num_train=64", "dataset.params.num_test=8", "pipeline.teacher_sft.max_steps=4",
            "pipeline.teacher_sft.batch_size=8", "pipeline.predistill.max_steps=2", "pipeline.predistill.batch_size=8",
            "pipeline.distill.batch_size=4", "pipeline.distill.max_steps=6", "pipeline.distill.checkpoint_every=2",
            "pipeline.distill.student_sampling.max_new_tokens=12", "pipeline.evaluate.enabled=false", *overrides])


@pytest.mark.parametrize("divergence", ["llmr", "gkd_rl_valid"])
def test_an_rl_stage_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, divergence, monkeypatch):
    """Sampling seeds are a function of (seed, step), so a stage killed after a checkpoint ends where an
    uninterrupted one does."""
    import fdistill.training.loop as loop
    from fdistill.training.loop import parameter_digest

    overrides = ["divergence=llmr"] if divergence == "llmr" else [
        "divergence=rkl", "pipeline.distill.regime=gkd_rl", "pipeline.distill.rl.reward=synthetic_valid",
        "pipeline.distill.rl.alpha=0.5", "pipeline.distill.rl.samples_per_input=2"]
    run_pipeline(_synthetic_config(tmp_path, overrides), tmp_path / "straight")
    original_save = loop._save_checkpoint

    def crash_after_step_four(parallel, model, optimizer, work_dir, step, *args):
        original_save(parallel, model, optimizer, work_dir, step, *args)
        if step == 4 and work_dir.name == "distill":
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(loop, "_save_checkpoint", crash_after_step_four)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_synthetic_config(tmp_path, overrides), tmp_path / "killed")
    monkeypatch.setattr(loop, "_save_checkpoint", original_save)
    run_pipeline(_synthetic_config(tmp_path, overrides), tmp_path / "killed")

    def digest(run):
        from transformers import AutoModelForSeq2SeqLM

        return parameter_digest(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / run / "student"))  # tiny_bart

    assert digest("killed") == digest("straight")


def test_rl_configs_compose_and_validate(tmp_path):
    cfg = validate_config(_synthetic_config(tmp_path, ["divergence=llmr"]))
    assert (cfg.pipeline.distill.regime, cfg.pipeline.distill.rl.reward, cfg.pipeline.distill.rl.alpha) == (
        "gkd_rl", "teacher_induced", 0.0)
    with pytest.raises(ConfigError, match="alpha"):
        validate_config(_synthetic_config(tmp_path, ["divergence=llmr", "pipeline.distill.rl.alpha=2"]))
