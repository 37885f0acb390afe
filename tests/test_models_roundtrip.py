"""generate → from_ids → token_logits scores exactly what generation sampled: the summed log-probabilities
of the returned response ids equal the summed generation scores (f-DISTILL Eq. 1 factorisation), for both
architectures, greedy and sampling at temperature 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fdistill.models import (
    IGNORE_INDEX,
    SeqCollator,
    generate_targets,
    load_teacher,
    load_tokenizer,
    prepare_tiny_pair,
    token_logits,
)

PAIR_DIR = Path(__file__).resolve().parents[1] / "conf" / "pair"
TEXTS = ["the cat sat on the mat", "a dog ran far away from home", "one two three four five six"]
MAX_NEW_TOKENS = 8
SAMPLES_PER_PROMPT = 3


@pytest.fixture(scope="module", params=["tiny_bart", "tiny_t5", "tiny_gpt2"])
def tiny_pair(request, tmp_path_factory):
    pair = OmegaConf.load(PAIR_DIR / f"{request.param}.yaml")
    directory = prepare_tiny_pair(pair, TEXTS, tmp_path_factory.mktemp(request.param))
    return load_tokenizer(directory), load_teacher(directory, pair.architecture)


@pytest.mark.parametrize("do_sample", [False, True])
def test_generated_targets_are_scored_with_their_generation_probabilities(tiny_pair, do_sample):
    tokenizer, model = tiny_pair
    collator = SeqCollator(tokenizer, model.config.is_encoder_decoder, max_source_length=16, max_target_length=MAX_NEW_TOKENS)
    source_ids = collator.encode_sources(TEXTS)
    prompts = collator.prompts(source_ids)
    options = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": do_sample,
               "num_return_sequences": SAMPLES_PER_PROMPT if do_sample else 1}

    torch.manual_seed(0)
    targets = generate_targets(model, prompts, tokenizer=tokenizer, **options)
    torch.manual_seed(0)
    sampling = {"top_k": 0, "top_p": 1.0, "temperature": 1.0} if do_sample else {}
    generated = model.generate(
        **prompts, **options, **sampling, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        return_dict_in_generate=True, output_scores=True,
    )
    step_log_probs = model.compute_transition_scores(generated.sequences, generated.scores, normalize_logits=True)

    lengths = [len(row) for row in targets]
    assert all(row[-1] == tokenizer.eos_token_id or len(row) == MAX_NEW_TOKENS for row in targets)
    assert all(tokenizer.eos_token_id not in row[:-1] for row in targets)
    if do_sample:  # the test covers padded rows: some samples stop early, at eos
        assert min(lengths) < MAX_NEW_TOKENS and len(set(lengths)) > 1
    response_width = len(generated.scores)
    responses = generated.sequences[:, -response_width:]
    assert [responses[row, :length].tolist() for row, length in enumerate(lengths)] == targets

    repeated_sources = [ids for ids in source_ids for _ in range(options["num_return_sequences"])]
    batch = collator.from_ids(repeated_sources, targets)
    with torch.no_grad():
        log_probs = token_logits(model, batch).log_softmax(-1)
    labels = batch["labels"]
    valid = labels != IGNORE_INDEX
    token_log_probs = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    scored = (token_log_probs * valid).sum(-1)
    expected = torch.stack([step_log_probs[row, :length].sum() for row, length in enumerate(lengths)])
    assert valid.sum(-1).tolist() == lengths
    torch.testing.assert_close(scored, expected, atol=1e-4, rtol=1e-4)
