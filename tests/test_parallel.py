"""The parallel layer (fdistill/parallel.py) on several CPU processes (torchrun + gloo), where the same sharding,
splitting and gathering code runs as on a GPU node: FSDP2 training and a sharded teacher end to end against one
process, the fused loss under FSDP, samples that do not depend on the number of processes, the precision policy,
and the kernel settings (chunk sizes by device, one host sync per loss call, the head probe)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from pipeline_cli import PYTHON, REPO, TORCHRUN, cli_env, read_json, single_run_dir

from fdistill.config import OptimConfig, PipelineConfig, TrainStageConfig, resolve_mixed_precision
from fdistill.errors import ConfigError
from fdistill.parallel import Parallel

WORKER = REPO / "tests" / "parallel_worker.py"
#: stated tolerance of a 2-process FSDP student against the 1-process one (same data order, seeds and shared
#: artifacts; float32 reductions in another order): max |Δw| over every weight after 8 distillation steps
FSDP_STUDENT_TOLERANCE = 2e-3


def _torchrun(processes: int, *args: str, timeout: float = 600) -> None:
    result = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", str(processes), *args], cwd=REPO,
                            env=cli_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


# ------------------------------------------------------------------ fused loss under FSDP
@pytest.mark.parametrize("head_unit", ["own", "root"])
def test_the_fused_loss_under_fsdp_equals_the_unsharded_one(tmp_path, head_unit):
    _torchrun(2, str(WORKER), "fused", str(tmp_path), head_unit)
    for rank in (0, 1):
        found = read_json(tmp_path / f"fused-{rank}.json")
        assert found["head_is_unit"] == (head_unit == "own")
        assert found["loss"] == pytest.approx(found["expected"], rel=1e-6)
        assert len(found["grads"]) == 21 and max(found["grads"].values()) < 1e-5, found["grads"]


# ------------------------------------------------------------------ samples: any number of processes
@pytest.mark.parametrize("layout", ["plain", "sharded"])
def test_samples_are_the_same_on_1_2_and_3_processes(tmp_path, layout):
    for processes in (1, 2, 3):
        _torchrun(processes, str(WORKER), "sampling", str(tmp_path), layout)
    found = {path.name: path.read_text() for path in tmp_path.glob(f"sampling-*-{layout}-*.json")}
    assert len(found) == 6 and len(set(found.values())) == 1, sorted(found)
    samples = json.loads(next(iter(found.values())))["samples"]
    assert len(samples) == 14 and len({tuple(sample) for sample in samples}) > 7  # 2 per input, and they vary


def test_row_seeded_sampling_draws_from_the_warped_distribution():
    """Gumbel-max with a generator per row: the argmax frequencies over many row seeds match the softmax of the
    temperature-scaled, top-k/top-p-filtered logits (transformers' own warpers), within 4 standard errors."""
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    from fdistill.sampling import RowSeededSampling, row_seed

    logits = torch.tensor([2.0, 1.5, 1.0, 0.2, -0.5, -3.0, 0.9, 0.1])
    rows, temperature = 20_000, 1.4
    processor = RowSeededSampling([row_seed(5, row, 0) for row in range(rows)], temperature, top_k=6, top_p=0.95)
    ids = torch.zeros(rows, 3, dtype=torch.long)
    drawn = processor(ids, logits.expand(rows, -1).clone()).argmax(-1)
    warped = TopPLogitsWarper(0.95)(ids[:1], TopKLogitsWarper(6)(ids[:1], logits.unsqueeze(0) / temperature))
    expected = torch.softmax(warped[0], -1)
    counts = torch.bincount(drawn, minlength=8).double() / rows
    standard_error = (expected * (1 - expected) / rows).sqrt()
    assert ((counts - expected).abs() <= 4 * standard_error + 1e-12).all(), (counts, expected)
    assert counts[expected == 0].sum() == 0  # filtered tokens are never drawn
    again = processor.__class__([row_seed(5, row, 0) for row in range(rows)], temperature, 6, 0.95)
    assert torch.equal(again(ids, logits.expand(rows, -1).clone()).argmax(-1), drawn)  # seeded: reproducible


# ------------------------------------------------------------------ the pipeline on two processes
def _tiny(pair: str) -> list[str]:
    overrides = [f"pair={pair}", "pipeline.cpu=true", "dataset.params.num_train=200", "dataset.params.num_test=30",
                 "pipeline.teacher_sft.max_steps=20", "pipeline.teacher_sft.batch_size=8",
                 "pipeline.predistill.max_steps=10", "pipeline.predistill.batch_size=8",
                 "pipeline.distill.batch_size=8", "pipeline.distill.max_steps=8", "pipeline.distill.checkpoint_every=4",
                 "pipeline.teacher_sampling.batch_size=16", "pipeline.evaluate.analysis_limit=10", "divergence=tvd"]
    if pair != "tiny_llama":  # dropout masks would differ with the rows per process (tiny_llama has none)
        overrides.append("++pair.teacher.build.dropout=0.0")
    return overrides


FSDP = ["pipeline.distributed.strategy=fsdp", "pipeline.distributed.shard_teacher=true",
        "pipeline.distributed.head_unit=own"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "student" / "model.safetensors")


def _only_artifact(cache: Path, kind: str) -> Path:
    found = [path for path in (cache / kind).iterdir() if path.is_dir() and not path.name.endswith(".partial")]
    assert len(found) == 1, found
    return found[0]


def _run(args: list[str], processes: int, timeout: float = 900) -> subprocess.CompletedProcess:
    launcher = [str(PYTHON)] if processes == 1 else [str(TORCHRUN), "--standalone", "--nproc_per_node", str(processes)]
    result = subprocess.run([*launcher, "run.py", *args], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def _fsdp_against_one_process(tmp_path: Path, pair: str) -> None:
    """Every stage with 1 process; then the same config with 2 (FSDP student, sharded teacher) on that cache, its
    teacher samples rebuilt by the 2 processes: they must be the same bytes under the same key; the 2-process
    student must equal the 1-process one within FSDP_STUDENT_TOLERANCE and evaluate to the same predictions."""
    cache = tmp_path / "cache"
    config = _tiny(pair)
    _run([*config, f"paths.output_dir={tmp_path}/one", f"paths.cache_dir={cache}"], 1)
    samples = _only_artifact(cache, "teacher_samples")
    key, reference = samples.name, tmp_path / "samples-of-one-process"
    shutil.move(samples, reference)
    _run([*config, *FSDP, f"paths.output_dir={tmp_path}/two", f"paths.cache_dir={cache}"], 2)
    rebuilt = _only_artifact(cache, "teacher_samples")
    assert rebuilt.name == key  # the same key: the number of processes is not part of it
    assert read_json(rebuilt / "artifact.json")["content"] == read_json(reference / "artifact.json")["content"]

    one, two = single_run_dir(tmp_path / "one"), single_run_dir(tmp_path / "two")
    weights_one, weights_two = _weights(one), _weights(two)
    assert weights_one.keys() == weights_two.keys()
    assert max(float((weights_one[k] - weights_two[k]).abs().max()) for k in weights_one) < FSDP_STUDENT_TOLERANCE
    assert (one / "predictions.jsonl").read_text() == (two / "predictions.jsonl").read_text()
    metrics_one, metrics_two = read_json(one / "metrics.json"), read_json(two / "metrics.json")
    assert metrics_two["metadata"]["processes"] == 2 and metrics_two["metadata"]["strategy"] == "fsdp"
    for key, value in metrics_one["metrics"].items():
        if isinstance(value, float):
            assert metrics_two["metrics"][key] == pytest.approx(value, rel=1e-2, abs=1e-3), key
    records = [read_json(two / "distill" / f"process_{rank}.json") for rank in (0, 1)]
    assert records[0]["param_sha256"] and records[1]["param_sha256"] is None  # the whole model on the main process


def test_fsdp_with_a_sharded_teacher_matches_one_process_tiny_llama(tmp_path):
    _fsdp_against_one_process(tmp_path, "tiny_llama")


@pytest.mark.slow
@pytest.mark.parametrize("pair", ["tiny_gpt2", "tiny_bart"])
def test_fsdp_with_a_sharded_teacher_matches_one_process(tmp_path, pair):
    _fsdp_against_one_process(tmp_path, pair)


@pytest.mark.slow
def test_a_sigkilled_fsdp_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    from pipeline_cli import KILL_AFTER, STAGE_STEPS, resume_step, start_and_kill

    args = [*_tiny("tiny_llama"), *FSDP, f"pipeline.distill.max_steps={STAGE_STEPS}",
            "pipeline.distill.checkpoint_every=5", "pipeline.evaluate.enabled=false"]
    launcher = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2"]
    killed = [*args, f"paths.output_dir={tmp_path}/killed", f"paths.cache_dir={tmp_path}/cache"]
    start_and_kill(killed, tmp_path / "killed", "runs/*/*/distill", tmp_path / "killed.log", launcher=launcher)
    resumed = _run(killed, 2)
    assert resume_step(resumed.stdout + resumed.stderr, "distill") >= KILL_AFTER
    _run([*args, f"paths.output_dir={tmp_path}/straight", f"paths.cache_dir={tmp_path}/cache"], 2)
    digests = [read_json(single_run_dir(tmp_path / run) / "distill" / "process_0.json")["param_sha256"]
               for run in ("killed", "straight")]
    assert digests[0] == digests[1]


# ------------------------------------------------------------------ precision
def _bf16_checkpoint(tmp_path: Path) -> Path:
    from parallel_worker import WORDS, tiny_llama

    from fdistill.models import build_word_tokenizer

    tokenizer = build_word_tokenizer(WORDS, tmp_path / "bf16")
    tiny_llama(tokenizer, 0).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    return tmp_path / "bf16"


@pytest.mark.parametrize(("params", "dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_a_bf16_checkpoint_trains_with_the_configured_master_weights(tmp_path, params, dtype):
    from fdistill.training.loop import train

    cfg = PipelineConfig()
    cfg.precision.params = params
    parallel = Parallel(Accelerator(cpu=True), cfg)
    model = parallel.load(_bf16_checkpoint(tmp_path), "decoder_only", "trained")
    assert {p.dtype for p in model.parameters()} == {dtype}

    def loss_fn(model, micro_step):
        ids = torch.arange(1, 9).unsqueeze(0)
        return model(input_ids=ids, labels=ids).loss, {}

    stage = TrainStageConfig(max_steps=2, batch_size=1, checkpoint_every=2, log_every=1, optim=OptimConfig(lr=1e-3))
    result = train(parallel=parallel, model=model, loss_fn=loss_fn, stage=stage, total_steps=2,
                   work_dir=tmp_path / "work", desc="sft")
    optimizer_states = torch.load(tmp_path / "work" / "checkpoint" / "optimizer.bin", weights_only=False)["state"]
    assert {state["exp_avg"].dtype for state in optimizer_states.values()} == {dtype}
    assert {p.dtype for p in result.model.parameters()} == {dtype}
    frozen = parallel.load(tmp_path / "bf16", "decoder_only", "frozen")
    assert {p.dtype for p in frozen.parameters()} == {torch.float32}  # teacher `auto` on the CPU: float32


def test_the_launchers_mixed_precision_is_used_unless_the_config_sets_one(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_mixed_precision(None) == "bf16"
    assert resolve_mixed_precision("no") == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert resolve_mixed_precision(None) == "no"


def _validate(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from fdistill.config import register_configs, validate_config

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return validate_config(compose("config", overrides=["paths.root=/tmp", *overrides]))


@pytest.mark.parametrize(("overrides", "env", "named"), [
    (["pipeline.distributed.strategy=fsdp", "pipeline.mixed_precision=fp16"], {}, "use pipeline.mixed_precision=bf16"),
    ([], {"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed"),
    ([], {"ACCELERATE_USE_FSDP": "true"}, "pipeline.distributed.strategy=fsdp"),
    (["pipeline.distributed.strategy=zero3"], {}, "DeepSpeed is not supported"),
])
def test_unsupported_distributed_setups_are_refused_up_front(monkeypatch, overrides, env, named):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=named):
        _validate(overrides)


def test_fp16_overflows_are_the_loss_scalers_to_skip_not_a_divergence(tmp_path):
    """A real GradScaler (CPU): an overflowing step is skipped by the scaler, counted, and training goes on; the
    scaler's state stays consistent (no "unscale_() has already been called" on the next step)."""
    import csv

    from fdistill.training.loop import train

    accelerator = Accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)  # overflows until the scale comes down
    parallel = Parallel(accelerator, PipelineConfig())
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)

    def loss_fn(model, micro_step):
        inputs = torch.randn(8, 4, generator=torch.Generator().manual_seed(micro_step))
        return model(inputs).pow(2).mean() * 1e30, {}

    stage = TrainStageConfig(max_steps=6, batch_size=1, checkpoint_every=6, log_every=6, loss_blowup_factor=None,
                             optim=OptimConfig(lr=1e-3, warmup_ratio=0.0))
    train(parallel=parallel, model=model, loss_fn=loss_fn, stage=stage, total_steps=6, work_dir=tmp_path, desc="fp16")
    row = next(csv.DictReader((tmp_path / "log.csv").open()))
    assert int(row["fp16_overflow_steps"]) >= 1 and accelerator.scaler.get_scale() < 2.0**100


# ------------------------------------------------------------------ kernels
def test_chunks_are_sized_by_device():
    from fdistill.divergences.chunked import GPU_MIN_CHUNK_ROWS, default_chunk_rows

    assert default_chunk_rows(128_256, "cpu") == 8  # cache-sized on the CPU
    assert default_chunk_rows(128_256, "cuda") == 2_092  # 2^28 logits: ~1 GiB of float32 per temporary
    assert default_chunk_rows(262_144, "cuda") == GPU_MIN_CHUNK_ROWS


def _host_syncs(compute) -> int:
    """How many times `compute` copies a scalar from the device to Python (aten._local_scalar_dense)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                Count.count += 1
            return func(*args, **(kwargs or {}))

    with Count():
        compute()
    return Count.count


@pytest.mark.parametrize("name", ["kl", "js", "tvd", "rkl", "jsd"])
def test_a_fused_loss_call_makes_one_host_sync_however_many_chunks(name):
    from fdistill.divergences import get_divergence
    from fdistill.divergences.fused import LinearHead, fused_loss

    torch.manual_seed(0)
    hidden, teacher_hidden = torch.randn(64, 16, requires_grad=True), torch.randn(64, 16)
    student, teacher = LinearHead(torch.randn(300, 16, requires_grad=True)), LinearHead(torch.randn(300, 16))
    div = get_divergence(name)

    def call():
        loss, _, _ = fused_loss(div, "both", student, hidden, teacher, teacher_hidden,
                                div_weights=torch.full((64,), 1 / 64), chunk_rows=4)  # 16 chunks
        loss.backward()

    assert _host_syncs(call) == 1


def test_akls_head_split_needs_no_host_sync_on_an_accelerator():
    """On an accelerator AKL's head split bisects the boundary bin (sync-free); on the CPU its top-k reads the
    bin's width (free there). Both equal the definition (tests/test_divergences.py)."""
    from fdistill.divergences import get_divergence

    p = torch.softmax(torch.randn(16, 500) * 3, -1)
    akl = get_divergence("akl", mu=0.5)
    assert _host_syncs(lambda: akl.head_mask(p, sync_free=True)) == 0
    assert _host_syncs(lambda: akl.head_mask(p, sync_free=False)) == 1


def test_a_masked_vocabulary_entry_still_takes_the_exact_path():
    """-inf logits (a padded vocabulary) trip the deferred flag: the call is computed again on the masked path."""
    from fdistill.divergences import get_divergence

    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10, requires_grad=True), torch.randn(6, 10)
    student.data[:, -2:] = float("-inf")
    teacher[:, -2:] = float("-inf")
    values = get_divergence("kl", chunk_tokens=2).per_token(student, teacher)
    reference = get_divergence("kl").per_token(student[:, :-2], teacher[:, :-2])
    torch.testing.assert_close(values, reference)


def test_the_fused_head_is_found_by_probing_not_by_name(tmp_path):
    """Qwen2 (not in the verified list) has a plain linear head: the probe accepts it and the fused loss equals
    the loss on its logits; Granite scales its logits, which the probe catches."""
    from parallel_worker import WORDS, batch_of
    from transformers import GraniteConfig, GraniteForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from fdistill.divergences import get_divergence
    from fdistill.models import SeqCollator, build_word_tokenizer, supports_fused_head
    from fdistill.training.objectives import TokenLoss

    tokenizer = build_word_tokenizer(WORDS, tmp_path / "tok")
    shape = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)
    qwen, teacher = Qwen2ForCausalLM(Qwen2Config(**shape)), Qwen2ForCausalLM(Qwen2Config(**shape))
    granite = GraniteForCausalLM(GraniteConfig(**shape, logits_scaling=4.0))
    assert supports_fused_head(qwen) and not supports_fused_head(granite)
    batch = batch_of(SeqCollator(tokenizer, False, 16, 8), range(4))
    div = get_divergence("js")
    fused, _, _ = TokenLoss(teacher, fused=True).divergence(div, "both", qwen, batch, "token")
    plain, _, _ = TokenLoss(teacher, fused=False).divergence(div, "both", qwen, batch, "token")
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_and_attention_are_passed_to_the_models(tmp_path):
    cfg = PipelineConfig(gradient_checkpointing=True, attn_implementation="eager")
    parallel = Parallel(Accelerator(cpu=True), cfg)
    model = parallel.load(_bf16_checkpoint(tmp_path), "decoder_only", "trained")
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    assert (checkpointing if checkpointing is not None else model.is_gradient_checkpointing)
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("layout", ["shared", "separate"])
def test_several_nodes_must_share_the_cache_dir(tmp_path, layout):
    _torchrun(2, str(WORKER), "shared_fs", str(tmp_path), layout)
    outcomes = [(tmp_path / f"shared-{layout}-{rank}.txt").read_text() for rank in (0, 1)]
    if layout == "shared":
        assert outcomes == ["passed", "passed"] and not list((tmp_path / "cache").iterdir())
    else:  # every process refuses, naming the process that does not see the main one's file
        assert all("processes [1] do not see" in outcome and "shares" in outcome for outcome in outcomes), outcomes
