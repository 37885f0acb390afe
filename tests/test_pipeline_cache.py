"""The artifact cache builds each artifact once, never returns a partial or unpublished directory,
rejects a stale manifest, and keeps the processes of a distributed job in step; a sweep over
divergences reuses one teacher, pre-distilled student and set of teacher samples."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path

import pytest
from pipeline_cli import TINY_OVERRIDES, path_overrides, run_cli

from fdistill.pipeline.cache import MANIFEST, ArtifactCache, config_hash

SPEC = {"teacher": "tiny", "steps": 3, "nested": {"lr": 0.1}}


def _writing_build(log: Path, seconds: float = 0.0):
    """A build that records each call in `log` (outside the cache) and writes a payload."""
    def build(work_dir: Path) -> None:
        with log.open("a") as handle:
            handle.write(f"{work_dir}\n")
        time.sleep(seconds)
        (work_dir / "payload.txt").write_text("built")
    return build


def _build_in_subprocess(root: str, log: str, start: multiprocessing.synchronize.Barrier, results) -> None:
    start.wait()  # both processes ask for the artifact at the same moment
    artifact = ArtifactCache(root).get_or_build("teacher", SPEC, _writing_build(Path(log), seconds=1.0))
    results.put((str(artifact.path), (artifact.path / "payload.txt").read_text()))


def test_concurrent_processes_build_once_and_share_the_artifact(tmp_path):
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(2), context.Queue()
    log = tmp_path / "builds.log"
    workers = [context.Process(target=_build_in_subprocess, args=(str(tmp_path / "cache"), str(log), start, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    found = [results.get(timeout=5) for _ in workers]
    assert len(log.read_text().splitlines()) == 1, "the artifact was built more than once"
    final = tmp_path / "cache" / "teacher" / config_hash(SPEC)
    assert found == [(str(final), "built")] * 2


def test_a_partial_directory_is_resumed_and_never_returned(tmp_path):
    cache = ArtifactCache(tmp_path)
    partial = tmp_path / "teacher" / f"{config_hash(SPEC)}.partial"
    partial.mkdir(parents=True)
    (partial / "checkpoint.txt").write_text("step 2")  # left by a killed build
    assert cache.lookup("teacher", SPEC) is None

    seen: list[str] = []

    def build(work_dir: Path) -> None:
        assert work_dir == partial
        seen.append((work_dir / "checkpoint.txt").read_text())
        (work_dir / "payload.txt").write_text("built")

    artifact = cache.get_or_build("teacher", SPEC, build)
    assert seen == ["step 2"]  # the builder could resume from its checkpoint
    assert artifact.path == tmp_path / "teacher" / config_hash(SPEC) and not partial.exists()
    manifest = json.loads((artifact.path / MANIFEST).read_text())
    assert (manifest["key"], manifest["spec"]) == (config_hash(SPEC), SPEC)
    assert set(manifest["files"]) == {"checkpoint.txt", "payload.txt"}  # every file, with its checksum


def test_a_failed_build_publishes_nothing(tmp_path):
    cache = ArtifactCache(tmp_path)

    def failing(work_dir: Path) -> None:
        (work_dir / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        cache.get_or_build("teacher", SPEC, failing)
    assert cache.lookup("teacher", SPEC) is None
    assert not (tmp_path / "teacher" / config_hash(SPEC)).exists()


def test_a_directory_without_manifest_is_rebuilt_not_returned(tmp_path):
    cache = ArtifactCache(tmp_path)
    final = tmp_path / "teacher" / config_hash(SPEC)
    final.mkdir(parents=True)
    (final / "stale.txt").write_text("from an older layout")
    assert cache.lookup("teacher", SPEC) is None
    log = tmp_path / "builds.log"
    artifact = cache.get_or_build("teacher", SPEC, _writing_build(log))
    assert artifact.path == final and len(log.read_text().splitlines()) == 1
    assert sorted(path.name for path in final.iterdir()) == [MANIFEST, "payload.txt"]


def test_a_published_artifact_is_reused(tmp_path):
    log = tmp_path / "builds.log"
    first = ArtifactCache(tmp_path / "cache").get_or_build("teacher", SPEC, _writing_build(log))
    again = ArtifactCache(tmp_path / "cache").get_or_build("teacher", dict(reversed(SPEC.items())),
                                                           _writing_build(log))
    assert again.path == first.path and len(log.read_text().splitlines()) == 1


def test_a_manifest_for_another_spec_raises(tmp_path):
    cache = ArtifactCache(tmp_path)
    artifact = cache.get_or_build("teacher", SPEC, _writing_build(tmp_path / "builds.log"))
    (artifact.path / MANIFEST).write_text(json.dumps({"key": artifact.key, "spec": {**SPEC, "steps": 4}}))
    with pytest.raises(RuntimeError, match="does not match its key"):
        cache.lookup("teacher", SPEC)
    with pytest.raises(RuntimeError, match="does not match its key"):
        cache.get_or_build("teacher", SPEC, _writing_build(tmp_path / "builds.log"))


class ThreadProcess:
    """Stands in for one process of a 2-process `Accelerator`: a shared barrier, a rank."""

    def __init__(self, rank: int, barrier: threading.Barrier, arrived: threading.Event) -> None:
        self.is_main_process, self.barrier, self.arrived = rank == 0, barrier, arrived

    def wait_for_everyone(self) -> None:
        self.arrived.set()
        self.barrier.wait()


def test_processes_agree_when_another_job_publishes_in_between(tmp_path):
    """Rank 1 asks first; another job publishes the artifact; then rank 0 asks. Both must take the same
    path through the barriers (a rank that returns early would leave the other waiting forever)."""
    cache_root = tmp_path / "cache"
    barrier, arrived = threading.Barrier(2, timeout=10), threading.Event()
    log = tmp_path / "builds.log"
    outcome: dict[str, object] = {}

    def rank_one() -> None:
        try:
            outcome["rank1"] = ArtifactCache(cache_root).get_or_build(
                "teacher", SPEC, _writing_build(log), ThreadProcess(1, barrier, arrived)).path
        except threading.BrokenBarrierError as error:
            outcome["rank1"] = error

    worker = threading.Thread(target=rank_one)
    worker.start()
    assert arrived.wait(timeout=10)
    ArtifactCache(cache_root).get_or_build("teacher", SPEC, _writing_build(log))  # the other job
    try:
        outcome["rank0"] = ArtifactCache(cache_root).get_or_build(
            "teacher", SPEC, _writing_build(log), ThreadProcess(0, barrier, threading.Event())).path
    finally:
        worker.join(timeout=30)
    assert not isinstance(outcome["rank1"], Exception), "rank 1 was left waiting at a barrier"
    assert outcome["rank0"] == outcome["rank1"] == cache_root / "teacher" / config_hash(SPEC)
    assert len(log.read_text().splitlines()) == 1


@pytest.mark.slow
def test_runs_with_different_divergences_share_the_cached_artifacts(tmp_path):
    cache_dir = tmp_path / "cache"
    # kl and tvd both train on offline teacher samples; tvd also on student samples
    config = [*TINY_OVERRIDES, "pipeline.distill.max_steps=4", "pipeline.evaluate.enabled=false"]
    run_cli([*config, "divergence=kl", *path_overrides(tmp_path / "out", cache_dir)])
    second = run_cli([*config, "divergence=tvd", *path_overrides(tmp_path / "out", cache_dir)])

    assert len(list((tmp_path / "out").glob("runs/*/*/stages/distill.json"))) == 2
    output = second.stdout + second.stderr
    for stage_progress in ("teacher_sft:", "predistill:", "teacher sampling:"):
        assert stage_progress not in output, f"the second run redid a cached stage ({stage_progress})"
    for kind in ("teacher", "student_init", "predistill", "teacher_samples"):
        entries = sorted(path.name for path in (cache_dir / kind).iterdir() if path.suffix != ".lock")
        assert len(entries) == 1 and not entries[0].endswith(".partial"), f"{kind}: {entries}"
