"""Text metrics of the papers, one registry (name → function), computed with the libraries made for them.

| name | library | paper |
| --- | --- | --- |
| bleu, bleu1, bleu2, ter, chrf | sacrebleu (corpus level, multi-reference, signature recorded) | f-DISTILL T2, WMT16, Commonsense Dialogue |
| meteor | nltk ``meteor_score`` (max over references, mean over sentences) | f-DISTILL T2 (DART) |
| rouge1, rouge2, rougeL | rouge-score, Porter stemming, F1, max over references | XSum (GKD), Dolly (AKL T1) |
| bertscore | bert-score F1 (P/R also reported), max over references | f-DISTILL T2, AKL T5 |
| moverscore | :mod:`fdistill.evaluation.moverscore` (POT) | f-DISTILL T2 |
| bleurt | bleurt-pytorch (PyTorch port of the official checkpoints) if importable and a checkpoint dir is configured; else "unavailable: <reason>" | f-DISTILL T2 |
| self_bleu | sacrebleu BLEU of each prediction against all others (Zhu et al. 2018) | GKD Fig. 5 |
| distinct_n | distinct-1/2 over whitespace tokens (Li et al. 2016) | diversity |
| degeneracy | share of outputs with a repeated 4-gram, mean length in words, length / the references' | degenerate outputs |
| synthetic_exact | :func:`fdistill.evaluation.analyses.synthetic_exact_metrics` | synthetic task |

Scales are each library's own: sacrebleu metrics (bleu*, ter, chrf, self_bleu) in 0–100, MoverScore
1 − EMD ≤ 1 (negative for unrelated text), BLEURT checkpoint-specific, the others in 0–1
(``metadata["scales"]``).

METEOR differs from the DART/GEM evaluation scripts used by f-DISTILL: those call the METEOR 1.5 Java
jar (``-l en -norm``; exact, stem, synonym and paraphrase modules; language-tuned parameters;
corpus-level aggregation of matches), while nltk implements exact/stem/WordNet-synonym matching with
α=0.9, β=3, γ=0.5 and no paraphrase table, takes the best reference per sentence, and we average
sentence scores. nltk looks synonyms up on the Porter stems left by its stem stage, so it misses
synonyms whose stem differs from the word (e.g. "automobile" → "automobil"). Inputs are lower-cased and
split with nltk's ``wordpunct_tokenize``. Values are therefore close to, not equal to, the paper's.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)
MetricValues = dict[str, Any]
MetricMetadata = dict[str, Any]


@dataclass
class MetricInputs:
    """Everything a metric may read. ``references`` holds one list of strings per prediction."""

    predictions: list[str]
    references: list[list[str]]
    sources: list[str] | None = None
    bertscore_encoder: str | None = None
    moverscore_encoder: str | None = None
    bleurt_checkpoint: str | None = None
    synthetic_task: Any = None


MetricFn = Callable[[MetricInputs], tuple[MetricValues, MetricMetadata]]
METRICS: dict[str, MetricFn] = {}


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    def decorator(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        return fn

    return decorator


def get_metric(name: str) -> MetricFn:
    """The metric function registered under ``name``; unknown names list the valid ones."""
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; valid metrics: {', '.join(sorted(METRICS))}")
    return METRICS[name]


def available_metrics() -> list[str]:
    return sorted(METRICS)


def _reference_streams(references: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference slot; None where an input has fewer references."""
    width = max(len(refs) for refs in references)
    return [[refs[slot] if slot < len(refs) else None for refs in references] for slot in range(width)]


def _sacrebleu_metric(name: str, metric, inputs: MetricInputs) -> tuple[MetricValues, MetricMetadata]:
    score = metric.corpus_score(inputs.predictions, _reference_streams(inputs.references))
    return {name: float(score.score)}, {"signatures": {name: str(metric.get_signature())}}


def _bleu(name: str, max_ngram_order: int) -> MetricFn:
    """BLEU-n (Papineni et al. 2002) with sacrebleu defaults (13a tokenizer, exp smoothing)."""

    def bleu(inputs: MetricInputs) -> tuple[MetricValues, MetricMetadata]:
        from sacrebleu.metrics import BLEU

        values, metadata = _sacrebleu_metric(name, BLEU(max_ngram_order=max_ngram_order), inputs)
        # sacrebleu's signature does not record the n-gram order, so we append it.
        metadata["signatures"][name] += f"|ngram:{max_ngram_order}"
        return values, metadata

    return bleu


register_metric("bleu")(_bleu("bleu", 4))
register_metric("bleu1")(_bleu("bleu1", 1))
register_metric("bleu2")(_bleu("bleu2", 2))


@register_metric("ter")
def ter(inputs: MetricInputs) -> tuple[MetricValues, MetricMetadata]:
    """Translation edit rate (Snover et al. 2006), sacrebleu, lower is better."""
    from sacrebleu.metrics import TER

    return _sacrebleu_metric("ter", TER(), inputs)


@register_metric("chrf")
def chrf(inputs: MetricInputs) -> tuple[MetricValues, MetricMetadata]:
    """chrF (Popović 2015), sacrebleu defaults (character 6-grams, β=2)."""
    from sacrebleu.metrics import CHRF

    return _sacrebleu_metric("chrf", CHRF(), inputs)


def _meteor_tokens(text: str) -> list[str]:
    from nltk.tokenize import wordpunct_tokenize

    return wordpunct_tokenize(text.lower())


@register_metric("meteor")
def meteor(inputs: MetricInputs) -> tuple[MetricValues, MetricMetadata]:
    """METEOR (Banerjee & Lavie 2005) with nltk and offline WordNet; see the module docstring."""
    import nltk
    from nltk.translate.meteor_score import meteor_score

    from fdistill.evaluation.wordnet import ensure_wordnet

    ensure_wordnet()
    scores = [
        meteor_score([_meteor_tokens(ref) for ref in refs], _meteor_tokens(prediction))
        for prediction, refs in zip(inputs.predictions, inputs.references, strict=True)
    ]
    signature = f"nltk:{nltk.__version__}|wordnet:3.0|tok:wordpunct+lc|alpha:0.9|beta:3|gamma:0.5|multi-ref:max"
    return {"meteor": float(np.mean(scores))}, {"signatures": {"meteor": signature}}


def _rouge(name: str) -> MetricFn:
    """ROUGE-n / ROUGE-L F1 (Lin 2004), rouge-score with Porter stemming, best reference per input."""

    def rouge(inputs: MetricInputs) -> tuple[MetricValues, MetricMetadata]:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer([name], use_stemmer=True)
        scores = [
            scorer.score_multi(refs, prediction)[name].fmeasure
            for prediction, refs in zip(inputs.predictions, inputs.references, strict=True)
        ]
        signature = f"rouge-score:{version('rouge-score')}|stemmer:porter|f1|multi-ref:max"
        return {name: float(np.mean(scores))}, {"signatures": {name: signature}}

    return rouge


for _rouge_name in ("rouge1", "rouge2", "rougeL"):
    register_metric(_rouge_name)(_rouge(_rouge_name))


@functools.lru_cache(maxsize=2)
def _bert_scorer(encoder: str):
    """A BERTScorer for an encoder name, built once per process (no silent encoder substitution)."""
    from bert_score import BERTScorer
    from bert_score.utils import model2layers

    from fdistill.evaluation.encoders import resolve_encoder, unavailable_encoder_error

    spec = resolve_encoder(encoder)
    if spec.num_layers is None and spec.location not in model2layers:
        raise ValueError(f"bert-score has no tuned layer for encoder {encoder!r}: name one of its models "
                         f"(e.g. roberta-large) or a local model directory")
    try:
        scorer = BERTScorer(model_type=spec.location, num_layers=spec.num_layers, lang="en")
    except OSError as error:
        raise unavailable_encoder_error(encoder, error) from error
    return spec, scorer


@register_metric("bertscore")
def bertscore(inputs: MetricInputs) -> tuple[MetricValues, MetricMetadata]:
    """BERTScore (Zhang et al. 2020) F1 without idf or baseline rescaling, best reference per input."""
    from bert_score.utils import get_hash

    from fdistill.evaluation.encoders import PAPER_BERTSCORE_ENCODER

    spec, scorer = _bert_scorer(inputs.bertscore_encoder or PAPER_BERTSCORE_ENCODER)
    # An empty prediction has no token to match: P = R = F1 = 0, as bert-score defines it (its own code path
    # for empty strings fails with transformers 5, so those are never passed to it).
    scored = [index for index, prediction in enumerate(inputs.predictions) if prediction.strip()]
    precision, recall, f1 = (np.zeros(len(inputs.predictions)) for _ in range(3))
    if scored:
        found = scorer.score([inputs.predictions[i] for i in scored], [inputs.references[i] for i in scored])
        for values, computed in zip((precision, recall, f1), found, strict=True):
            values[scored] = computed.numpy()
    values = {"bertscore": float(f1.mean()), "bertscore_precision": float(precision.mean()),
              "bertscore_recall": float(recall.mean())}
    signature = get_hash(spec.name, scorer.num_layers, False, False, False, False)
    return values, {"signatures": {"bertscore": signature}, "bertscore_encoder": spec.name,
                    "bertscore_num_layers": scorer.num_layers}


@register_metric("moverscore")
def moverscore_metric(inputs: MetricInputs) -> tuple[MetricValues, MetricMetadata]:
    """MoverScore (Zhao et al. 2019), see :mod:`fdistill.evaluation.moverscore`."""
    from fdistill.evaluation.encoders import PAPER_MOVERSCORE_ENCODER
    from fdistill.evaluation.moverscore import moverscore

    encoder = inputs.moverscore_encoder or PAPER_MOVERSCORE_ENCODER
    return {"moverscore": moverscore(inputs.predictions, inputs.references, encoder=encoder)}, {
        "moverscore_encoder": encoder}


def bleurt_unavailable_reason(checkpoint: str | None) -> str | None:
    """Why BLEURT cannot run here, or None when it can."""
    from pathlib import Path

    try:
        import bleurt_pytorch  # noqa: F401
    except ImportError as error:  # absent, or incompatible with the installed transformers (0.0.1 needs < 5)
        return f"bleurt-pytorch cannot be imported ({error}); install a version matching transformers"
    if not checkpoint:
        return "no BLEURT checkpoint configured (bleurt_checkpoint, e.g. a local lucadiliello/BLEURT-20-D12 copy)"
    if not Path(checkpoint).is_dir():
        return f"BLEURT checkpoint directory {checkpoint!r} does not exist"
    return None


@register_metric("bleurt")
def bleurt(inputs: MetricInputs) -> tuple[MetricValues, MetricMetadata]:
    """BLEURT (Sellam et al. 2020) via bleurt-pytorch, best reference per input; optional metric."""
    reason = bleurt_unavailable_reason(inputs.bleurt_checkpoint)
    if reason is not None:
        return {"bleurt": f"unavailable: {reason}"}, {}
    import torch
    from bleurt_pytorch import BleurtForSequenceClassification, BleurtTokenizer

    tokenizer = BleurtTokenizer.from_pretrained(inputs.bleurt_checkpoint)
    model = BleurtForSequenceClassification.from_pretrained(inputs.bleurt_checkpoint).eval()
    pairs = [(ref, prediction) for prediction, refs in zip(inputs.predictions, inputs.references, strict=True)
             for ref in refs]
    with torch.inference_mode():
        scores = []
        for start in range(0, len(pairs), 32):
            refs, hyps = zip(*pairs[start:start + 32], strict=True)
            encoded = tokenizer(list(refs), list(hyps), padding="longest", truncation=True, return_tensors="pt")
            scores.extend(model(**encoded).logits.flatten().tolist())
    best, position = [], 0
    for refs in inputs.references:
        best.append(max(scores[position:position + len(refs)]))
        position += len(refs)
    return {"bleurt": float(np.mean(best))}, {"bleurt_checkpoint": inputs.bleurt_checkpoint}


def self_bleu_score(texts: Sequence[str], max_ngram_order: int = 4) -> tuple[float, str]:
    """Self-BLEU (Zhu et al. 2018, Texygen): corpus BLEU of every text against all the others.

    Uses sacrebleu's own tokenisation, n-gram statistics and BLEU formula; only the multi-reference
    n-gram clipping (max count over the other texts) is computed from the top-2 counts per n-gram so
    that n texts cost O(n) n-gram extractions instead of O(n²). Returns (score in 0–100, signature).
    """
    from sacrebleu.metrics import BLEU
    from sacrebleu.metrics.helpers import extract_all_word_ngrams

    if len(texts) < 2:
        raise ValueError(f"self_bleu needs at least 2 texts, got {len(texts)}")
    bleu = BLEU(max_ngram_order=max_ngram_order)
    tokenized = [bleu._preprocess_segment(text) for text in texts]
    counts_and_lengths = [extract_all_word_ngrams(text, 1, max_ngram_order) for text in tokenized]
    top_two: dict[tuple, list[int]] = {}
    for counts, _ in counts_and_lengths:
        for ngram, count in counts.items():
            best = top_two.setdefault(ngram, [0, 0])
            if count > best[0]:
                best[0], best[1] = count, best[0]
            elif count > best[1]:
                best[1] = count
    lengths = [length for _, length in counts_and_lengths]
    stats = []
    for index, (counts, _) in enumerate(counts_and_lengths):
        # Only the hypothesis's own n-grams are looked up when clipping.
        others_max = Counter({ngram: top_two[ngram][1] if count == top_two[ngram][0] else top_two[ngram][0]
                              for ngram, count in counts.items()})
        ref_kwargs = {"ref_ngrams": others_max, "ref_lens": lengths[:index] + lengths[index + 1:]}
        stats.append(bleu._compute_segment_statistics(tokenized[index], ref_kwargs))
    score = bleu._compute_score_from_stats(np.sum(stats, axis=0).tolist())
    bleu.num_refs = len(texts) - 1  # what corpus_score would record; the signature reports it
    return float(score.score), f"{bleu.get_signature()}|ngram:{max_ngram_order}|self-bleu:all-others"


@register_metric("self_bleu")
def self_bleu(inputs: MetricInputs) -> tuple[MetricValues, MetricMetadata]:
    """Self-BLEU of the predictions (GKD Fig. 5 diversity axis; higher = less diverse)."""
    if len(inputs.predictions) < 2:
        return {"self_bleu": "unavailable: Self-BLEU needs at least 2 predictions"}, {}
    score, signature = self_bleu_score(inputs.predictions)
    return {"self_bleu": score}, {"signatures": {"self_bleu": signature}}


def distinct_n(texts: Sequence[str], n: int) -> float:
    """distinct-n (Li et al. 2016): unique n-grams / total n-grams over all texts (whitespace tokens)."""
    ngrams = [tuple(tokens[i:i + n]) for tokens in (text.split() for text in texts)
              for i in range(len(tokens) - n + 1)]
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


@register_metric("distinct_n")
def distinct(inputs: MetricInputs) -> tuple[MetricValues, MetricMetadata]:
    """distinct-1 and distinct-2 of the predictions."""
    return {f"distinct_{n}": distinct_n(inputs.predictions, n) for n in (1, 2)}, {}


def has_repeated_ngram(text: str, n: int = 4) -> bool:
    """Whether some whitespace n-gram occurs twice in `text` (a degenerate, looping output)."""
    tokens = text.split()
    ngrams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(ngrams)) < len(ngrams)


@register_metric("degeneracy")
def degeneracy(inputs: MetricInputs) -> tuple[MetricValues, MetricMetadata]:
    """Degenerate outputs: the share with a repeated 4-gram, the mean length in words, and that length over the
    references' mean length (first reference of each input)."""
    lengths = [len(text.split()) for text in inputs.predictions]
    references = [len(refs[0].split()) if refs else 0 for refs in inputs.references]
    mean_length = sum(lengths) / max(1, len(lengths))
    reference_length = sum(references) / max(1, len(references))
    return {"repeated_4gram_share": sum(has_repeated_ngram(text) for text in inputs.predictions) / max(1, len(lengths)),
            "mean_length": mean_length, "length_ratio": mean_length / reference_length if reference_length else 0.0}, {}


@register_metric("synthetic_exact")
def synthetic_exact(inputs: MetricInputs) -> tuple[MetricValues, MetricMetadata]:
    """Exact validity / mode-coverage metrics of the synthetic task (needs the task object and sources)."""
    from fdistill.evaluation.analyses import synthetic_exact_metrics

    if inputs.synthetic_task is None or inputs.sources is None:
        raise ValueError("metric 'synthetic_exact' needs synthetic_task= and sources= (the task object from "
                         "fdistill.data.synthetic and the inputs the predictions answer)")
    return synthetic_exact_metrics(inputs.synthetic_task, inputs.sources, inputs.predictions), {}


# Value scale per flat key; keys not listed are in 0-1.
SCALES = {**{key: "0-100" for key in ("bleu", "bleu1", "bleu2", "ter", "chrf", "self_bleu")},
          "moverscore": "1-EMD, at most 1", "bleurt": "checkpoint-specific", "modes_covered": "count", "mode_entropy": "nats", "mode_entropy_true": "nats",
          "mean_length": "words", "length_ratio": "ratio (1 = the references' length)"}


def _without_empty_references(references: list[list[str]]) -> list[list[str]]:
    """Drop empty (or whitespace-only) references, with a warning: they are a data problem, and an empty
    prediction scored against one would get a false perfect score (e.g. TER 0)."""
    kept = [[ref for ref in refs if ref.strip()] for refs in references]
    dropped = [index for index, (before, after) in enumerate(zip(references, kept, strict=True)) if len(after) < len(before)]
    if dropped:
        LOG.warning("%d input(s) have empty references (e.g. inputs %s); those references are ignored. Check the "
                    "data: an empty reference makes an empty prediction look perfect", len(dropped), dropped[:5])
    return kept


def evaluate_predictions(predictions: Sequence[str], references: Sequence[Sequence[str]],
                         metrics: Sequence[str], *, bertscore_encoder: str | None = None,
                         moverscore_encoder: str | None = None, bleurt_checkpoint: str | None = None,
                         synthetic_task: Any = None, sources: Sequence[str] | None = None,
                         ) -> tuple[MetricValues, MetricMetadata]:
    """Score predictions with the named metrics → (flat name → value, metadata).

    ``references[i]`` is the list of references of ``predictions[i]`` (a bare string counts as one).
    Encoders left None are the papers' (BERTScore: roberta-large; MoverScore: distilbert-base-uncased),
    which need hub access; offline, name ``sentence-transformers/all-MiniLM-L6-v2``. Metadata holds
    ``signatures`` (per metric), encoder names, and ``scales``.
    """
    for name in metrics:
        get_metric(name)
    references = [[refs] if isinstance(refs, str) else list(refs) for refs in references]
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    references = _without_empty_references(references)
    empty = [index for index, refs in enumerate(references) if not refs]
    if empty and set(metrics) - {"self_bleu", "distinct_n", "synthetic_exact"}:
        raise ValueError(f"inputs {empty[:5]} have no reference; reference-based metrics need at least one")
    inputs = MetricInputs(
        predictions=list(predictions), references=references,
        sources=list(sources) if sources is not None else None, bertscore_encoder=bertscore_encoder,
        moverscore_encoder=moverscore_encoder, bleurt_checkpoint=bleurt_checkpoint, synthetic_task=synthetic_task,
    )
    values: MetricValues = {}
    metadata: MetricMetadata = {"signatures": {}, "scales": {}}
    for name in metrics:
        metric_values, metric_metadata = get_metric(name)(inputs)
        values.update(metric_values)
        metadata["signatures"].update(metric_metadata.pop("signatures", {}))
        metadata.update(metric_metadata)
        metadata["scales"].update({key: SCALES.get(key, "0-1") for key in metric_values})
    return values, metadata
