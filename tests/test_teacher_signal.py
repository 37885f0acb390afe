"""The teacher outside the training process: the cached sparse signal (a `teacher_signal` artifact) and a served
teacher (`python -m fdistill.serve_teacher`, a real HTTP server started on 127.0.0.1 here)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_cli import PYTHON, REPO, cli_env
from test_reliability import run

from fdistill.errors import ConfigError

LLAMA = ["pair=tiny_llama", "divergence=kl", "pipeline.evaluate.analyses=[]"]


def _artifact(cache: Path, kind: str) -> Path:
    found = [path for path in (cache / kind).iterdir() if path.is_dir() and not path.name.endswith(".partial")]
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------ the cached signal
@pytest.mark.parametrize("method", ["topk", "sampled"])
def test_the_stored_signal_is_the_teachers_own_log_probabilities(tmp_path, method):
    """Round trip: the signal read back from the artifact equals the teacher's log-softmax on the same sequences at
    the same ids (float16 on disk: within 1e-3 absolute; the tail's log-mass float32) and the sampled ids are
    reproducible."""
    from fdistill.models import SeqCollator, load_teacher, load_tokenizer
    from fdistill.sampling import load_teacher_samples
    from fdistill.sampling.signal import SignalStore

    run(tmp_path, [*LLAMA, "pipeline.distill.teacher_signal=offline", f"pipeline.teacher_signal.method={method}",
                   "pipeline.teacher_signal.k=12", "pipeline.evaluate.enabled=false"])
    cache = tmp_path / "cache"
    teacher_dir = _artifact(cache, "teacher") / "model"
    teacher, tokenizer = load_teacher(teacher_dir, "decoder_only"), load_tokenizer(teacher_dir)
    samples = load_teacher_samples(_artifact(cache, "teacher_samples"))
    store = SignalStore(_artifact(cache, "teacher_signal"), method, 12)
    assert len(store) == len(samples)
    rows = [0, 3, 5]
    signal = store.signal("samples", rows)
    collator = SeqCollator(tokenizer, False, 256, 128)
    from test_reliability import compose_config  # the run's own data

    config = compose_config(tmp_path, LLAMA)
    from fdistill.data import load_from_config

    examples = load_from_config(dict(config.dataset), "train")
    sources = collator.encode_sources([examples[samples[row]["example_index"]].source for row in rows])
    batch = collator.from_ids(sources, [samples[row]["target_ids"] for row in rows])
    from fdistill.models import token_logits

    with torch.no_grad():
        log_p = torch.log_softmax(token_logits(teacher, batch).float(), -1)[batch["labels"] != -100]
    assert signal.ids.shape == (log_p.shape[0], 12)
    torch.testing.assert_close(signal.logp, log_p.gather(-1, signal.ids), atol=1e-2, rtol=1e-3)
    if method == "topk":
        assert torch.equal(signal.ids.sort(-1).values, log_p.topk(12, -1).indices.sort(-1).values)
        rest = torch.logsumexp(log_p.scatter(-1, signal.ids, float("-inf")), -1)
        torch.testing.assert_close(signal.log_tail, rest, atol=1e-5, rtol=1e-5)
        assert 1.0 <= store.bytes_per_token(_artifact(cache, "teacher_signal")) / (6 * 12 + 4) < 1.5  # + list offsets
    else:
        assert torch.isfinite(signal.log_proposal).all()


def test_distillation_with_the_offline_signal_never_loads_the_teacher(tmp_path, monkeypatch, caplog):
    from fdistill.parallel import Parallel
    from fdistill.pipeline.runner import Pipeline

    inside, loaded = [], []
    stage_distill, load = Pipeline.stage_distill, Parallel.load

    def distill(self, *args, **kwargs):
        inside.append(True)
        try:
            return stage_distill(self, *args, **kwargs)
        finally:
            inside.pop()

    def recording(self, path, architecture, role):
        if inside:
            loaded.append((Path(path).parent.parent.name, role))  # <cache>/<kind>/<key>/model
        return load(self, path, architecture, role)

    monkeypatch.setattr(Pipeline, "stage_distill", distill)
    monkeypatch.setattr(Parallel, "load", recording)
    with caplog.at_level(logging.INFO, logger="fdistill"):
        run(tmp_path, [*LLAMA, "pipeline.distill.teacher_signal=offline", "pipeline.evaluate.enabled=false"])
    assert loaded == [("predistill", "trained")]  # the student alone
    assert "[distill] the teacher is not loaded: the cached signal covers every teacher term" in caplog.text
    # and with the dense teacher the same stage does load it (the spy sees loads)
    loaded.clear()
    run(tmp_path, [*LLAMA, "pipeline.evaluate.enabled=false"], run_dir=tmp_path / "dense")
    assert loaded == [("teacher", "frozen"), ("predistill", "trained")]


def test_a_divergence_that_cannot_use_the_signal_fails_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError, match="tail=bucket"):
        run(tmp_path, [*LLAMA, "divergence=rkl", "pipeline.distill.regime=gkd", "pipeline.distill.lam=0.0",
                       "pipeline.distill.teacher_signal=offline", "pipeline.teacher_signal.tail=renormalize"])
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("teacher/*/model"))


# ------------------------------------------------------------------ the served teacher
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`python -m fdistill.serve_teacher` on 127.0.0.1, stopped when the block ends."""

    def __init__(self, model_dir: Path) -> None:
        self.port = _free_port()
        self.process = subprocess.Popen([str(PYTHON), "-m", "fdistill.serve_teacher", "--model", str(model_dir),
                                         "--port", str(self.port)], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        assert "fdistill teacher server" in line, (line, self.process.stderr.read() if self.process.poll() else "")
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait()


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "student" / "model.safetensors")


def test_distillation_with_a_served_teacher_equals_the_in_process_teacher(tmp_path):
    """The whole vocabulary as the served top-k (k = V, tail bucket): the served signal is the exact distribution,
    so a few KL steps equal the in-process teacher's to float tolerance."""
    run(tmp_path, [*LLAMA, "pipeline.evaluate.enabled=false"], run_dir=tmp_path / "dense")
    with Server(_artifact(tmp_path / "cache", "teacher") / "model") as server:
        run(tmp_path, [*LLAMA, "pipeline.evaluate.enabled=false", "pipeline.distill.teacher_signal=served",
                       f"pipeline.teacher_server.url={server.url}", "pipeline.teacher_signal.k=100000"],
            run_dir=tmp_path / "served")
    dense, served = _weights(tmp_path / "dense"), _weights(tmp_path / "served")
    assert max(float((dense[key] - served[key]).abs().max()) for key in dense) < 1e-4
    record = json.loads((tmp_path / "served" / "stages" / "distill.json").read_text())
    assert record["spec"]["distill"]["teacher_signal"] == "served"


def test_a_server_that_is_down_slow_or_serves_another_model_is_a_clear_error_before_the_first_step(tmp_path):
    from fdistill.models import build_word_tokenizer, load_tokenizer
    from fdistill.sampling.served import ServedTeacher

    run(tmp_path, [*LLAMA, "pipeline.evaluate.enabled=false", "pipeline.distill.enabled=false",
                   "divergence=predistill"])
    teacher_dir = _artifact(tmp_path / "cache", "teacher") / "model"
    tokenizer = load_tokenizer(teacher_dir)
    down = ServedTeacher(f"http://127.0.0.1:{_free_port()}", tokenizer, 8, timeout_seconds=2, retries=2)
    with pytest.raises(ConfigError, match="failed 2 time"):
        down.check()
    with socket.socket() as silent:  # a listener that accepts and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        slow = ServedTeacher(f"http://127.0.0.1:{silent.getsockname()[1]}", tokenizer, 8, timeout_seconds=1, retries=1)
        with pytest.raises(ConfigError, match="no answer within 1 s"):
            slow.check()
    other = tmp_path / "other"
    other_tokenizer = build_word_tokenizer([f"x{index}" for index in range(30)], other)
    from parallel_worker import tiny_llama

    tiny_llama(other_tokenizer, 0).save_pretrained(other)
    with Server(other) as wrong:
        with pytest.raises(ConfigError, match="tokenizer differs from the pair's"):
            ServedTeacher(wrong.url, tokenizer, 8).check()
    with pytest.raises(ConfigError, match="failed"):  # down: the pipeline refuses before the first step
        run(tmp_path, [*LLAMA, "pipeline.evaluate.enabled=false", "pipeline.distill.teacher_signal=served",
                       f"pipeline.teacher_server.url=http://127.0.0.1:{_free_port()}",
                       "pipeline.teacher_server.retries=1", "pipeline.teacher_server.timeout_seconds=2"],
            run_dir=tmp_path / "down")
    assert not (tmp_path / "down" / "distill" / "log.csv").exists()


def test_the_server_answers_like_vllm(tmp_path):
    """The served prompt log-probabilities are the model's: top-k by rank, the prompt's own token added."""
    from fdistill.serve_teacher import TeacherServer

    run(tmp_path, [*LLAMA, "pipeline.evaluate.enabled=false", "pipeline.distill.enabled=false",
                   "divergence=predistill"])
    server = TeacherServer(str(_artifact(tmp_path / "cache", "teacher") / "model"), max_logprobs=5)
    answer = server.completions({"prompt": [[3, 5, 7, 9], [4, 6]], "prompt_logprobs": 3, "max_tokens": 1})
    first = answer["choices"][0]["prompt_logprobs"]
    assert first[0] is None and len(first) == 4
    with torch.no_grad():
        log_p = torch.log_softmax(server.model(input_ids=torch.tensor([[3, 5, 7, 9]])).logits[0].float(), -1)
    top = log_p[0].topk(3)
    entry = first[1]
    assert [int(token) for token, value in sorted(entry.items(), key=lambda item: item[1]["rank"])][:3] == \
        top.indices.tolist()
    assert "5" in entry and entry["5"]["logprob"] == pytest.approx(float(log_p[0, 5]), abs=1e-5)
    with pytest.raises(ValueError, match="greater than max allowed: 5"):
        server.completions({"prompt": [3, 5], "prompt_logprobs": 9})
    assert np.isfinite(entry["5"]["logprob"]) and sys.version_info >= (3, 10)
