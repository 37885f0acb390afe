"""What produced a table: hardware (from the runs' metadata and of this machine) and git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

from fdistill.reporting.collect import JobResult

HARDWARE_METADATA_KEYS = ("hardware", "device", "gpu", "gpu_name", "cpu", "cpu_model", "torch_threads")
COMMIT_METADATA_KEYS = ("git_commit", "commit")


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else :func:`platform.processor`."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """Names of visible CUDA devices (empty without CUDA or torch)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def machine_description() -> str:
    """``"CPU: <model> (<n> cores); GPU: <names or none>"`` for the machine running this code."""
    gpus = gpu_names()
    return f"CPU: {cpu_model()} ({os.cpu_count()} cores); GPU: {', '.join(gpus) if gpus else 'none'}"


#: generated outputs: their changes do not make the code behind a report differ from the commit (a target
#: that writes several tables would otherwise mark every table after its first as dirty)
OUTPUT_DIRS = ("results",)


def git_commit(repo_dir: str | Path = ".") -> str:
    """``git rev-parse HEAD`` (suffixed ``-dirty`` with uncommitted changes to tracked files outside
    :data:`OUTPUT_DIRS`), or ``"unknown"`` outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        top = git("rev-parse", "--show-toplevel")
        excluded = [f":(exclude){Path(top) / name}" for name in OUTPUT_DIRS]
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", top, *excluded))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def distinct_metadata(jobs: Sequence[JobResult], keys: Sequence[str]) -> list[str]:
    """Sorted distinct ``key: value`` strings found in the jobs' metrics.json metadata."""
    return sorted({f"{key}: {job.metadata[key]}" for job in jobs for key in keys if job.metadata.get(key)})



def project_root() -> Path:
    """The git work tree holding the current directory, else the current directory."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        return Path(top.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return Path.cwd()


def project_relative(text: str) -> str:
    """`text` with absolute paths inside the project written relative to its root (no machine's paths in
    committed tables)."""
    root = str(project_root())
    return text.replace(root + os.sep, "").replace(root, ".")


def dirty_tree_warning(commit: str) -> str | None:
    """A loud line for a report made from a working tree with uncommitted changes."""
    if not commit.endswith("-dirty"):
        return None
    return (f"Made from a working tree with uncommitted changes ({commit}): the numbers may not be reproducible "
            "from any commit. Commit, then re-run the report.")


def _run_setting(jobs: Sequence[JobResult], key: str) -> set[str]:
    return {str(job.overrides.get(key) or job.metadata.get(key) or "?") for job in jobs}


def setting_warning(jobs: Sequence[JobResult], paper_dataset: str | None, paper_pair: str | None,
                    notes: Sequence[str] = ()) -> str | None:
    """The header line of a table whose runs used another dataset or teacher → student pair than the paper
    rows they are shown beside (or whose setting differs as `notes` say)."""
    ours = {key: _run_setting(jobs, key) for key in ("dataset", "pair")}
    differs = [f"{key} {', '.join(sorted(values))} (paper: {expected})"
               for (key, values), expected in zip(ours.items(), (paper_dataset, paper_pair), strict=True)
               if expected is not None and values != {expected}]
    if not differs and not notes:
        return None
    what = "; ".join([*differs, *notes])
    return (f"Different setting from the paper's: {what}. Absolute numbers and the ours − paper differences "
            "compare different settings and say nothing about fdistill's correctness; read the claims' orderings.")
