"""Files shared by every package: atomic writes (a temp file in the target folder, then os.replace, so a
reader or a resumed run never sees a half-written file) that respect the umask, and the one manifest
mechanism that records and verifies the files of a directory (cache artifacts, training checkpoints, a run's
distilled student)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fdistill.errors import CorruptFileError

#: inside a run dir, where `pipeline.on_run_dir_conflict=archive` moves results of another config (written by
#: fdistill.pipeline.rundir, skipped by fdistill.reporting)
REPLACED_DIR = ".replaced"
#: the manifest of a checkpoint or a distilled student: ``{"files": {relative path: {size, sha256}}, ...}``
MANIFEST_FILE = "manifest.json"
HASH_BLOCK = 1 << 20


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows, else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode an ordinary ``open(path, "w")`` would give: 0o666 less the umask (``tempfile`` gives 0o600,
    which a group sharing a results dir or a cache could not read)."""
    return 0o666 & ~current_umask()


def apply_umask(directory: Path) -> None:
    """Give every folder and file below `directory` the mode the umask allows (executable bits kept): libraries
    write some files 0600 (safetensors, tempfile) and folders 0700 (mkdtemp), which a group sharing a cache or a
    results dir could not read. Symlinks are not followed."""
    mask = current_umask()
    for root, _, files in os.walk(directory):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, (0o666 | (os.stat(path).st_mode & 0o111)) & ~mask)


def atomic_temp_file(target: Path) -> tuple[int, str]:
    """A temp file beside `target` (same filesystem, so os.replace is atomic) with the umask's mode."""
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.fchmod(handle, default_file_mode())
    return handle, temp_name


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = atomic_temp_file(target)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """JSON (indented, sorted keys) written atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_json_file(path: str | os.PathLike, what: str, fix: str) -> Any:
    """JSON of `path`; an unreadable or garbled file raises :class:`CorruptFileError` naming it and `fix`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CorruptFileError(f"{what} {path} cannot be read ({type(error).__name__}: {error}); {fix}") from None


# ------------------------------------------------------------------------------------------- manifests
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def directory_files(directory: Path, exclude: tuple[str, ...] = (MANIFEST_FILE,)) -> list[Path]:
    """Regular files below `directory` (symlinks not followed), the top-level names in `exclude` left out."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file() and not path.is_symlink() and not (Path(root) == directory and name in exclude):
                found.append(path)
    return sorted(found)


def file_records(directory: Path, checksums: bool = True,
                 exclude: tuple[str, ...] = (MANIFEST_FILE,)) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file below `directory` (sha256 None without checksums)."""
    return {path.relative_to(directory).as_posix(): {"sha256": file_sha256(path) if checksums else None,
                                                     "size": path.stat().st_size}
            for path in directory_files(directory, exclude)}


def content_digest(files: dict[str, dict[str, Any]]) -> str:
    """One digest of a directory's content: its file names and checksums (sizes where no checksum exists)."""
    blob = json.dumps({name: record["sha256"] or record["size"] for name, record in files.items()},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def files_problem(directory: Path, recorded: Any, checksums: bool = True,
                  exclude: tuple[str, ...] = (MANIFEST_FILE,)) -> str | None:
    """What is wrong with `directory` against its recorded files (None: nothing): a missing, extra, resized or
    (with `checksums`, where a checksum was recorded) changed file, named."""
    if not isinstance(recorded, dict) or not all(isinstance(item, dict) and "size" in item
                                                 for item in recorded.values()):
        return "it records no file list (made by an older fdistill, or the record is damaged)"
    present = {path.relative_to(directory).as_posix(): path for path in directory_files(directory, exclude)}
    missing = sorted(set(recorded) - set(present))
    extra = sorted(set(present) - set(recorded))
    if missing or extra:
        return f"it does not hold the files it was written with (missing {missing[:5]}, unexpected {extra[:5]})"
    for name, record in recorded.items():
        size = present[name].stat().st_size
        if size != record["size"]:
            return f"{name} has {size} bytes, {record['size']} when written (truncated or replaced)"
        if checksums and record.get("sha256") and file_sha256(present[name]) != record["sha256"]:
            return f"{name} does not match its checksum (corrupted since it was written)"
    return None


def write_manifest(directory: Path, checksums: bool = True, **extra: Any) -> dict[str, Any]:
    """Record the files of `directory` in ``<directory>/manifest.json`` (written last, atomically), after giving
    them the umask's modes."""
    apply_umask(directory)
    files = file_records(directory, checksums)
    manifest = {"files": files, "content": content_digest(files), **extra}
    write_json_atomic(directory / MANIFEST_FILE, manifest)
    return manifest


def manifest_problem(directory: Path, checksums: bool = True) -> str | None:
    """What is wrong with `directory` against its ``manifest.json`` (None: it verifies)."""
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        return f"{directory} does not exist"
    if not path.is_file():
        return f"{path} is missing (the write was interrupted, or it was made by an older fdistill)"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return f"{path} cannot be read ({type(error).__name__})"
    return files_problem(directory, manifest.get("files") if isinstance(manifest, dict) else None, checksums)


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))

