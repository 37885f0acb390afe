"""Content-addressed, verified artifact cache shared by runs and sweeps.

An artifact (fine-tuned teacher, initialised or pre-distilled student, offline teacher samples) is
stored under ``<cache_dir>/<kind>/<key>`` where ``key`` hashes the spec that determines it: config
values and the *keys* of the artifacts it is built from (never their paths, so a moved cache keeps its
keys). It is built in ``<key>.partial`` (which may hold resumable checkpoints), then published by writing
``artifact.json`` and renaming the directory, all under a file lock: concurrent jobs of a multirun wait
for the one building it instead of building it twice, and a partial directory is never returned.

``artifact.json`` records the sha256 and size of every file and the content digest of every input
artifact. On every lookup the files are verified (sizes always; checksums unless ``verify=False``, for
huge checkpoints) and the inputs are compared with the current ones: a corrupt artifact is an
:class:`~fdistill.errors.ArtifactError` naming it and the fix; one built from inputs that have since been
rebuilt with other content is stale and is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fdistill.config import ARTIFACT_KINDS
from fdistill.errors import ArtifactError, ConfigError
from fdistill.files import (
    HASH_BLOCK,
    apply_umask,
    atomic_write_text,
    content_digest,
    directory_files,
    file_records,
    files_problem,
    write_json_atomic,
)
from fdistill.locks import held_lock, is_held, try_lock

log = logging.getLogger(__name__)

MANIFEST = "artifact.json"
#: the spec of a build in progress, written into ``<key>.partial`` first: what marks a partial dir as fdistill's
PARTIAL_SPEC = "spec.json"
KEY_PATTERN = re.compile(r"^[0-9a-f]{16}$")
#: https://bford.info/cachedir/ : backup tools skip the folder; `clean` requires it (or fdistill's kind folders)
CACHE_TAG = "CACHEDIR.TAG"
CACHE_TAG_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
                  "# This file is a cache directory tag created by fdistill (its artifact cache).\n")


def config_hash(spec: Any, length: int = 16) -> str:
    """Stable hash of a JSON-serialisable spec (key order does not matter)."""
    blob = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _artifact_files(directory: Path) -> list[Path]:
    return directory_files(directory, exclude=(MANIFEST,))


def checkpoint_fingerprint(name_or_path: str) -> dict[str, Any]:
    """Identity of a model that is not a cache artifact, for the keys built from it: a hub id as given; a
    local directory by its content (config files in full; weight files by size and the sha256 of their first
    and last MiB, so that multi-GB checkpoints are fingerprinted in milliseconds), not by where it lives."""
    path = Path(name_or_path)
    if not path.is_dir():
        return {"hub_id": name_or_path}
    entries = {}
    for file in _artifact_files(path):
        size = file.stat().st_size
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            digest.update(handle.read(HASH_BLOCK))
            if size > 2 * HASH_BLOCK:
                handle.seek(size - HASH_BLOCK)
                digest.update(handle.read(HASH_BLOCK))
        entries[file.relative_to(path).as_posix()] = [size, digest.hexdigest()]
    return {"local_checkpoint": config_hash(entries, length=32)}


@dataclass(frozen=True)
class Artifact:
    kind: str
    key: str
    path: Path
    spec: dict
    content: str  # content digest of the published files

    @property
    def identity(self) -> dict[str, str]:
        """What the specs of artifacts built from this one hash: kind and key, not the path."""
        return {"artifact": f"{self.kind}/{self.key}"}


class ArtifactCache:
    """Build-once, lock-guarded, verified directory cache keyed by config hashes.

    ``verify``: checksum every file on lookup (sizes are always checked). ``rebuild``: artifact kinds
    to rebuild even when a verified copy exists (the old copy is removed first).
    """

    def __init__(self, root: str | os.PathLike, verify: bool = True, rebuild: Iterable[str] = ()) -> None:
        self.root = Path(root)
        self.verify = verify
        self.rebuild = set(rebuild)
        self._rebuilt: set[tuple[str, str]] = set()
        #: seconds each artifact kind took to build in this process (stage timings of reports)
        self.build_seconds: dict[str, float] = {}

    def _paths(self, kind: str, key: str) -> tuple[Path, Path, Path]:
        base = self.root / kind
        return base / key, base / f"{key}.partial", base / f"{key}.lock"

    def _fix(self, kind: str, path: Path) -> str:
        return f"delete {path} (or re-run with pipeline.rebuild=[{kind}]) and it is rebuilt"

    def _check_files(self, kind: str, final: Path, manifest: dict, checksums: bool) -> None:
        problem = files_problem(final, manifest.get("files"), checksums, exclude=(MANIFEST,))
        if problem is not None:
            hint = (". pipeline.verify_artifacts=false skips the checksums (sizes are still checked)"
                    if "checksum" in problem else "")
            raise ArtifactError(f"artifact {final}: {problem}; {self._fix(kind, final)}{hint}")

    def lookup(self, kind: str, spec: dict, inputs: Sequence[Artifact] = (), checksums: bool | None = None
               ) -> Artifact | None:
        """The published, verified artifact for `spec`, or None when there is none or it is stale (built from
        inputs whose content has changed). A corrupt or mismatching one raises :class:`ArtifactError`.
        `checksums` (default: the cache's `verify`) hashes every file; sizes are always compared."""
        key = config_hash(spec)
        final, _, _ = self._paths(kind, key)
        manifest_path = final / MANIFEST
        if not manifest_path.is_file():
            return None
        stored = self._read_manifest(kind, final, required=())
        if stored.get("key") != key or stored.get("spec") != json.loads(json.dumps(spec, default=str)):
            raise ArtifactError(f"artifact {final} does not match its key (stale or hand-edited cache entry); "
                                f"{self._fix(kind, final)}")
        stored = self._read_manifest(kind, final)
        self._check_files(kind, final, stored, self.verify if checksums is None else checksums)
        expected = {f"{item.kind}/{item.key}": item.content for item in inputs}
        if stored.get("inputs", {}) != expected:
            log.warning("artifact %s was built from inputs whose content has changed since (rebuilt upstream "
                        "artifacts); rebuilding it", final)
            return None
        return Artifact(kind, key, final, spec, stored["content"])

    def _read_manifest(self, kind: str, final: Path, required: Sequence[str] = ("key", "spec", "files", "content")
                       ) -> dict:
        """``artifact.json`` of `final`, with the `required` fields; anything else is an ArtifactError."""
        try:
            stored = json.loads((final / MANIFEST).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            raise ArtifactError(f"artifact {final}: {MANIFEST} is not valid JSON; {self._fix(kind, final)}") from None
        if not isinstance(stored, dict):
            raise ArtifactError(f"artifact {final}: {MANIFEST} is not a JSON object; {self._fix(kind, final)}")
        missing = [name for name in required if name not in stored]
        if missing:
            raise ArtifactError(f"artifact {final}: {MANIFEST} lacks {missing} (damaged, hand-edited or made by an "
                                f"older fdistill); {self._fix(kind, final)}")
        return stored

    def get_or_build(self, kind: str, spec: dict, build: Callable[[Path], None], accelerator=None,
                     inputs: Sequence[Artifact] = ()) -> Artifact:
        """Return the artifact for `spec`, building it with `build(work_dir)` if needed.

        `build` writes into `work_dir` (``<key>.partial``), which survives a crash so the builder can
        resume from checkpoints it left there; on success the directory is published atomically with its
        manifest. With an `accelerate.Accelerator` of several processes, only the main process takes the
        file lock, verifies and publishes, while every process runs `build` (e.g. a DDP training stage).
        """
        key = config_hash(spec)
        final, partial, lock_path = self._paths(kind, key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tag_cache_root(self.root)
        except OSError as error:
            raise ArtifactError(f"cannot create the cache folder {final.parent} ({error}); set paths.cache_dir "
                                "(or FDISTILL_CACHE) to a writable directory") from None
        # No lookup before the lock: with several processes, one could find an artifact that another
        # job publishes a moment later while the others miss it, and they would no longer meet at the
        # same barriers. Under the main process's lock every process sees the same cache state.
        is_main = accelerator is None or accelerator.is_main_process
        barrier = accelerator.wait_for_everyone if accelerator is not None else (lambda: None)
        lock = held_lock(lock_path, f"the {kind} artifact {final}") if is_main else nullcontext()
        with lock:
            if is_main and kind in self.rebuild and (kind, key) not in self._rebuilt and final.exists():
                log.info("pipeline.rebuild names %s: removing %s to rebuild it", kind, final)
                shutil.rmtree(final)
            barrier()  # the main process holds the lock now: nobody else publishes this key meanwhile
            # every process decides alike (same files); only the main process hashes them (it alone may raise)
            found = self.lookup(kind, spec, inputs, checksums=self.verify and is_main)
            if found is not None and is_main:
                log.info("[%s] using the cached artifact %s (%s)", kind, final,
                         "checksums verified" if self.verify else "sizes verified")
            if found is None:
                if is_main:
                    if final.exists():  # no manifest, or stale: never used, rebuilt
                        shutil.rmtree(final)
                    self._report_orphans(final.parent, partial)
                    partial.mkdir(parents=True, exist_ok=True)
                    write_json_atomic(partial / PARTIAL_SPEC, {"key": key, "kind": kind, "spec": spec})
                    log.info("[%s] building %s", kind, final)
                started = time.perf_counter()
                barrier()
                build(partial)
                barrier()
                if is_main:
                    (partial / PARTIAL_SPEC).unlink(missing_ok=True)
                    apply_umask(partial)
                    files = file_records(partial, exclude=(MANIFEST,))
                    seconds = time.perf_counter() - started
                    write_json_atomic(partial / MANIFEST, {
                        "key": key, "kind": kind, "spec": spec, "files": files, "content": content_digest(files),
                        "inputs": {f"{item.kind}/{item.key}": item.content for item in inputs},
                        "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "build_seconds": round(seconds, 3)})
                    os.replace(partial, final)
                    self._rebuilt.add((kind, key))
                    self.build_seconds[kind] = seconds
                    log.info("[%s] published %s (%.1f s)", kind, final, seconds)
            barrier()
        return Artifact(kind, key, final, spec, self._read_manifest(kind, final)["content"])

    def _report_orphans(self, folder: Path, own_partial: Path) -> None:
        """Log unfinished builds of other keys whose builder is gone (their lock is free)."""
        orphans = [path for path in orphan_partials(folder) if path != own_partial]
        if orphans:
            size = sum(file.stat().st_size for path in orphans for file in directory_files(path, ()))
            log.info("%d unfinished build(s) of other configs in %s (%.1f MB) can resume if those configs run "
                     "again; `python -m fdistill.pipeline.cache clean %s` removes them", len(orphans), folder,
                     size / 1e6, self.root)


def tag_cache_root(root: Path) -> None:
    """Mark `root` as fdistill's cache (CACHEDIR.TAG), once."""
    if not (root / CACHE_TAG).is_file():
        atomic_write_text(root / CACHE_TAG, CACHE_TAG_TEXT)


def is_fdistill_partial(path: Path) -> bool:
    """`path` is ``<cache>/<kind>/<key>.partial`` as fdistill makes it: a real directory (not a symlink) named
    by a key, holding the spec.json of that key."""
    if path.is_symlink() or not path.is_dir() or not KEY_PATTERN.match(path.name.removesuffix(".partial")) \
            or not path.name.endswith(".partial"):
        return False
    spec = path / PARTIAL_SPEC
    if spec.is_symlink() or not spec.is_file():
        return False
    try:
        return json.loads(spec.read_text()).get("key") == path.name.removesuffix(".partial")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def orphan_partials(folder: Path) -> list[Path]:
    """fdistill's ``<key>.partial`` dirs directly in one kind's `folder` whose lock no live process holds
    (tested without creating lock files)."""
    if folder.is_symlink() or not folder.is_dir():
        return []
    found = []
    for entry in sorted(os.scandir(folder), key=lambda item: item.name):
        path = Path(entry.path)
        if entry.name.endswith(".partial") and is_fdistill_partial(path) and not is_held(path.with_suffix(".lock")):
            found.append(path)
    return found


def check_cache_root(root: Path) -> None:
    """`root` must be an fdistill artifact cache: an existing directory with fdistill's CACHEDIR.TAG, or (made
    before the tag existed) at least one of its kind folders."""
    if not root.exists():
        raise ConfigError(f"{root} does not exist; pass the artifact cache dir (paths.cache_dir, by default "
                          ".cache/fdistill in the directory the runs were started from)")
    if root.is_symlink() or not root.is_dir():
        raise ConfigError(f"{root} is not a directory (symlinks are not followed); pass the artifact cache dir itself")
    tag = root / CACHE_TAG
    tagged = tag.is_file() and not tag.is_symlink() and "fdistill" in tag.read_text(errors="replace")
    kinds = [kind for kind in ARTIFACT_KINDS if (root / kind).is_dir() and not (root / kind).is_symlink()]
    if not tagged and not kinds:
        raise ConfigError(f"{root} is not an fdistill artifact cache (no CACHEDIR.TAG written by fdistill and none "
                          f"of its folders {list(ARTIFACT_KINDS)}); nothing was touched. Pass the cache dir "
                          "(paths.cache_dir, by default .cache/fdistill)")


def clean_partials(root: Path, dry_run: bool = False) -> list[Path]:
    """Remove (or, dry run, list) the unfinished builds of dead builders in the cache `root`: only
    ``<root>/<kind>/<key>.partial`` dirs that fdistill made, each deleted while its lock is held (a builder
    starting meanwhile waits), never through a symlink. Returns them."""
    check_cache_root(root)
    removed = []
    for kind in ARTIFACT_KINDS:
        for partial in orphan_partials(root / kind):
            if dry_run:
                removed.append(partial)
                continue
            with try_lock(partial.with_suffix(".lock")) as free:
                if free and is_fdistill_partial(partial):  # still an orphan now that we hold its lock
                    shutil.rmtree(partial)
                    removed.append(partial)
    return removed


def write_stage_marker(run_dir: Path, stage: str, info: dict) -> None:
    """Mark a run-level stage finished: ``<run_dir>/stages/<stage>.json``, written atomically last."""
    write_json_atomic(run_dir / "stages" / f"{stage}.json", info)


def read_stage_marker(run_dir: Path, stage: str) -> dict | None:
    path = run_dir / "stages" / f"{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fdistill.pipeline.cache clean [--dry-run] CACHE_DIR``: remove the unfinished builds of dead
    builders (``<CACHE_DIR>/<kind>/<key>.partial``; their resumable checkpoints are lost). Nothing else is
    touched: published artifacts, lock files, anything that fdistill did not make."""
    import argparse

    from fdistill.cli import guarded

    parser = argparse.ArgumentParser(prog="python -m fdistill.pipeline.cache", description=main.__doc__)
    parser.add_argument("command", choices=["clean"])
    parser.add_argument("cache_dir")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    with guarded():
        found = clean_partials(Path(args.cache_dir), dry_run=args.dry_run)
        for partial in found:
            print(("would remove " if args.dry_run else "removed ") + str(partial))
        if not found:
            print(f"no unfinished builds of dead builders in {args.cache_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
