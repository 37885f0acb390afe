"""MoverScore (Zhao et al. 2019, EMNLP): earth mover's distance between the idf-weighted contextual
token embeddings of a hypothesis and a reference.

Re-implemented on POT because the PyPI ``moverscore`` package downloads a hub model at import and uses
removed numpy APIs. We follow the reference code's unigram setting (``n_gram=1``): last-layer
embeddings, L2-normalised; token weights idf(w) = log((M + 1) / (df(w) + 1)) over the M references
(resp. hypotheses); weight 0 for special tokens, punctuation and WordPiece continuations (``##``);
cost = Euclidean distance; score = 1 − EMD (``moverscore.py``; ``moverscore_v2.py`` reports the
monotone transform 1 / (1 + EMD)). Distances between unit vectors reach 2, so the score lies in
[−1, 1]: 1 for identical texts, negative for unrelated ones under a sentence encoder like MiniLM. Several references: the mean of the per-reference scores, as in
``moverscore_v2.sentence_score`` and the WebNLG/DART evaluation script. A corpus of one sentence gets
uniform weights (idf would be 0 everywhere). A side with no weighted token (e.g. only punctuation, or
only tokens found in every sentence of its corpus) scores 0.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np
import ot
import torch

from fdistill.evaluation.encoders import load_encoder

PUNCTUATION = frozenset(string.punctuation)


def earth_movers_similarity(hyp_embeddings: np.ndarray, hyp_weights: np.ndarray,
                            ref_embeddings: np.ndarray, ref_weights: np.ndarray) -> float:
    """1 − EMD between two weighted point clouds of L2-normalised embeddings (Zhao et al. 2019, Eq. 1)."""
    hyp_mass, ref_mass = hyp_weights.sum(), ref_weights.sum()
    if hyp_mass <= 0 or ref_mass <= 0:
        return 0.0
    hyp = hyp_embeddings / np.linalg.norm(hyp_embeddings, axis=-1, keepdims=True)
    ref = ref_embeddings / np.linalg.norm(ref_embeddings, axis=-1, keepdims=True)
    cost = ot.dist(hyp.astype(np.float64), ref.astype(np.float64), metric="euclidean")
    return 1.0 - float(ot.emd2(hyp_weights / hyp_mass, ref_weights / ref_mass, cost))


def _idf(token_id_lists: Sequence[Sequence[int]]) -> tuple[Counter, int]:
    """Document frequencies and document count for idf(w) = log((M + 1) / (df(w) + 1))."""
    document_frequency = Counter()
    for token_ids in token_id_lists:
        document_frequency.update(set(token_ids))
    return document_frequency, len(token_id_lists)


def _idf_weight(document_frequency: int, num_documents: int) -> float:
    """idf, or 1 for a one-document corpus, where idf is 0 for every token (the reference code's
    advice for single sentences: ``defaultdict(lambda: 1.)``)."""
    return 1.0 if num_documents == 1 else math.log((num_documents + 1) / (document_frequency + 1))


class _Embedder:
    """Tokenises and embeds unique sentences once (last hidden layer), batched, no gradient."""

    def __init__(self, encoder: str, batch_size: int):
        self.spec, self.tokenizer, self.model = load_encoder(encoder)
        self.batch_size = batch_size
        self.excluded_ids = set(self.tokenizer.all_special_ids)

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, truncation=True)["input_ids"]

    def weights(self, token_ids: Sequence[int], idf: tuple[Counter, int]) -> np.ndarray:
        document_frequency, num_documents = idf
        tokens = self.tokenizer.convert_ids_to_tokens(list(token_ids))
        return np.array([
            0.0 if token_id in self.excluded_ids or token in PUNCTUATION or token.startswith("##")
            else _idf_weight(document_frequency[token_id], num_documents)
            for token_id, token in zip(token_ids, tokens, strict=True)
        ])

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        unique = sorted(set(texts), key=len)  # similar lengths per batch: less padding
        embeddings = {}
        for start in range(0, len(unique), self.batch_size):
            chunk = unique[start:start + self.batch_size]
            encoded = self.tokenizer(chunk, padding=True, truncation=True, return_tensors="pt")
            hidden = self.model(**encoded).last_hidden_state
            for text, states, mask in zip(chunk, hidden, encoded["attention_mask"], strict=True):
                embeddings[text] = states[mask.bool()].double().numpy()
        return embeddings


def moverscore(predictions: Sequence[str], references: Sequence[Sequence[str]], *, encoder: str,
               batch_size: int = 32) -> float:
    """Corpus MoverScore: mean over predictions of the mean over their references of 1 − EMD."""
    embedder = _Embedder(encoder, batch_size)
    prediction_ids = [embedder.token_ids(text) for text in predictions]
    reference_ids = {text: embedder.token_ids(text) for refs in references for text in refs}
    hyp_idf = _idf(prediction_ids)
    ref_idf = _idf([reference_ids[text] for refs in references for text in refs])
    embeddings = embedder.embed([*predictions, *reference_ids])
    scores = []
    for prediction, token_ids, refs in zip(predictions, prediction_ids, references, strict=True):
        hyp_weights = embedder.weights(token_ids, hyp_idf)
        scores.append(np.mean([
            earth_movers_similarity(embeddings[prediction], hyp_weights,
                                    embeddings[ref], embedder.weights(reference_ids[ref], ref_idf))
            for ref in refs
        ]))
    return float(np.mean(scores))
