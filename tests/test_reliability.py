"""Nothing silently wrong: a diverging stage stops with a message and publishes nothing, a run dir refuses
results of another config, cache keys are complete and artifacts verified, late failures are caught up
front, fdistill's errors print as one message. Each test started as the reproduction of a defect."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from hydra import compose, initialize_config_dir
from pipeline_cli import PYTHON, REPO, cli_env

from fdistill.config import OptimConfig, PipelineConfig, TrainStageConfig, register_configs, validate_config
from fdistill.errors import ArtifactError, ConfigError, RunDirError, StorageError, TrainingDivergedError
from fdistill.models import build_word_tokenizer
from fdistill.parallel import Parallel
from fdistill.pipeline import run_pipeline
from fdistill.pipeline.cache import MANIFEST, ArtifactCache, checkpoint_fingerprint
from fdistill.pipeline.preflight import MIN_FREE_BYTES
from fdistill.pipeline.specs import StageSpecs
from fdistill.training.loop import CHECKPOINT, STATE_FILE, train

CONF_DIR = REPO / "conf"
TINY = [  # ++: the synthetic task's sizes, added harmlessly where another dataset is composed
    "++dataset.params.num_train=64", "++dataset.params.num_validation=8", "++dataset.params.num_test=8",
    "pipeline.teacher_sft.max_steps=4", "pipeline.teacher_sft.batch_size=8", "pipeline.teacher_sft.checkpoint_every=2",
    "pipeline.predistill.max_steps=2", "pipeline.predistill.batch_size=8",
    "pipeline.distill.max_steps=3", "pipeline.distill.batch_size=4", "pipeline.distill.log_every=1",
    "pipeline.teacher_sampling.batch_size=64", "pipeline.evaluate.batch_size=8", "pipeline.evaluate.analysis_limit=4",
    "pipeline.teacher_sampling.decoding.max_new_tokens=12", "pipeline.distill.student_sampling.max_new_tokens=12",
    "pipeline.evaluate.decoding.max_new_tokens=12", "divergence=kl",
]


def compose_config(root: Path, overrides: list[str], cache: Path | None = None):
    register_configs()
    paths = [f"paths.root={root}", f"paths.output_dir={root}/outputs", f"paths.cache_dir={cache or root / 'cache'}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*paths, *TINY, *overrides])


def run(root: Path, overrides: list[str], run_dir: Path | None = None, cache: Path | None = None) -> dict:
    return run_pipeline(compose_config(root, overrides, cache), run_dir or root / "run")


# ------------------------------------------------------------------ 1. non-finite losses stop the stage
def _regression(model, micro_step: int):
    generator = torch.Generator().manual_seed(micro_step)
    inputs, targets = torch.randn(8, 4, generator=generator), torch.randn(8, 1, generator=generator)
    return ((model(inputs) - targets) ** 2).mean(), {}


def _stage(lr: float, **settings) -> TrainStageConfig:
    return TrainStageConfig(max_steps=12, batch_size=1, checkpoint_every=4, log_every=2,
                            optim=OptimConfig(lr=lr, warmup_ratio=0.0, max_grad_norm=0.0), **settings)


def _train(tmp_path: Path, stage: TrainStageConfig, loss_fn=_regression) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    train(parallel=Parallel(Accelerator(cpu=True), PipelineConfig()), model=model, loss_fn=loss_fn, stage=stage,
          total_steps=12, work_dir=tmp_path, desc="distill")
    return tmp_path


def test_a_nan_loss_stops_the_stage_naming_stage_step_and_last_checkpoint(tmp_path):
    def nan_after_five(model, micro_step):
        loss, logs = _regression(model, micro_step)
        return (loss * float("nan") if micro_step >= 5 else loss), logs

    with pytest.raises(TrainingDivergedError) as caught:
        _train(tmp_path, _stage(0.01), nan_after_five)
    message = str(caught.value)
    assert "[distill] non-finite loss" in message and "at step 6/12" in message
    assert f"{tmp_path / CHECKPOINT} (step 4)" in message and "optim.lr=0.01" in message
    assert json.loads((tmp_path / CHECKPOINT / STATE_FILE).read_text())["step"] == 4  # the good one is kept


def test_skip_nonfinite_steps_skips_and_counts_them(tmp_path):
    def nan_on_three_steps(model, micro_step):
        loss, logs = _regression(model, micro_step)
        return (loss * float("nan") if micro_step in (2, 3, 7) else loss), logs

    _train(tmp_path, _stage(0.01, skip_nonfinite_steps=True), nan_on_three_steps)  # finite weights at the end
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))  # windows of 2 steps: [0, 1], [2, 3], ...
    assert [int(row["skipped_nonfinite"]) for row in rows] == [0, 2, 2, 3, 3, 3]


def test_a_diverging_loss_stops_the_stage(tmp_path):
    def exploding(model, micro_step):  # finite but 1000x larger every 4 steps (the lr=10 teacher: loss 114,442)
        loss, logs = _regression(model, micro_step)
        return loss * 1000.0 ** (micro_step // 4), logs

    with pytest.raises(TrainingDivergedError, match="more than loss_blowup_factor=100 times the first"):
        _train(tmp_path, _stage(0.01), exploding)
    _train(tmp_path / "off", _stage(0.01, loss_blowup_factor=None), exploding)  # documented opt-out


def test_gradient_norm_and_window_are_logged(tmp_path):
    _train(tmp_path, _stage(0.01))
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(row["window_steps"]) for row in rows] == [2] * 6
    assert all(float(row["grad_norm"]) > 0 for row in rows)


def test_a_huge_learning_rate_publishes_no_teacher_and_marks_nothing(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"\[teacher_sft\]"):
        run(tmp_path, ["pipeline.teacher_sft.optim.lr=1e4"])
    teachers = [path.name for path in (tmp_path / "cache" / "teacher").iterdir() if path.is_dir()]
    assert teachers and all(name.endswith(".partial") for name in teachers), teachers
    assert not (tmp_path / "run" / "stages" / "teacher_sft.json").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_diverging_distillation_is_not_marked_complete(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"\[distill\]"):
        run(tmp_path, ["pipeline.distill.optim.lr=1e4", "pipeline.distill.optim.max_grad_norm=0",
                       "pipeline.distill.max_steps=30"])
    assert not (tmp_path / "run" / "stages" / "distill.json").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


# ------------------------------------------------------------------ 2. run dirs are bound to their config
def test_a_run_dir_reused_with_another_divergence_refuses(tmp_path):
    first = run(tmp_path, [])
    config_before = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(RunDirError) as caught:
        run(tmp_path, ["divergence=rkl"])
    assert "divergence.name: 'kl' → 'rkl'" in str(caught.value)
    assert (tmp_path / "run" / "config.json").read_text() == config_before  # nothing rewritten
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"] == first


def test_archive_moves_the_old_results_and_runs_fresh(tmp_path):
    run(tmp_path, [])
    run(tmp_path, ["divergence=rkl", "pipeline.on_run_dir_conflict=archive"])
    archived = list((tmp_path / "run" / ".replaced").iterdir())
    assert len(archived) == 1 and json.loads((archived[0] / "config.json").read_text())["divergence"]["name"] == "kl"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["divergence"]["name"] == "rkl"
    assert json.loads((tmp_path / "run" / "stages" / "distill.json").read_text())["spec"]["divergence"]["name"] == "rkl"


def test_two_runs_in_one_run_dir_at_once_are_refused(tmp_path):
    from filelock import FileLock

    (tmp_path / "run").mkdir()
    with FileLock(str(tmp_path / "run" / ".fdistill.lock")), pytest.raises(RunDirError, match="another fdistill process"):
        run(tmp_path, [])


def test_a_changed_evaluation_setting_is_named(tmp_path):
    run(tmp_path, [])
    with pytest.raises(RunDirError, match="evaluate.analysis_limit: 4 → 3"):
        run(tmp_path, ["pipeline.evaluate.analysis_limit=3"])


# ------------------------------------------------------------------ 3. cache keys and verification
def _specs(root: Path, overrides: list[str]) -> StageSpecs:
    return StageSpecs(validate_config(compose_config(root, overrides)), frozenset({"teacher"}), "0" * 64)


def test_mixed_precision_is_part_of_the_trained_artifacts_keys(tmp_path):
    fp32, bf16 = _specs(tmp_path, []), _specs(tmp_path, ["pipeline.mixed_precision=bf16"])
    assert fp32.teacher() != bf16.teacher()
    teacher = fp32.teacher_identity()
    assert fp32.predistill({}, teacher) != bf16.predistill({}, teacher)
    assert fp32.run_level("1") != bf16.run_level("1")


def test_keys_hold_no_paths_so_a_moved_cache_keeps_them(tmp_path):
    here, moved = _specs(tmp_path / "a", []), _specs(tmp_path / "b", [])
    assert here.run_level("1") == moved.run_level("1")
    assert str(tmp_path) not in json.dumps(here.run_level("1"))


def test_a_local_checkpoint_is_keyed_by_content_not_location(tmp_path):
    build_word_tokenizer(["alpha", "beta"], tmp_path / "one")
    (tmp_path / "one").rename(tmp_path / "two")
    first = checkpoint_fingerprint(str(tmp_path / "two"))
    build_word_tokenizer(["alpha", "beta"], tmp_path / "three")
    assert checkpoint_fingerprint(str(tmp_path / "three")) == first
    build_word_tokenizer(["alpha", "gamma"], tmp_path / "four")
    assert checkpoint_fingerprint(str(tmp_path / "four")) != first


def _published(tmp_path: Path) -> tuple[ArtifactCache, Path]:
    cache = ArtifactCache(tmp_path)

    def build(work_dir: Path) -> None:
        (work_dir / "model").mkdir()
        (work_dir / "model" / "model.safetensors").write_bytes(bytes(range(256)) * 64)

    return cache, cache.get_or_build("teacher", {"a": 1}, build).path


def test_random_bytes_in_a_cached_file_are_detected(tmp_path):
    cache, path = _published(tmp_path)
    weights = path / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100:108] = b"\xff" * 8
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model/model.safetensors does not match its checksum.*rebuild=\[teacher\]"):
        cache.lookup("teacher", {"a": 1})
    assert ArtifactCache(tmp_path, verify=False).lookup("teacher", {"a": 1}) is not None  # documented opt-out


def test_a_truncated_cached_file_is_detected_even_without_checksums(tmp_path):
    _, path = _published(tmp_path)
    weights = path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="has 1000 bytes, 16384 when written"):
        ArtifactCache(tmp_path, verify=False).lookup("teacher", {"a": 1})


def test_rebuild_replaces_a_corrupted_artifact(tmp_path):
    cache, path = _published(tmp_path)
    (path / "model" / "model.safetensors").write_bytes(b"garbage")
    rebuilt = ArtifactCache(tmp_path, rebuild=["teacher"]).get_or_build(
        "teacher", {"a": 1}, lambda work_dir: (work_dir / "fresh.txt").write_text("new"))
    assert (rebuilt.path / "fresh.txt").is_file() and not (rebuilt.path / "model").exists()


def test_an_artifact_built_from_a_since_rebuilt_input_is_rebuilt(tmp_path):
    cache = ArtifactCache(tmp_path)
    teacher = cache.get_or_build("teacher", {"t": 1}, lambda d: (d / "w").write_text("first weights"))
    builds = []

    def student(work_dir: Path) -> None:
        builds.append(work_dir)
        (work_dir / "s").write_text("student")

    cache.get_or_build("student_init", {"from": teacher.identity}, student, inputs=[teacher])
    (teacher.path / "w").write_text("other weights")  # the teacher is rebuilt with other content
    (teacher.path / MANIFEST).unlink()
    teacher = cache.get_or_build("teacher", {"t": 1}, lambda d: (d / "w").write_text("other weights"))
    cache.get_or_build("student_init", {"from": teacher.identity}, student, inputs=[teacher])
    assert len(builds) == 2


def test_a_published_teacher_keeps_no_training_checkpoint(tmp_path):
    run(tmp_path, ["pipeline.evaluate.enabled=false", "pipeline.distill.enabled=false", "divergence=predistill"])
    teacher = next(path for path in (tmp_path / "cache" / "teacher").iterdir() if path.is_dir())
    assert (teacher / "model" / "config.json").is_file() and not (teacher / CHECKPOINT).exists()


# ------------------------------------------------------------------ 4. late failures caught up front
@pytest.fixture
def nothing_loads(monkeypatch):
    import fdistill.pipeline.runner as runner

    def forbidden(*args, **kwargs):
        raise AssertionError("a model or dataset was loaded before the config error")

    for name in ("load_teacher", "prepare_tiny_pair", "load_from_config"):
        monkeypatch.setattr(runner, name, forbidden)


@pytest.mark.parametrize(("overrides", "named"), [
    (["dataset=xsum"], ["256 positions", "dataset.max_source_length"]),
    (["pipeline.evaluate.batch_size=0"], ["pipeline.evaluate.batch_size"]),
    (["pipeline.evaluate.analysis_limit=-5"], ["pipeline.evaluate.analysis_limit", "-5"]),
    (["+pipeline.distill.max_step=10"], ["pipeline.distill.max_step", "did you mean pipeline.distill.max_steps"]),
    (["pipeline.distill.epochs=2"], ["pipeline.distill.max_steps=null"]),
    (["dataset.metrics=[bleu,bertscore]"], ["metric 'bertscore'", "roberta-large", "pipeline.evaluate.bertscore_encoder"]),
    (["dataset.metrics=[moverscore]"], ["metric 'moverscore'", "pipeline.evaluate.moverscore_encoder"]),
    (["pipeline.rebuild=[teachers]"], ["pipeline.rebuild", "teachers"]),
    (["seed=-1"], ["seed=-1", "[0, 2**31)"]),
    (["pipeline.artifact_seed=-1"], ["pipeline.artifact_seed=-1"]),
    (["pair.student.num_decoder_layers=7"], ["pair.student", "7 student layers from 4"]),
    (["pair.student.encoder_layers=[0,1,9]"], ["pair.student", "encoder_layers=[0, 1, 9]", "[0, 3]"]),
], ids=["positions", "eval-batch", "analysis-limit", "unknown-key", "epochs-and-steps", "bertscore-encoder",
        "moverscore-encoder", "rebuild-kind", "seed", "artifact-seed", "student-layer-count", "student-layers"])
def test_late_failures_fail_before_anything_loads(tmp_path, nothing_loads, overrides, named):
    with pytest.raises(ConfigError) as caught:
        run(tmp_path, overrides)
    for fragment in named:
        assert fragment in str(caught.value), (fragment, str(caught.value))


def test_an_output_dir_under_a_file_fails_up_front(tmp_path, nothing_loads):
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match="is a file, not a directory; set paths.output_dir"):
        run_pipeline(compose_config(tmp_path, [f"paths.output_dir={tmp_path}/file/out"]), tmp_path / "run")


def test_a_full_disk_fails_up_front(tmp_path, nothing_loads, monkeypatch):
    import shutil

    from fdistill.pipeline import preflight as preflight_module

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(preflight_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=MIN_FREE_BYTES // 2))
    with pytest.raises(StorageError, match="MiB free on its disk"):
        run(tmp_path, [])


def _teacher_checkpoint(tmp_path: Path) -> Path:
    """A tiny BART teacher saved with its own tokenizer (what a real checkpoint directory looks like)."""
    from fdistill.models import prepare_tiny_pair

    words = "the a of in to and is was with for on cat dog sat ran".split()
    pair = {"name": "tiny_bart", "architecture": "encoder_decoder",
            "teacher": {"build": {"model_type": "bart", "d_model": 16, "encoder_layers": 1, "decoder_layers": 1,
                                  "heads": 2, "ffn_dim": 16, "max_position_embeddings": 64}}}
    return prepare_tiny_pair(pair, [" ".join(words)], tmp_path / "tiny")


@pytest.mark.parametrize("words", [["alpha", "beta"], [f"w{i}" for i in range(40)]], ids=["smaller", "larger"])
def test_a_tokenizer_that_is_not_the_teachers_fails_before_training(tmp_path, monkeypatch, words):
    import fdistill.pipeline.runner as runner

    teacher = _teacher_checkpoint(tmp_path)
    build_word_tokenizer(words, tmp_path / "other")
    monkeypatch.setattr(runner, "load_teacher", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises((ConfigError, ValueError)) as caught:
        run(tmp_path, ["pair.teacher.build=null", f"pair.teacher.name_or_path={teacher}",
                       f"pair.tokenizer={tmp_path / 'other'}", "dataset.max_source_length=32",
                       "dataset.max_target_length=32"])
    assert "tokenizer" in str(caught.value) and str(teacher) in str(caught.value)


def test_a_pretrained_student_of_a_tiny_teacher_is_checked_against_the_built_tokenizer(tmp_path, monkeypatch):
    import fdistill.pipeline.runner as runner

    build_word_tokenizer(["alpha", "beta"], tmp_path / "student")
    monkeypatch.setattr(runner, "load_teacher", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match="tokenizers of 'teacher tokenizer' and 'student"):
        run(tmp_path, ["pair.student.init=from_pretrained", f"pair.student.name_or_path={tmp_path / 'student'}"])


# ------------------------------------------------------------------ 5. empty strings in metrics
def test_every_metric_scores_an_empty_prediction():
    from fdistill.evaluation import evaluate_predictions

    metrics = ["bleu", "bleu1", "bleu2", "ter", "chrf", "meteor", "rouge1", "rouge2", "rougeL", "bertscore",
               "moverscore", "self_bleu", "distinct_n"]
    values, _ = evaluate_predictions(["", "a dog"], [["the cat sat"], ["a dog ran"]], metrics,
                                     bertscore_encoder="all-MiniLM-L6-v2", moverscore_encoder="all-MiniLM-L6-v2")
    assert all(isinstance(value, float) for value in values.values()), values
    alone, _ = evaluate_predictions([""], [["the cat sat"]], ["bertscore"], bertscore_encoder="all-MiniLM-L6-v2")
    assert alone["bertscore"] == 0.0  # bert-score's definition for an empty candidate


def test_empty_references_are_dropped_with_a_warning(caplog):
    from fdistill.evaluation import evaluate_predictions

    with caplog.at_level(logging.WARNING):
        values, _ = evaluate_predictions([""], [["", "the cat"]], ["ter"])
    assert "empty references" in caplog.text and values["ter"] == 100.0  # not the false 0.0 of empty vs empty


# ------------------------------------------------------------------ 6. errors as one message
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PYTHON), "run.py", *args], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args", [["divergence.name=kullback"], ["pipeline.distill.lam=5", "--cfg", "job"],
                                  ["+pipeline.distill.max_step=3", "--cfg", "job"]])
def test_a_config_error_prints_the_message_alone_with_exit_code_2(tmp_path, args):
    result = _cli(*args, f"paths.output_dir={tmp_path}/out", f"paths.cache_dir={tmp_path}/cache")
    assert result.returncode == 2, result
    assert result.stderr.startswith("fdistill: error:"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "HYDRA_FULL_ERROR" not in result.stderr


def test_run_log_holds_our_lines_and_the_console_no_library_chatter(tmp_path):
    result = _cli(*TINY, f"paths.output_dir={tmp_path}/out", f"paths.cache_dir={tmp_path}/cache",
                  f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-3000:]
    log_text = (tmp_path / "run" / "run.log").read_text()
    assert "[teacher] published" in log_text and "fdistill results" in log_text
    assert "Removed shared tensor" not in log_text + result.stdout + result.stderr
    assert "accelerate" not in result.stdout and "Loading weights" not in result.stderr
    import yaml

    assert "divergence=kl" in yaml.safe_load((tmp_path / "run" / ".hydra" / "overrides.yaml").read_text())


# ==================================================================================================
# Part two: each test below started as one of the 17 reproductions of a second probe (cache clean, sweeps,
# checkpoints, content digests, late failures, train-now-evaluate-later, error messages, locks, file modes).
# ==================================================================================================
def _clean(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(PYTHON), "-m", "fdistill.pipeline.cache", "clean", *map(str, args)], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=120)


def _orphan(cache_root: Path, spec: dict) -> Path:
    """The unfinished build a killed builder leaves: ``<cache>/teacher/<key>.partial`` with its spec.json."""
    from fdistill.pipeline.cache import config_hash

    def killed(work_dir: Path) -> None:
        (work_dir / "checkpoint").mkdir()
        (work_dir / "checkpoint" / "weights").write_text("resumable")
        raise RuntimeError("the builder died")

    with pytest.raises(RuntimeError, match="the builder died"):
        ArtifactCache(cache_root).get_or_build("teacher", spec, killed)
    partial = cache_root / "teacher" / f"{config_hash(spec)}.partial"
    assert partial.is_dir()
    return partial


def _lock_files(root: Path) -> set[Path]:
    return {path for path in root.rglob("*.lock")}


# ------------------------------------------------------------------ 7. cache clean
def test_clean_removes_only_the_unfinished_builds_fdistill_made(tmp_path):
    cache = tmp_path / "cache"
    orphan = _orphan(cache, {"a": 1})
    published = ArtifactCache(cache).get_or_build("teacher", {"a": 2}, lambda d: (d / "w").write_text("w")).path
    users = cache / "teacher" / "movie.partial"  # a user's folder that happens to end in .partial
    users.mkdir()
    (users / "movie.mp4").write_text("film")
    no_spec = cache / "teacher" / "fedcba9876543210.partial"  # fdistill's name, but no spec of that key
    no_spec.mkdir()
    elsewhere = cache / "Downloads" / "0123456789abcdef.partial"  # not in a kind folder
    elsewhere.mkdir(parents=True)
    (elsewhere / "spec.json").write_text(json.dumps({"key": "0123456789abcdef"}))
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "spec.json").write_text(json.dumps({"key": "aaaaaaaaaaaaaaaa"}))
    link = cache / "teacher" / "aaaaaaaaaaaaaaaa.partial"
    link.symlink_to(precious)

    locks_before = _lock_files(tmp_path)
    dry = _clean("--dry-run", cache)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [f"would remove {orphan}"]
    assert _lock_files(tmp_path) == locks_before, "a dry run created lock files"
    assert orphan.is_dir()

    done = _clean(cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"removed {orphan}"]
    assert not orphan.exists()
    assert (published / "w").is_file() and (users / "movie.mp4").is_file() and no_spec.is_dir()
    assert (elsewhere / "spec.json").is_file() and link.is_symlink() and (precious / "spec.json").is_file()


@pytest.mark.parametrize("what", ["home", "missing", "file"])
def test_clean_refuses_what_is_not_an_fdistill_cache(tmp_path, what):
    home = tmp_path / "home"
    (home / "Downloads" / "movie.partial").mkdir(parents=True)
    (home / "teachers.partial").mkdir()
    target = {"home": home, "missing": tmp_path / "nowhere", "file": home / "notes.txt"}[what]
    if what == "file":
        target.write_text("x")
    result = _clean(target)
    assert result.returncode == 2, result
    assert result.stderr.startswith("fdistill: error:") and "Traceback" not in result.stderr
    assert {"home": "is not an fdistill artifact cache", "missing": "does not exist",
            "file": "is not a directory"}[what] in result.stderr
    assert (home / "Downloads" / "movie.partial").is_dir() and (home / "teachers.partial").is_dir()
    assert not _lock_files(tmp_path)


def test_clean_leaves_a_build_whose_builder_is_alive_and_deletes_under_the_lock(tmp_path, monkeypatch):
    import fdistill.pipeline.cache as cache_module
    from fdistill.locks import is_held

    alive, dead = _orphan(tmp_path, {"a": 1}), _orphan(tmp_path, {"a": 2})
    holder = subprocess.Popen([str(PYTHON), "-c", "import sys, time; from filelock import FileLock; "
                               "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(60)",
                               str(alive.with_suffix(".lock"))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        deleted_while_locked = []
        real_rmtree = cache_module.shutil.rmtree

        def rmtree(path, *args, **kwargs):  # records whether the partial's lock is held at the moment of deletion
            deleted_while_locked.append((Path(path), is_held(Path(path).with_suffix(".lock"))))
            return real_rmtree(path, *args, **kwargs)

        monkeypatch.setattr(cache_module.shutil, "rmtree", rmtree)
        assert cache_module.clean_partials(tmp_path) == [dead]
    finally:
        holder.kill()
        holder.wait()
    assert alive.is_dir() and not dead.exists()
    assert deleted_while_locked == [(dead, True)]


# ------------------------------------------------------------------ 8. a failing job does not stop a sweep
def test_a_failing_job_does_not_stop_the_sweep_and_is_reported_at_the_end(tmp_path):
    # the bad value second: the command line's precheck composes each sweep at its first value, so a bad
    # first value is refused before any job starts (the test below); this one fails as a job of its own
    result = _cli("-m", "pipeline.distill.regime=gkd", "pipeline.distill.lam=0.0,2.0", *TINY,
                  f"paths.output_dir={tmp_path}/out", f"paths.cache_dir={tmp_path}/cache", "sweep_name=s",
                  "pipeline.evaluate.analyses=[]")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "fdistill: 1 of 2 jobs of the sweep failed" in result.stderr
    assert "job 1 (" in result.stderr and "pipeline.distill.lam=2.0" in result.stderr and "[0, 1]" in result.stderr
    assert "Traceback" not in result.stderr
    finished = list((tmp_path / "out" / "multirun" / "s").glob("*/metrics.json"))
    assert len(finished) == 1
    assert json.loads((finished[0].parent / "config.json").read_text())["pipeline"]["distill"]["lam"] == 0.0


def test_a_bad_first_sweep_value_is_refused_before_any_job_starts(tmp_path):
    result = _cli("-m", "pipeline.distill.regime=gkd", "pipeline.distill.lam=2.0,0.0", *TINY,
                  f"paths.output_dir={tmp_path}/out", f"paths.cache_dir={tmp_path}/cache", "sweep_name=s")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "pipeline.distill.lam (GKD student-data fraction λ)=2.0 is invalid" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


# ------------------------------------------------------------------ 9. checkpoints are verified
def _garble(path: Path) -> None:
    """Same size, other bytes (what a bad disk or a partial overwrite leaves)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(255 - byte for byte in data[middle : middle + 16])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["optimizer.bin", "model.safetensors", "random_states_0.pkl", "trainer_state.json"])
def test_a_garbled_checkpoint_file_is_refused_naming_it(tmp_path, name):
    from fdistill.errors import CheckpointError

    _train(tmp_path, _stage(0.01))
    _garble(tmp_path / CHECKPOINT / name)
    with pytest.raises(CheckpointError) as caught:
        _train(tmp_path, _stage(0.01))
    assert f"{name} does not match its checksum" in str(caught.value)
    assert f"Delete {tmp_path / CHECKPOINT} to restart this stage" in str(caught.value)


def test_a_truncated_optimizer_state_is_refused_without_checksums_too(tmp_path):
    from fdistill.errors import CheckpointError

    _train(tmp_path, _stage(0.01))
    optimizer = tmp_path / CHECKPOINT / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    with pytest.raises(CheckpointError, match="optimizer.bin has 100 bytes"):
        train(parallel=Parallel(Accelerator(cpu=True), PipelineConfig()), model=model, loss_fn=_regression,
              stage=_stage(0.01), total_steps=12, work_dir=tmp_path, desc="distill", checksums=False)


def test_a_damaged_checkpoint_falls_back_to_the_complete_copy_of_a_crashed_swap(tmp_path, caplog):
    import shutil

    _train(tmp_path, _stage(0.01))
    shutil.copytree(tmp_path / CHECKPOINT, tmp_path / f"{CHECKPOINT}.old")  # a crash between the two renames
    _garble(tmp_path / CHECKPOINT / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="fdistill"):
        _train(tmp_path, _stage(0.01))
    assert "resuming from the other complete copy" in caplog.text and "checkpoint.old" in caplog.text


def test_an_unreadable_log_is_kept_aside_and_training_goes_on(tmp_path, caplog):
    _train(tmp_path, _stage(0.01))
    (tmp_path / "log.csv").write_bytes(b"step,loss\nnot-a-step,\xff\xfe\n")
    with caplog.at_level(logging.WARNING, logger="fdistill"):
        _train(tmp_path, _stage(0.01))
    assert "log.csv cannot be read" in caplog.text
    assert (tmp_path / "log.csv.unreadable").read_bytes().startswith(b"step,loss\nnot-a-step")


def test_a_missing_distilled_student_is_made_again_from_the_final_checkpoint(tmp_path, caplog):
    import shutil

    from fdistill.files import read_manifest

    run(tmp_path, [])
    student = tmp_path / "run" / "student"
    content = read_manifest(student)["content"]
    shutil.rmtree(student)
    with caplog.at_level(logging.INFO, logger="fdistill"):
        run(tmp_path, [])
    assert "the distilled student does not verify" in caplog.text and "resuming from step 3/3" in caplog.text
    assert read_manifest(student)["content"] == content  # the same weights as before


def test_a_garbled_distilled_student_is_never_evaluated(tmp_path, caplog):
    from fdistill.files import read_manifest

    run(tmp_path, ["pipeline.evaluate.enabled=false"])  # train now ...
    student = tmp_path / "run" / "student"
    content = read_manifest(student)["content"]
    _garble(student / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="fdistill"):
        run(tmp_path, [])  # ... evaluate later: the damage is found and repaired from the checkpoint first
    assert "model.safetensors does not match its checksum" in caplog.text
    assert read_manifest(student)["content"] == content
    assert (tmp_path / "run" / "metrics.json").is_file()


# ------------------------------------------------------------------ 10. content digests cover content only
def test_a_rebuilt_artifact_with_the_same_content_keeps_its_run_dirs_valid(tmp_path):
    import shutil

    run(tmp_path, ["divergence=tvd"])  # uses offline teacher samples
    samples = next(path for path in (tmp_path / "cache" / "teacher_samples").iterdir() if path.is_dir()
                   and not path.name.endswith(".partial"))
    content = json.loads((samples / MANIFEST).read_text())["content"]
    assert not (samples / "timing.json").exists()
    assert json.loads((samples / MANIFEST).read_text())["build_seconds"] > 0  # the build time lives here
    shutil.rmtree(samples)  # "delete it and it is rebuilt"
    run(tmp_path, ["divergence=tvd"])
    assert json.loads((samples / MANIFEST).read_text())["content"] == content


# ------------------------------------------------------------------ 11. train now, evaluate later
def test_train_now_evaluate_later_without_distilling_again(tmp_path, caplog):
    run(tmp_path, ["pipeline.evaluate.enabled=false"])
    assert not (tmp_path / "run" / "metrics.json").exists()
    with caplog.at_level(logging.INFO, logger="fdistill"):
        run(tmp_path, [])
    assert "[distill] already complete" in caplog.text and "distill: " not in caplog.text
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # and a later run with evaluation off leaves the finished evaluation's record bound to its results
    run(tmp_path, ["pipeline.evaluate.enabled=false"])
    record = json.loads((tmp_path / "run" / "stages" / "evaluate.json").read_text())
    assert not record.get("skipped") and "spec" in record
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics


# ------------------------------------------------------------------ 12. damaged records: one message, the fix
@pytest.mark.parametrize("record", ["stages/distill.json", "distill/spec.json"])
def test_a_garbled_stage_record_names_the_file_and_the_fix(tmp_path, record):
    run(tmp_path, [])
    (tmp_path / "run" / record).write_text('{"spec": {"divergence": ')
    with pytest.raises(RunDirError) as caught:
        run(tmp_path, [])
    assert str(tmp_path / "run" / record) in str(caught.value) and "delete it and re-run" in str(caught.value)


def test_an_artifact_manifest_without_its_content_key_is_an_artifact_error(tmp_path):
    cache, path = _published(tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["content"]
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"lacks \['content'\].*rebuild=\[teacher\]"):
        cache.lookup("teacher", {"a": 1})


@pytest.mark.parametrize("case", ["not-a-run", "not-evaluated"])
def test_the_evaluation_cli_refuses_a_dir_without_an_evaluation(tmp_path, case):
    if case == "not-evaluated":
        run(tmp_path, ["pipeline.evaluate.enabled=false"])
    else:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "notes.txt").write_text("x")
    result = subprocess.run([str(PYTHON), "-m", "fdistill.evaluation", "--run-dir", str(tmp_path / "run")], cwd=REPO,
                            env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert {"not-a-run": "is not an fdistill run dir",
            "not-evaluated": "has no finished evaluate stage"}[case] in result.stderr


def test_ctrl_c_prints_where_the_run_stopped_and_the_rerun_resumes(tmp_path):
    import signal
    import time

    from pipeline_cli import checkpoint_step

    args = [*TINY, "pipeline.distill.max_steps=400", "pipeline.distill.checkpoint_every=5",
            "pipeline.evaluate.analyses=[]", f"paths.output_dir={tmp_path}/out", f"paths.cache_dir={tmp_path}/cache",
            f"hydra.run.dir={tmp_path}/run"]
    process = subprocess.Popen([str(PYTHON), "run.py", *args], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while checkpoint_step(tmp_path, "run/distill") < 10:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("fdistill: interrupted during distill at step ") and "/400 (last checkpoint: step" in last
    assert "re-run the same command to resume" in last


@pytest.mark.skipif(not Path("/bin/mount").exists() or __import__("os").geteuid() != 0,
                    reason="a full disk is simulated with a small tmpfs, which needs root (mount)")
def test_a_full_disk_mid_run_is_one_message_with_exit_code_2(tmp_path, monkeypatch, capsys):
    import fdistill.pipeline.preflight as preflight_module
    from fdistill.cli import guarded

    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        monkeypatch.setattr(preflight_module, "MIN_FREE_BYTES", 0)  # the up-front check would refuse this disk
        with pytest.raises(SystemExit) as stopped, guarded():
            run(tmp_path, [f"paths.output_dir={full}"], run_dir=full / "run")
        assert stopped.value.code == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
        assert message.startswith("fdistill: error: ") and "lack of disk space" in message, message
        assert "re-run the same command to resume" in message
    finally:
        subprocess.run(["umount", str(full)], check=False)


# ------------------------------------------------------------------ 13. a waiting process says for whom it waits
def test_a_process_waiting_for_a_lock_names_its_holder(tmp_path, caplog):
    from fdistill.locks import held_lock

    lock = tmp_path / "teacher" / "abc.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen([str(PYTHON), "-c", "import sys, time; from pathlib import Path; "
                               "from fdistill.locks import held_lock\n"
                               "with held_lock(Path(sys.argv[1]), 'x'):\n"
                               "    print('held', flush=True); time.sleep(2.5)", str(lock)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with caplog.at_level(logging.INFO, logger="fdistill"), held_lock(lock, "the teacher artifact", report_every=0.5):
        pass
    holder.wait()
    assert f"waiting for the lock on the teacher artifact, held by pid {holder.pid}" in caplog.text
    assert "still waiting for the lock on the teacher artifact" in caplog.text
    assert "got the lock on the teacher artifact" in caplog.text


# ------------------------------------------------------------------ 14. results respect the umask
def test_results_and_artifacts_are_readable_under_the_umask(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        run(tmp_path, [])
    finally:
        os.umask(previous)
    checked = 0
    for path in [*(tmp_path / "run").rglob("*"), *(tmp_path / "cache").rglob("*")]:
        if path.is_symlink() or path.suffix == ".lock":
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = 0o755 if path.is_dir() else 0o644
        assert mode == expected, f"{path} has mode {oct(mode)}, expected {oct(expected)}"
        checked += 1
    names = {path.name for path in (tmp_path / "run").rglob("*")}
    assert {"metrics.json", "predictions.jsonl", "evaluate.json", "config.json", "manifest.json"} <= names
    assert checked > 30
