"""A bad config fails fast with a message naming the bad key or value, before any dataset or model is
loaded: the loaders are replaced by functions that fail the test if they are called."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

import fdistill.models
import fdistill.pipeline.runner
from fdistill.config import register_configs
from fdistill.models import build_word_tokenizer
from fdistill.pipeline import run_pipeline

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class LoadedSomething(AssertionError):
    """Raised when the pipeline reaches a loader: the config was not rejected up front."""


@pytest.fixture
def nothing_loads(monkeypatch):
    def forbidden(what: str):
        def loader(*args, **kwargs):
            raise LoadedSomething(f"{what} was called before the config error was raised")
        return loader

    monkeypatch.setattr(fdistill.pipeline.runner, "load_teacher", forbidden("load_teacher"))
    monkeypatch.setattr(fdistill.pipeline.runner, "prepare_tiny_pair", forbidden("prepare_tiny_pair"))
    monkeypatch.setattr(fdistill.pipeline.runner, "load_from_config", forbidden("the dataset loader"))


def compose_config(tmp_path: Path, overrides: list[str]):
    register_configs()
    paths = [f"paths.root={tmp_path}", f"paths.output_dir={tmp_path}/outputs", f"paths.cache_dir={tmp_path}/cache"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*paths, *overrides])


def run_error(tmp_path: Path, overrides: list[str]) -> str:
    """The message of the error `run_pipeline` raises for `overrides` (failing if a loader ran first)."""
    cfg = compose_config(tmp_path, overrides)
    with pytest.raises(ValueError) as caught:  # ConfigError and the schema's range errors are ValueErrors
        run_pipeline(cfg, tmp_path / "run")
    assert not isinstance(caught.value, LoadedSomething), caught.value
    return str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["divergence.name=kullback"], ["'kullback'", "divergence=<name>", "tvd"]),
        (["dataset.name=imagenet"], ["'imagenet'", "dataset=<name>", "synthetic"]),
        (["dataset.metrics=[bleu,perplexity_of_doom]"], ["perplexity_of_doom", "dataset.metrics"]),
        (["pipeline.distill.regime=gkd", "pipeline.distill.lam=1.5"], ["pipeline.distill.lam", "1.5", "[0, 1]"]),
        (["divergence=jsd", "divergence.params.beta=1.5"], ["divergence.params", "beta=1.5", "[0.0, 1.0]"]),
        (["divergence=akl", "divergence.params.mu=-0.1"], ["divergence.params", "mu=-0.1", "[0.0, 1.0]"]),
        (["divergence=jsd", "+divergence.params.gamma=2"], ["divergence.params", "gamma"]),
        (["divergence.temperature=0"], ["divergence.temperature", "0"]),
        (["pipeline.distill.fixed_data=model_outputs"], ["pipeline.distill.fixed_data", "model_outputs"]),
        (["pipeline.teacher_sampling.enabled=false"],
         ["pipeline.teacher_sampling.enabled=false", "pipeline.distill.teacher_sampling=online"]),
        (["pipeline.distill.batch_size=0"], ["pipeline.distill.batch_size", "0"]),
        (["pipeline.evaluate.analyses=[risks,vibes]"], ["pipeline.evaluate.analyses", "vibes"]),
        (["pair.teacher.finetuned=true"], ["pair.teacher.build", "finetuned"]),
        (["divergence=predistill", "pipeline.distill.enabled=true"], ["pipeline.distill.enabled=false"]),
    ],
    ids=["unknown-divergence", "unknown-dataset", "unknown-metric", "lambda-out-of-range", "jsd-beta-out-of-range",
         "akl-mu-out-of-range", "unknown-divergence-param", "zero-temperature", "unknown-fixed-data",
         "offline-samples-without-sampling-stage", "zero-batch", "unknown-analysis", "finetuned-tiny-teacher",
         "predistill-baseline-with-distill"],
)
def test_bad_config_fails_before_loading_anything(tmp_path, nothing_loads, overrides, named):
    message = run_error(tmp_path, overrides)
    for fragment in named:
        assert fragment in message, f"{fragment!r} not in the error message: {message}"


@pytest.mark.parametrize("group", ["divergence", "dataset"])
def test_unknown_config_group_option_is_rejected_at_compose_time(tmp_path, group):
    with pytest.raises(MissingConfigException, match=f"{group}/nonexistent"):
        compose_config(tmp_path, [f"{group}=nonexistent"])


def test_the_default_config_passes_the_checks_and_reaches_the_loaders(tmp_path, nothing_loads):
    """Control for the tests above: without a bad value the pipeline gets as far as loading data."""
    with pytest.raises(LoadedSomething, match="dataset loader"):
        run_pipeline(compose_config(tmp_path, ["divergence=kl"]), tmp_path / "run")


def _separate_student_overrides(tmp_path: Path, student_words: list[str]) -> list[str]:
    """A teacher checkpoint with its own tokenizer and a student loaded from another directory."""
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    build_word_tokenizer(["alpha", "beta", "gamma"], teacher_dir)
    build_word_tokenizer(student_words, student_dir)
    return ["pair.teacher.build=null", f"pair.teacher.name_or_path={teacher_dir}", f"pair.tokenizer={teacher_dir}",
            "pair.student.init=from_pretrained", f"pair.student.name_or_path={student_dir}", "divergence=kl"]


def test_student_with_another_tokenizer_is_rejected_before_loading(tmp_path, nothing_loads):
    message = run_error(tmp_path, _separate_student_overrides(tmp_path, ["alpha", "beta", "delta"]))
    assert f"teacher {tmp_path / 'teacher'}" in message and f"student {tmp_path / 'student'}" in message
    assert "'delta'" in message and "'gamma'" in message


def test_student_with_the_teachers_tokenizer_passes_the_tokenizer_check(tmp_path, nothing_loads):
    with pytest.raises(LoadedSomething):
        run_pipeline(compose_config(tmp_path, _separate_student_overrides(tmp_path, ["alpha", "beta", "gamma"])),
                     tmp_path / "run")
