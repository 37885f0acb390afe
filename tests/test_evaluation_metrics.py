"""Text metrics: hand-checkable cases or the libraries' own reference values; offline encoders only."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import sacrebleu

from fdistill.evaluation import available_metrics, evaluate_predictions, get_metric
from fdistill.evaluation.moverscore import earth_movers_similarity
from fdistill.evaluation.text_metrics import distinct_n, self_bleu_score

LOCAL_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def score(predictions, references, metrics, **options):
    values, _ = evaluate_predictions(predictions, references, metrics, **options)
    return values


def test_registry_lists_every_metric_of_the_issue_and_rejects_unknown_names():
    expected = {"bleu", "bleu1", "bleu2", "meteor", "ter", "chrf", "rouge1", "rouge2", "rougeL", "bertscore",
                "moverscore", "bleurt", "self_bleu", "distinct_n", "synthetic_exact", "degeneracy"}
    assert set(available_metrics()) == expected
    with pytest.raises(KeyError, match="unknown metric 'blue'.*bleu, bleu1"):
        get_metric("blue")
    with pytest.raises(KeyError, match="rouge"):
        evaluate_predictions(["a"], [["a"]], ["rouge"])


def test_bleu_n_hand_values_and_signature_records_ngram_order():
    # "the cat" vs "the dog": unigram precision 1/2, no bigram match -> sacrebleu 'exp' smoothing 100/(2*1).
    values, metadata = evaluate_predictions(["the cat"], [["the dog"]], ["bleu1", "bleu2"])
    assert values["bleu1"] == pytest.approx(50.0)
    assert values["bleu2"] == pytest.approx(50.0)
    assert metadata["signatures"]["bleu1"].endswith("|ngram:1")
    assert "version:" + sacrebleu.__version__ in metadata["signatures"]["bleu2"]
    assert metadata["scales"]["bleu1"] == "0-100"


def test_bleu_multi_reference_with_variable_reference_counts():
    predictions = ["the cat sat on the mat", "a quick brown fox jumps"]
    references = [["a dog lay on a rug", "the cat sat on the mat"], ["a quick brown fox jumps"]]
    values, metadata = evaluate_predictions(predictions, references, ["bleu"])
    assert values["bleu"] == pytest.approx(100.0)
    assert metadata["signatures"]["bleu"].startswith("nrefs:var")
    one_reference = score(predictions, [["a dog lay on a rug"], ["a quick brown fox jumps"]], ["bleu"])
    assert one_reference["bleu"] < 100.0


def test_ter_is_fewest_edits_over_average_reference_length():
    # one insertion ("down") over 4 reference words = 25.
    assert score(["the cat sat"], [["the cat sat down"]], ["ter"])["ter"] == pytest.approx(25.0)
    # TERCOM convention: fewest edits over the references (1), divided by their average length (5).
    assert score(["the cat sat"], [["x y z w v u", "the cat sat down"]], ["ter"])["ter"] == pytest.approx(20.0)


def test_chrf_identical_is_100_and_disjoint_is_0():
    assert score(["abcdef"], [["abcdef"]], ["chrf"])["chrf"] == pytest.approx(100.0)
    assert score(["abcdef"], [["uvwxyz"]], ["chrf"])["chrf"] == pytest.approx(0.0)


def test_rouge_uses_stemming_best_reference_and_lcs():
    values = score(["the cats sat"], [["the cat sat"]], ["rouge1", "rouge2"])
    assert values == {"rouge1": pytest.approx(1.0), "rouge2": pytest.approx(1.0)}  # cats -> cat
    # LCS("a b c d", "a c b d") = 3 -> P = R = F = 3/4; the unrelated reference does not lower it.
    assert score(["a b c d"], [["x y z", "a c b d"]], ["rougeL"])["rougeL"] == pytest.approx(0.75)


def test_meteor_matches_wordnet_synonyms_offline_and_takes_the_best_reference():
    # "a hound" vs "a dog": 2 matches (exact + WordNet synonym), 1 chunk:
    # Fmean = 1, penalty = 0.5 * (1/2)^3 -> 0.9375 (0.25 without WordNet).
    values = score(["A hound"], [["completely different words", "a dog"]], ["meteor"])
    assert values["meteor"] == pytest.approx(0.9375)


def test_meteor_reproduces_nltks_reference_value_with_the_prepared_wordnet():
    from nltk.translate.meteor_score import meteor_score

    from fdistill.evaluation.wordnet import ensure_wordnet

    ensure_wordnet()
    hypothesis = "It is a guide to action which ensures that the military always obeys the commands of the party".split()
    reference = "It is a guide to action that ensures that the military will forever heed Party commands".split()
    assert round(meteor_score([reference], hypothesis), 4) == 0.6944  # nltk's docstring value


def test_distinct_n_hand_values():
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # ab, ba, ab
    values = score(["a b", "a c"], [[], []], ["distinct_n"])
    assert values == {"distinct_1": pytest.approx(3 / 4), "distinct_2": pytest.approx(1.0)}


def test_self_bleu_equals_sacrebleu_with_all_other_texts_as_references():
    rng = random.Random(0)
    words = "the a cat dog sat ran on under mat rug quickly".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(12)]
    texts += [texts[0], "the cat sat on the mat", "the cat sat on the rug"]
    others = [[other for j, other in enumerate(texts) if j != i] for i in range(len(texts))]
    reference_streams = [list(stream) for stream in zip(*others, strict=True)]
    expected = sacrebleu.corpus_bleu(texts, reference_streams).score
    value, signature = self_bleu_score(texts)
    assert value == pytest.approx(expected)
    assert "nrefs:14" in signature
    assert self_bleu_score(["the very same five words"] * 2)[0] == pytest.approx(100.0)
    assert score(["alone"], [[]], ["self_bleu"])["self_bleu"].startswith("unavailable: ")


def test_bleurt_without_checkpoint_reports_unavailable_instead_of_crashing():
    sentence = "the cat sat on the mat"
    values, _ = evaluate_predictions([sentence], [[sentence]], ["bleurt", "bleu"], bleurt_checkpoint=None)
    assert values["bleurt"].startswith("unavailable: ")
    assert values["bleu"] == pytest.approx(100.0)


def test_reference_based_metric_rejects_inputs_without_references():
    with pytest.raises(ValueError, match="no reference"):
        evaluate_predictions(["a", "b"], [["a"], []], ["bleu"])
    with pytest.raises(ValueError, match="2 predictions but 1"):
        evaluate_predictions(["a", "b"], [["a"]], ["bleu"])


# ----- embedding-based metrics on the offline encoder ---------------------------------------------

def test_bertscore_offline_encoder_is_reported_and_identical_text_scores_one():
    values, metadata = evaluate_predictions(
        ["the cat sat on the mat", "a man plays the guitar"],
        [["the cat sat on the mat"], ["stock markets fell sharply today", "a man plays the guitar"]],
        ["bertscore"], bertscore_encoder=LOCAL_ENCODER)
    assert values["bertscore"] == pytest.approx(1.0, abs=1e-4)  # best reference per input
    assert metadata["bertscore_encoder"] == LOCAL_ENCODER
    assert metadata["signatures"]["bertscore"].startswith(f"{LOCAL_ENCODER}_L6_no-idf")
    unrelated = score(["a man plays the guitar"], [["stock markets fell sharply today"]], ["bertscore"],
                      bertscore_encoder=LOCAL_ENCODER)
    assert unrelated["bertscore"] < 0.9


def test_bertscore_paper_encoder_unavailable_offline_is_an_error_not_a_fallback(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="(?s)'roberta-large' could not be loaded.*all-MiniLM-L6-v2"):
        evaluate_predictions(["a b"], [["a b"]], ["bertscore"])  # None -> the papers' roberta-large
    with pytest.raises(ValueError, match="no tuned layer for encoder 'my-org/unknown-encoder'"):
        evaluate_predictions(["a b"], [["a b"]], ["bertscore"], bertscore_encoder="my-org/unknown-encoder")


def test_earth_movers_similarity_hand_computed_cases():
    e1, e2 = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    one = np.ones(1)
    assert earth_movers_similarity(e1, one, e1 * 3, one) == pytest.approx(1.0)  # embeddings are L2-normalised
    assert earth_movers_similarity(e1, one, e2, one) == pytest.approx(1.0 - math.sqrt(2.0))
    # half the mass at e1 stays, half moves from e2 to e1 at cost sqrt(2).
    two = np.vstack([e1, e2])
    assert earth_movers_similarity(two, np.array([3.0, 3.0]), e1, one) == pytest.approx(1.0 - math.sqrt(2.0) / 2)
    # weights 3:1 -> only 1/4 of the mass moves.
    assert earth_movers_similarity(two, np.array([3.0, 1.0]), e1, one) == pytest.approx(1.0 - math.sqrt(2.0) / 4)
    assert earth_movers_similarity(two, np.zeros(2), e1, one) == 0.0


def test_moverscore_offline_identical_is_one_and_paraphrase_beats_unrelated():
    identical = score(["the cat sat on the mat", "dogs bark loudly"],
                      [["the cat sat on the mat"], ["dogs bark loudly"]], ["moverscore"],
                      moverscore_encoder=LOCAL_ENCODER)
    assert identical["moverscore"] == pytest.approx(1.0, abs=1e-6)
    predictions = ["a cat was sitting on the mat", "a cat was sitting on the mat"]
    paraphrase, unrelated = (
        score([prediction], [[reference]], ["moverscore"], moverscore_encoder=LOCAL_ENCODER)["moverscore"]
        for prediction, reference in zip(predictions, ["the cat sat on the mat", "interest rates rose in march"],
                                         strict=True))
    assert unrelated < paraphrase < 1.0  # 1 − EMD with distances up to 2: negative for unrelated text


def test_moverscore_averages_over_references():
    one = score(["the cat sat on the mat"], [["the cat sat on the mat"]], ["moverscore"],
                moverscore_encoder=LOCAL_ENCODER)["moverscore"]
    other = score(["the cat sat on the mat"], [["interest rates rose"]], ["moverscore"],
                  moverscore_encoder=LOCAL_ENCODER)["moverscore"]
    both = score(["the cat sat on the mat"], [["the cat sat on the mat", "interest rates rose"]], ["moverscore"],
                 moverscore_encoder=LOCAL_ENCODER)["moverscore"]
    # idf is over the reference corpus, which changes with the reference set, so compare loosely.
    assert other < both < one


# ----- real DART references (../shared) -----------------------------------------------------------

def _dart_multi_reference_inputs(shared_data, limit=200):
    records = json.loads((shared_data / "dart" / "dart-v1.1.1-full-dev.json").read_text(encoding="utf-8"))
    texts = [[annotation["text"] for annotation in record["annotations"]] for record in records]
    return [refs for refs in texts if len(refs) >= 2][:limit]


def test_dart_human_reference_scored_against_the_others(shared_data):
    references = _dart_multi_reference_inputs(shared_data)
    assert len(references) == 200
    predictions = [refs[0] for refs in references]
    others = [refs[1:] for refs in references]
    shuffled = others[1:] + others[:1]  # each prediction against another input's references
    values, metadata = evaluate_predictions(predictions, others, ["bleu", "meteor", "bleurt"])
    baseline, _ = evaluate_predictions(predictions, shuffled, ["bleu", "meteor"])
    assert 15 < values["bleu"] < 90 and baseline["bleu"] < values["bleu"] / 3
    assert 0.3 < values["meteor"] < 0.95 and baseline["meteor"] < values["meteor"] - 0.15
    assert values["bleurt"].startswith("unavailable: ")
    assert metadata["signatures"]["bleu"].startswith("nrefs:var")
    # TER's shift search and the CPU encoders dominate the test time: a smaller slice for them.
    assert 10 < evaluate_predictions(predictions[:10], others[:10], ["ter"])[0]["ter"] < 90
    head = slice(0, 20)
    options = {"bertscore_encoder": LOCAL_ENCODER, "moverscore_encoder": LOCAL_ENCODER}
    values, metadata = evaluate_predictions(predictions[head], others[head], ["bertscore", "moverscore"], **options)
    baseline, _ = evaluate_predictions(predictions[head], shuffled[head], ["bertscore", "moverscore"], **options)
    assert baseline["bertscore"] < values["bertscore"] < 1.0
    assert baseline["moverscore"] < values["moverscore"] < 1.0
    assert metadata["bertscore_encoder"] == metadata["moverscore_encoder"] == LOCAL_ENCODER
