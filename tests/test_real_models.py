"""Real-model support on tiny stand-ins: Llama students by layer copy (renumbered layers, cached generation),
chat-template prompts, a teacher and student sharing one tokenizer with differently padded vocabularies, the
DART dev-file resplit, and GGUF checkpoints (a tiny Llama written to GGUF with the `gguf` package's writer,
converted, cached and reloaded through the pipeline's own code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from fdistill.data import DataError, load_examples
from fdistill.divergences import get_divergence, masked_mean
from fdistill.models import SeqCollator, build_word_tokenizer, generate_targets, init_student, token_logits
from fdistill.training.objectives import TokenLoss

WORDS = "the cat dog sat ran on a mat big small red blue facts : ( ) ,".split()
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_word_tokenizer(WORDS, tmp_path_factory.mktemp("tok"))


def tiny_llama(tokenizer, vocab_size: int | None = None, layers: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return AutoModelForCausalLM.from_config(config).eval()


def test_a_layer_copied_llama_student_has_renumbered_layers_and_generates_with_its_cache(tokenizer):
    teacher = tiny_llama(tokenizer, layers=6)
    student = init_student(teacher, num_decoder_layers=3).eval()  # layers [0, 2, 5] (spread, first and last kept)
    assert student.config.num_hidden_layers == 3 and student.config.fdistill_copied_layers == {"decoder": [0, 2, 5]}
    if getattr(teacher.config, "layer_types", None) is not None:  # one entry per kept layer
        assert len(student.config.layer_types) == 3
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2]
    assert torch.equal(student.model.layers[2].mlp.up_proj.weight, teacher.model.layers[5].mlp.up_proj.weight)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()  # still tied
    collator = SeqCollator(tokenizer, False, 8, 8)
    prompts = collator.prompts(["the cat sat", "a dog"])
    cached = generate_targets(student, prompts, tokenizer=tokenizer, max_new_tokens=6)
    uncached = generate_targets(student, prompts, tokenizer=tokenizer, max_new_tokens=6, use_cache=False)
    assert cached == uncached and all(len(row) >= 1 for row in cached)


def test_chat_prompts_keep_the_template_whole_and_targets_end_with_eos(tmp_path):
    tokenizer = build_word_tokenizer([*WORDS, "user", "assistant"], tmp_path / "chat")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.eos_token = "<|im_end|>"
    collator = SeqCollator(tokenizer, False, 20, 6, prompt_format="chat", instruction="facts : ")
    sources = collator.encode_sources(["( the cat , sat , on a mat )", "the " * 40])
    text = tokenizer.decode(sources[0])
    assert text == "<|im_start|> user facts : ( the cat , sat , on a mat ) <|im_end|> <|im_start|> assistant"
    assert len(sources[1]) == 20  # truncated inside the content, the template intact
    assert tokenizer.decode(sources[1]).endswith("<|im_start|> assistant")
    targets = collator.encode_targets(["a big red dog ran"])
    assert targets[0][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    batch = collator.from_ids(sources, [targets[0], targets[0][:2]])
    assert (batch["labels"][0] != -100).sum() == len(targets[0])
    with pytest.raises(ValueError, match="chat template"):
        SeqCollator(tokenizer, True, 16, 6, prompt_format="chat")


@pytest.mark.parametrize("fused", [False, True])
def test_a_padded_vocabulary_distils_over_the_tokenizers_entries(tokenizer, fused):
    """Qwen2.5-style: one tokenizer, heads padded to different row counts; padding rows are ignored."""
    vocab = len(tokenizer)
    teacher, student = tiny_llama(tokenizer, vocab + 24, seed=1), tiny_llama(tokenizer, vocab + 8, layers=2, seed=2)
    collator = SeqCollator(tokenizer, False, 8, 6)
    batch = collator.from_text(["the cat sat", "a dog"], ["on a mat", "ran"])
    valid = batch["labels"] != -100
    divergence = get_divergence("js")
    loss, _, _ = TokenLoss(teacher, fused=fused, vocab_size=vocab).divergence(divergence, "both", student, batch, "token")
    expected = masked_mean(divergence.per_token(token_logits(student, batch)[..., :vocab],
                                                token_logits(teacher, batch)[..., :vocab]), valid)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for model in (teacher, student):  # generation never emits a padding id
        model.get_output_embeddings().weight.data[vocab:] += 100.0
        targets = generate_targets(model, collator.prompts(["the cat"]), tokenizer=tokenizer, max_new_tokens=4,
                                   do_sample=True)
        assert max(max(row) for row in targets) < vocab


def _dart_file(folder: Path, num: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"tripleset": [[f"s{i % (num - 2)}", "rel", "o"]], "annotations": [{"source": "x", "text": f"t{i}"}]}
            for i in range(num)]  # two duplicated triple sets
    path = folder / "dart-v1.1.1-full-dev.json"
    path.write_text(json.dumps(rows))
    return folder


def test_the_dart_resplit_is_deterministic_and_disjoint_by_content(tmp_path):
    folder = _dart_file(tmp_path / "dart", 30)
    resplit = {"seed": 3, "validation": 5, "test": 6}
    splits = {split: load_examples("dart", split, data_dir=folder, resplit_dev=resplit)
              for split in ("train", "validation", "test")}
    sources = {split: {example.source for example in examples} for split, examples in splits.items()}
    assert [len(sources[split]) for split in ("train", "validation", "test")] == [17, 5, 6]
    assert not (sources["train"] & sources["test"]) and not (sources["validation"] & sources["test"])
    assert sum(len(examples) for examples in splits.values()) == 30
    again = load_examples("dart", "test", data_dir=folder, resplit_dev=resplit)
    assert [example.references for example in again] == [example.references for example in splits["test"]]
    with pytest.raises(DataError, match="resplit_dev"):
        load_examples("dart", "test", data_dir=folder, resplit_dev={"seed": 0, "test": 5})


def test_the_shared_dart_dev_file_resplits(shared_data):
    resplit = {"seed": 0, "validation": 200, "test": 300}
    train = load_examples("dart", "train", data_dir=shared_data / "dart", resplit_dev=resplit)
    test = load_examples("dart", "test", data_dir=shared_data / "dart", resplit_dev=resplit)
    assert len({example.source for example in test}) == 300
    assert not {example.source for example in train} & {example.source for example in test}
