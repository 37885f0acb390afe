"""SeqCollator: masking of prompt and padding, truncation lengths, and one label layout for both
architectures (GKD Table A.1 truncation; prompt/response separation of decoder-only models)."""

from __future__ import annotations

import pytest
import torch

from fdistill.models import IGNORE_INDEX, SeqCollator, build_word_tokenizer

TEXTS = ["w1 w2 w3 w4 w5 w6 w7 w8 w9", "a b c d e"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_word_tokenizer(TEXTS, tmp_path_factory.mktemp("tok") / "tokenizer")


def ids(tokenizer, text):
    return tokenizer.convert_tokens_to_ids(text.split())


def test_word_tokenizer_round_trips_and_appends_eos(tokenizer):
    encoded = tokenizer("a b c")["input_ids"]
    assert encoded == [*ids(tokenizer, "a b c"), tokenizer.eos_token_id]
    assert tokenizer.decode(encoded, skip_special_tokens=True) == "a b c"
    assert tokenizer("zz")["input_ids"][0] == tokenizer.unk_token_id
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)


def test_encoder_decoder_batch_masks_padding_and_truncates(tokenizer):
    collator = SeqCollator(tokenizer, is_encoder_decoder=True, max_source_length=4, max_target_length=3)
    batch = collator.from_text(["w1 w2 w3 w4 w5 w6", "a"], ["b c d e", "e"])
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[*ids(tokenizer, "w1 w2 w3"), eos], [*ids(tokenizer, "a"), eos, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # target truncated to max_target_length with eos kept; padding labelled -100
    assert batch["labels"].tolist() == [[*ids(tokenizer, "b c"), eos], [*ids(tokenizer, "e"), eos, IGNORE_INDEX]]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_decoder_only_batch_labels_only_the_response(tokenizer):
    collator = SeqCollator(tokenizer, is_encoder_decoder=False, max_source_length=4, max_target_length=3)
    batch = collator.from_text(["w1 w2 w3 w4 w5", "a"], ["b c d e", "e"])
    eos, pad, sep = tokenizer.eos_token_id, tokenizer.pad_token_id, collator.separator_id
    assert sep == eos  # the word tokenizer has no sep token: the prompt ends with eos
    prompt_long = [*ids(tokenizer, "w1 w2 w3"), sep]  # max_source_length counts the separator
    prompt_short = [pad, pad, *ids(tokenizer, "a"), sep]  # left padded
    assert batch["input_ids"].tolist() == [
        [*prompt_long, *ids(tokenizer, "b c"), eos],
        [*prompt_short, *ids(tokenizer, "e"), eos, pad],
    ]
    assert batch["attention_mask"].tolist() == [[1] * 7, [0, 0, 1, 1, 1, 1, 0]]
    assert batch["position_ids"].tolist() == [list(range(7)), [0, 0, 0, 1, 2, 3, 0]]
    assert batch["labels"].tolist() == [[*ids(tokenizer, "b c"), eos], [*ids(tokenizer, "e"), eos, IGNORE_INDEX]]


def test_labels_are_the_target_ids_for_both_architectures(tokenizer):
    source_ids = [ids(tokenizer, "a b"), ids(tokenizer, "c")]
    target_ids = [[*ids(tokenizer, "d e"), tokenizer.eos_token_id], [tokenizer.eos_token_id]]
    batches = [
        SeqCollator(tokenizer, is_encoder_decoder, 8, 8).from_ids(source_ids, target_ids)
        for is_encoder_decoder in (True, False)
    ]
    assert torch.equal(batches[0]["labels"], batches[1]["labels"])
    assert batches[0]["labels"].tolist() == [target_ids[0], [target_ids[1][0], IGNORE_INDEX, IGNORE_INDEX]]


@pytest.mark.parametrize("is_encoder_decoder", [True, False])
def test_from_text_equals_from_ids_of_encoded_texts(tokenizer, is_encoder_decoder):
    collator = SeqCollator(tokenizer, is_encoder_decoder, 5, 4)
    sources, targets = ["w1 w2 w3 w4 w5 w6", "a b"], ["c d e w1 w2", "e"]
    from_text = collator.from_text(sources, targets)
    from_ids = collator.from_ids(collator.encode_sources(sources), collator.encode_targets(targets))
    assert from_text.keys() == from_ids.keys()
    assert all(torch.equal(from_text[key], from_ids[key]) for key in from_text)


def test_decoder_only_prompts_are_left_padded_and_end_with_separator(tokenizer):
    collator = SeqCollator(tokenizer, is_encoder_decoder=False, max_source_length=8, max_target_length=4)
    prompts = collator.prompts(["a b c", "d"])
    sep, pad = collator.separator_id, tokenizer.pad_token_id
    assert prompts["input_ids"].tolist() == [[*ids(tokenizer, "a b c"), sep], [pad, pad, *ids(tokenizer, "d"), sep]]
    assert prompts["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    from_ids = collator.prompts(collator.encode_sources(["a b c", "d"]))
    assert torch.equal(from_ids["input_ids"], prompts["input_ids"])


def test_invalid_inputs_fail_with_a_message(tokenizer):
    collator = SeqCollator(tokenizer, is_encoder_decoder=True, max_source_length=4, max_target_length=3)
    with pytest.raises(ValueError, match="equally many"):
        collator.from_ids([[4]], [])
    with pytest.raises(ValueError, match="empty target"):
        collator.from_ids([[4]], [[]])
    with pytest.raises(ValueError, match="max_source_length=1"):
        SeqCollator(tokenizer, is_encoder_decoder=False, max_source_length=1, max_target_length=3)
