"""Several teachers as one (fdistill/models/ensemble.py): the mixture against float64 references, EBBS against
exact enumeration on a tiny vocabulary, beam search against a reference implementation, batched decoding
against one input at a time, MBR against a hand-computed case, and the bad configs refused before any model
loads. Real (tiny, random) GPT-2 models throughout, their heads scaled so that scores do not tie."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_pipeline_config_errors import nothing_loads, run_error  # noqa: F401 - fixture
from transformers import GPT2Config, GPT2LMHeadModel

from fdistill.models import build_word_tokenizer
from fdistill.models.ensemble import Ensemble, EnsembleSpec, bilevel_beams, mbr_select, mbr_utilities

REPO = Path(__file__).resolve().parents[1]

VOCAB, EOS, PAD = 4, 3, 0


def tiny_teacher(seed: int, vocab: int = VOCAB, sharpness: float = 6.0, eos: int = EOS, pad: int = PAD
                 ) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=32, eos_token_id=eos,
                        bos_token_id=eos, pad_token_id=pad, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # an untied head, scaled: sharper, well separated distributions that differ by seed
        model.lm_head.weight.normal_(0.0, sharpness / 4)
    return model


def prompts(rows: list[list[int]]) -> dict:
    """Left-padded prompts, as the collator makes them for decoder-only models."""
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def next_log_probs(model, prompt: list[int], prefix: list[int]) -> torch.Tensor:
    """p(· | prompt, prefix) in float64 from a full forward (no cache)."""
    ids = torch.tensor([prompt + prefix])
    return torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), dim=-1)


def ensemble(models, method="average", weights=()) -> Ensemble:
    return Ensemble(models, EnsembleSpec(method=method, weights=tuple(weights)))


# ------------------------------------------------------------------ the mixture (AvgKD)
def test_average_of_one_teacher_is_that_teacher_exactly():
    teacher = tiny_teacher(0, vocab=11)
    ids = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.log_softmax(teacher(input_ids=ids).logits.float(), dim=-1)
        found = ensemble([teacher])(input_ids=ids).logits
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-6)


def test_average_of_two_identical_teachers_is_either():
    teacher = tiny_teacher(0, vocab=11)
    twin = tiny_teacher(0, vocab=11)
    ids = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.log_softmax(teacher(input_ids=ids).logits.float(), dim=-1)
        found = ensemble([teacher, twin], weights=(0.3, 0.7))(input_ids=ids).logits
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-6)


def test_weighted_average_matches_a_float64_reference_and_is_normalised():
    teachers = [tiny_teacher(seed, vocab=13) for seed in (1, 2, 3)]
    weights = (1.0, 2.0, 5.0)
    ids = torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        found = ensemble(teachers, weights=weights)(input_ids=ids).logits
        probs = [torch.softmax(teacher(input_ids=ids).logits.double(), dim=-1) for teacher in teachers]
    reference = sum(weight / sum(weights) * p for weight, p in zip(weights, probs, strict=True)).log()
    torch.testing.assert_close(found.double(), reference, rtol=1e-6, atol=1e-6)  # float32 mixing
    torch.testing.assert_close(found.double().logsumexp(-1), torch.zeros(2, 6, dtype=torch.float64), rtol=0, atol=1e-6)
    assert not torch.allclose(found.double(), probs[2].log(), atol=1e-3)  # the weights matter


def test_the_mixture_of_minus_inf_padded_vocabularies_is_finite_and_normalised():
    """Teachers that rule tokens out (-inf, e.g. rows a checkpoint pads its vocabulary with) and a zero weight."""
    holder = ensemble([tiny_teacher(0), tiny_teacher(1), tiny_teacher(2)], weights=(0.5, 0.5, 0.0))
    first = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, float("-inf")]]), dim=-1)
    second = torch.log_softmax(torch.tensor([[1.0, float("-inf"), 0.0, 3.0]]), dim=-1)
    unused = torch.full((1, 4), float("-inf"))  # weight 0: never contributes (no 0 * -inf = nan)
    mixed = holder._mixture([first, second, unused]).double()
    assert not torch.isnan(mixed).any() and torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed.exp().sum(-1), torch.ones(1, dtype=torch.float64), rtol=0, atol=1e-6)
    reference = (0.5 * first.double().exp() + 0.5 * second.double().exp()).log()
    torch.testing.assert_close(mixed, reference, rtol=0, atol=1e-6)
    only_first = holder._mixture([first, torch.full((1, 4), float("-inf")), unused])
    assert only_first[0, 3] == float("-inf") and torch.isfinite(only_first[0, :3]).all()


# ------------------------------------------------------------------ EBBS by enumeration
def summed_probability_scores(teachers, weights, prompt: list[int], length: int) -> dict[tuple[int, ...], float]:
    """log s(y) for every output of at most `length` tokens (eos ends one): s(y≤t) = s(y<t) Σ_k w_k p_k(y_t | y<t),
    the recursion the bi-level beam search follows when no beam prunes anything."""
    scores: dict[tuple[int, ...], float] = {}
    for sequence in itertools.product(range(VOCAB), repeat=length):
        cut = sequence[: sequence.index(EOS) + 1] if EOS in sequence else sequence
        if cut in scores or (EOS in sequence and any(token != EOS for token in sequence[len(cut):])):
            continue
        total = 0.0
        for step in range(len(cut)):
            mixture = sum(weight * next_log_probs(teacher, prompt, list(cut[:step])).exp()
                          for teacher, weight in zip(teachers, weights, strict=True))
            total += math.log(float(mixture[cut[step]]))
        scores[cut] = total
    return scores


@pytest.mark.parametrize("lower_beams", [True, False])
def test_ebbs_with_a_beam_holding_every_prefix_is_the_exact_summed_probability_recursion(lower_beams):
    teachers = [tiny_teacher(seed) for seed in (10, 11, 12)]
    weights = (0.2, 0.3, 0.5)
    prompt, length = [1, 2, 1], 3
    exact = summed_probability_scores(teachers, weights, prompt, length)
    assert len(exact) == 40  # 1 + 3 + 9 outputs ending in eos, 27 without
    beams = bilevel_beams(ensemble(teachers, "ebbs", weights), prompts([prompt]), beam_size=len(exact),
                          max_new_tokens=length, eos=EOS, lower_beams=lower_beams)[0]
    found = {tuple(tokens): score for tokens, score in beams}
    assert set(found) == set(exact)
    for sequence, score in exact.items():
        assert found[sequence] == pytest.approx(score, abs=1e-4), sequence
    ranked = [tokens for tokens, _ in beams]
    assert [tuple(tokens) for tokens in ranked[:5]] == sorted(exact, key=exact.get, reverse=True)[:5]


def reference_beam_search(model, prompt: list[int], width: int, length: int) -> list[tuple[list[int], float]]:
    """Plain beam search by full forwards: keep the `width` best extensions by total log-probability; a finished
    hypothesis (ended by eos) stays in the beam with its score."""
    beam = [([], 0.0)]
    for _ in range(length):
        candidates = []
        for prefix, score in beam:
            if prefix and prefix[-1] == EOS:
                candidates.append((prefix, score))
                continue
            log_probs = next_log_probs(model, prompt, prefix)
            candidates += [(prefix + [token], score + float(log_probs[token])) for token in range(VOCAB)]
        beam = sorted(candidates, key=lambda item: item[1], reverse=True)[:width]
        if all(prefix[-1] == EOS for prefix, _ in beam):
            break
    return beam


@pytest.mark.parametrize("width", [1, 2, 3])
def test_ebbs_with_one_teacher_is_that_teachers_beam_search(width):
    teacher = tiny_teacher(20)
    prompt, length = [2, 1, 2, 2], 6
    expected = reference_beam_search(teacher, prompt, width, length)
    for lower_beams in (True, False):
        found = bilevel_beams(ensemble([teacher], "ebbs"), prompts([prompt]), width, length, EOS, lower_beams)[0]
        assert [tokens for tokens, _ in found] == [tokens for tokens, _ in expected]
        assert [score for _, score in found] == pytest.approx([score for _, score in expected], abs=1e-4)


def test_ebbs_batched_equals_one_input_at_a_time():
    holder = ensemble([tiny_teacher(seed) for seed in (30, 31)], "ebbs", (0.6, 0.4))
    rows = [[1], [2, 1, 2, 1, 1], [1, 2, 2]]  # different lengths: left padding and positions must not matter
    batched = bilevel_beams(holder, prompts(rows), 3, 6, EOS)
    for row, found in zip(rows, batched, strict=True):
        alone = bilevel_beams(holder, prompts([row]), 3, 6, EOS)[0]
        assert [tokens for tokens, _ in found] == [tokens for tokens, _ in alone]
        assert [score for _, score in found] == pytest.approx([score for _, score in alone], abs=1e-4)


# ------------------------------------------------------------------ the other decoders through targets()
class _Collator:
    """What Ensemble.targets reads of fdistill's SeqCollator: prompts from source ids and the eos id."""

    def __init__(self):
        self.tokenizer = SimpleNamespace(eos_token_id=EOS)

    def prompts(self, sources):
        return prompts([list(source) for source in sources])


def _decoding(strategy: str, num_beams: int = 1, max_new_tokens: int = 6):
    from fdistill.config import DecodingConfig

    return DecodingConfig(strategy=strategy, num_beams=num_beams, max_new_tokens=max_new_tokens, temperature=1.0)


def test_vote_and_average_of_identical_teachers_decode_as_the_teacher_greedily():
    teacher = tiny_teacher(40)
    sources = [[1, 2], [2, 2, 1, 1], [1]]
    expected = []
    for source in sources:
        tokens = []
        for _ in range(6):
            token = int(next_log_probs(teacher, source, tokens).argmax())
            tokens.append(token)
            if token == EOS:
                break
        expected.append(tokens)
    for method in ("vote", "average"):
        holder = ensemble([teacher, tiny_teacher(40), tiny_teacher(40)], method)
        assert holder.targets(_Collator(), sources, _decoding("greedy"), batch_size=2) == expected, method


def test_vote_takes_the_weighted_majority_token():
    """Two teachers out of three agree on a first token the third would not pick, though the mixture puts more mass
    on the third's (it is sure, they are not): voting takes the majority, averaging the mixture's argmax; with the
    third weighted above the other two together, its token wins the vote."""
    teachers = [tiny_teacher(seed) for seed in (50, 55, 56)]
    first = [int(next_log_probs(teacher, [1, 2], []).argmax()) for teacher in teachers]
    assert len(set(first)) == 2, f"pick seeds whose first tokens split two to one, got {first}"
    majority = max(set(first), key=first.count)
    minority = next(token for token in first if token != majority)
    lonely = first.index(minority)
    decoding = _decoding("greedy", max_new_tokens=1)
    assert ensemble(teachers, "vote").targets(_Collator(), [[1, 2]], decoding)[0][:1] == [majority]
    assert ensemble(teachers, "average").targets(_Collator(), [[1, 2]], decoding)[0][:1] == [minority]
    heavy = [0.2, 0.2, 0.2]
    heavy[lonely] = 0.6
    assert ensemble(teachers, "vote", heavy).targets(_Collator(), [[1, 2]], decoding)[0][:1] == [minority]


def test_mixture_samples_are_reproducible_per_input_whatever_the_batch():
    holder = ensemble([tiny_teacher(seed) for seed in (60, 61)])
    sources = [[1, 2], [2, 2, 1], [1], [2]]
    decoding = _decoding("sample")
    together = holder.targets(_Collator(), sources, decoding, num_samples=2, seed=7, batch_size=4)
    apart = holder.targets(_Collator(), sources, decoding, num_samples=2, seed=7, batch_size=1)
    assert together == apart and len(together) == 8
    assert holder.targets(_Collator(), sources, decoding, num_samples=2, seed=8, batch_size=4) != together


def test_union_returns_every_teachers_outputs_grouped_per_input(tmp_path):
    from fdistill.models import SeqCollator
    from fdistill.sampling import sample_targets

    tokenizer = build_word_tokenizer(["a b c d e"], tmp_path / "tokenizer")
    collator = SeqCollator(tokenizer, False, 16, 16)
    teachers = [tiny_teacher(seed, vocab=len(tokenizer), eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
                for seed in (70, 71, 72)]
    sources = collator.encode_sources(["a b", "c a e d"])
    decoding = _decoding("beam", num_beams=2)
    union = ensemble(teachers, "union").targets(collator, sources, decoding, batch_size=2)
    assert len(union) == 6
    for teacher_index, teacher in enumerate(teachers):  # each teacher's own beam output, as one teacher decodes
        alone = sample_targets(teacher, collator, sources, decoding)
        assert [union[row * 3 + teacher_index] for row in range(2)] == alone
    assert len({tuple(target) for target in union}) > 2  # the teachers differ


# ------------------------------------------------------------------ MBR
def test_mbr_over_the_teachers_outputs_takes_the_one_two_teachers_agree_on(tmp_path):
    from fdistill.models import SeqCollator
    from fdistill.sampling import sample_targets

    tokenizer = build_word_tokenizer(["a b c d e f g"], tmp_path / "tokenizer")
    collator = SeqCollator(tokenizer, False, 16, 16)

    def teacher(seed):
        return tiny_teacher(seed, vocab=len(tokenizer), eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)

    sources = collator.encode_sources(["a b", "c a e d", "g"])
    greedy = _decoding("greedy", max_new_tokens=8)
    agreed, other = sample_targets(teacher(80), collator, sources, greedy), sample_targets(teacher(81), collator,
                                                                                          sources, greedy)
    assert agreed != other
    for order in ([teacher(80), teacher(80), teacher(81)], [teacher(81), teacher(80), teacher(80)]):
        assert ensemble(order, "mbr").targets(collator, sources, greedy) == agreed


def test_mbr_picks_the_candidate_of_highest_expected_bleu_hand_computed():
    """Sentence BLEU("a b c d e" | "a b c d k"): n-gram precisions 4/5, 3/4, 2/3, 1/2, brevity penalty 1, so
    100 * (1/5) ** (1/4) = 66.87 both ways; identical strings score 100, disjoint ones 0. Expected utilities
    (mean over the other three): (100 + 0 + 66.87) / 3 = 55.62 for either copy of "a b c d e", 0 for
    "f g h i j", (66.87 + 66.87 + 0) / 3 = 44.58 for "a b c d k"."""
    candidates = ["a b c d e", "a b c d e", "f g h i j", "a b c d k"]
    near = 100 * 0.2 ** 0.25
    expected = [(100 + near) / 3, (100 + near) / 3, 0.0, 2 * near / 3]
    assert mbr_utilities(candidates, "bleu") == pytest.approx(expected, abs=1e-6)
    assert mbr_select(candidates, "bleu") == 0
    assert mbr_select(["f g h i j", "a b c d k", "a b c d e", "a b c d e"], "bleu") == 2
    assert mbr_select(["only one"], "bleu") == 0
    assert mbr_utilities(["a d c", "a d c"], "bleu") == pytest.approx([100.0, 100.0])  # no 4-gram: effective order


# ------------------------------------------------------------------ bad configs, before any model loads
SYNTHETIC_TEACHERS = ["dataset=synthetic", "pair=tiny_gpt2_gap", "+experiment=multiteacher_synthetic"]


@pytest.mark.usefixtures("nothing_loads")
@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["pair.teachers=[]"], ["pair.teachers", "non-empty list"]),
        ([*SYNTHETIC_TEACHERS], ["3 teachers", "ensemble=average|vote|union|mbr|ebbs", "ensemble.teacher_index"]),
        ([*SYNTHETIC_TEACHERS, "ensemble=ebbs", "divergence=kl"],
         ["ensemble=ebbs", "not a token distribution", "divergence=seqkd", "ensemble=average"]),
        ([*SYNTHETIC_TEACHERS, "ensemble=ebbs", "ensemble.beam_size=0", "divergence=seqkd"],
         ["ensemble.beam_size", ">= 1"]),
        ([*SYNTHETIC_TEACHERS, "ensemble=none", "ensemble.teacher_index=3"], ["teacher_index=3", "3 teacher"]),
        ([*SYNTHETIC_TEACHERS, "ensemble=average", "ensemble.weights=[1,1]"], ["ensemble.weights", "3 non-negative"]),
        ([*SYNTHETIC_TEACHERS, "ensemble=union", "divergence=teacher"], ["ensemble=union", "teacher_index"]),
        ([*SYNTHETIC_TEACHERS, "ensemble=mbr", "ensemble.metric=bleurgh", "divergence=seqkd"],
         ["ensemble.metric", "bleurgh"]),
        (["dataset=dart", "dataset.metrics=[bleu]", "+pair.teachers=[{data_subset: {modes: [0]}}]", "ensemble=average"],
         ["modes", "{shard: i, of: n}"]),
        ([*SYNTHETIC_TEACHERS, "ensemble=average", "divergence=teacher", "pipeline.predistill.enabled=true"],
         ["pipeline.evaluate.model=teacher", "pipeline.predistill.enabled=false"]),
    ],
)
def test_bad_multi_teacher_configs_fail_before_any_model_loads(tmp_path, overrides, named):
    message = run_error(tmp_path, overrides)
    for part in named:
        assert part in message, (part, message)


@pytest.mark.usefixtures("nothing_loads")
def test_teachers_with_different_tokenizers_are_refused_naming_the_first_differing_token(tmp_path):
    first = build_word_tokenizer(["the cat sat"], tmp_path / "a")
    second = build_word_tokenizer(["the dog sat"], tmp_path / "b")
    assert first.get_vocab() != second.get_vocab()
    message = run_error(tmp_path, ["pair=tiny_gpt2", "pair.teacher.build=null", "pair.teacher.finetuned=true",
                                   f"pair.teacher.name_or_path={tmp_path / 'a'}",
                                   f"+pair.teachers=[{{name_or_path: {tmp_path / 'a'}}},{{name_or_path: {tmp_path / 'b'}}}]",
                                   "ensemble=average"])
    vocab_a, vocab_b = first.get_vocab(), second.get_vocab()
    index = min(i for i in set(vocab_a.values()) | set(vocab_b.values())
                if {t for t, j in vocab_a.items() if j == i} != {t for t, j in vocab_b.items() if j == i})
    token_a = next(t for t, j in vocab_a.items() if j == index)
    assert f"first difference at id {index}: {token_a!r}" in message
    assert "cross-tokenizer" in message


# ------------------------------------------------------------------ the cache: teachers once, rebuilt alone
MT_TINY = [*SYNTHETIC_TEACHERS, "dataset.params.num_train=64", "dataset.params.num_validation=8",
           "dataset.params.num_test=8", "pipeline.teacher_sft.max_steps=6", "pipeline.teacher_sft.batch_size=8",
           "pipeline.teacher_sft.checkpoint_every=3", "pipeline.predistill.max_steps=2", "pipeline.predistill.batch_size=8",
           "pipeline.distill.max_steps=2", "pipeline.distill.batch_size=4", "pipeline.teacher_sampling.batch_size=64",
           "pipeline.teacher_sampling.decoding.max_new_tokens=12", "pipeline.evaluate.decoding.max_new_tokens=12",
           "pipeline.evaluate.batch_size=8", "ensemble.beam_size=2"]


def _run_multi_teacher(tmp_path, overrides: list[str], name: str, caplog) -> dict[str, list[str]]:
    """Run the pipeline in-process; returns, per artifact kind, the log lines that built or reused it."""
    from hydra import compose, initialize_config_dir

    from fdistill.config import register_configs
    from fdistill.pipeline import run_pipeline

    register_configs()
    caplog.clear()
    paths = [f"paths.root={tmp_path}", f"paths.output_dir={tmp_path}/outputs", f"paths.cache_dir={tmp_path}/cache"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*paths, *MT_TINY, *overrides])
    run_pipeline(cfg, tmp_path / name)
    events: dict[str, list[str]] = {}
    for record in caplog.records:
        message = record.getMessage()
        for verb in ("building", "using the cached artifact"):
            if message.startswith("[") and f"] {verb} " in message:
                kind = message.split(" ", 2)[-1].rstrip("/").split("/")[-2]
                events.setdefault(kind, []).append(verb.split()[0])
    return events


def test_teachers_are_built_once_and_changing_one_rebuilds_it_and_its_ensembles_only(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    first = _run_multi_teacher(tmp_path, ["ensemble=ebbs", "divergence=seqkd"], "ebbs", caplog)
    assert first["teacher"] == ["building"] * 3
    assert first["teacher_samples"] == ["building"]
    again = _run_multi_teacher(tmp_path, ["ensemble=average", "divergence=teacher"], "average", caplog)
    assert again["teacher"] == ["using"] * 3 and "student_init" not in again  # no student for a teacher row
    changed = _run_multi_teacher(tmp_path, ["ensemble=ebbs", "divergence=seqkd", "pair.teachers.1.seed=999"],
                                 "ebbs_b999", caplog)
    assert changed["teacher"] == ["using", "building", "using"]  # teacher B alone
    assert changed["student_init"] == ["using"] and changed["predistill"] == ["using"]  # from teacher A; MLE only
    assert changed["teacher_samples"] == ["building"]  # the ensemble's outputs: B is one of its teachers
    assert len([path for path in (tmp_path / "cache" / "teacher").iterdir() if path.is_dir()]) == 4


@pytest.mark.slow
def test_ensemble_sampling_killed_midway_is_rebuilt_on_rerun_with_the_same_samples(tmp_path):
    """SIGKILL run.py while the EBBS ensemble samples its targets (a scheduler ending the job): the re-run finds the
    dead builder's partial dir, builds the samples again and gets exactly what an uninterrupted build gets."""
    import signal
    import subprocess
    import time

    from pipeline_cli import PYTHON, cli_env

    from fdistill.pipeline.cache import MANIFEST

    overrides = [*MT_TINY, "dataset.params.num_train=1500", "pipeline.teacher_sampling.decoding.max_new_tokens=32",
                 "pipeline.teacher_sampling.batch_size=32", "ensemble=ebbs", "ensemble.beam_size=4",
                 "divergence=seqkd", "pipeline.evaluate.enabled=false"]

    def command(root: Path) -> list[str]:
        return [str(PYTHON), "run.py", *overrides, f"paths.output_dir={root}/out", f"paths.cache_dir={root}/cache"]

    log = tmp_path / "killed.log"
    with log.open("w") as output:
        process = subprocess.Popen(command(tmp_path / "a"), cwd=REPO, env=cli_env(), stdout=output,
                                   stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while "[teacher_samples] building" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(2.0)
        assert process.poll() is None, "the sampling finished before the kill: give it more inputs"
        process.send_signal(signal.SIGKILL)
        process.wait()
    samples_root = tmp_path / "a" / "cache" / "teacher_samples"
    assert list(samples_root.glob("*.partial")) and not [path for path in samples_root.iterdir()
                                                          if path.is_dir() and not path.name.endswith(".partial")]
    for root in (tmp_path / "a", tmp_path / "b"):  # the re-run, and an uninterrupted build elsewhere
        result = subprocess.run(command(root), cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    built = [sorted(path for path in (root / "cache" / "teacher_samples").iterdir()
                    if path.is_dir() and not path.name.endswith(".partial")) for root in (tmp_path / "a", tmp_path / "b")]
    assert [len(found) for found in built] == [1, 1] and built[0][0].name == built[1][0].name
    manifests = [json.loads((found[0] / MANIFEST).read_text()) for found in built]
    assert manifests[0]["content"] == manifests[1]["content"]  # the same sample files, byte for byte
