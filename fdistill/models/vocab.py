"""Tokenizers: the offline word-level tokenizer of the tiny pairs, loading, and the shared-vocabulary checks.

Token-level distillation compares teacher and student distributions position by position, so both models
must index one vocabulary (f-DISTILL Sec. 2; GKD Sec. 3). The checks here fail before any training starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from fdistill.errors import ConfigError
from fdistill.models.storage import staged_directory

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def build_word_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Build a whitespace word-level tokenizer over every word of `texts` (or a plain word list), save it
    with `save_pretrained` into `out_dir` (atomically) and return it loaded back by `load_tokenizer`.

    Ids 0-3 are `<pad>`, `<s>`, `</s>`, `<unk>`; words follow in sorted order, so the same texts always
    give the same ids. Encoding with special tokens appends `</s>` (T5 convention, used for encoder
    inputs and seq2seq targets); decoding joins words with single spaces, so texts of in-vocabulary
    words round-trip up to whitespace normalisation.
    """
    words = sorted({word for text in texts for word in text.split()} - set(SPECIAL_TOKENS))
    if not words:
        raise ValueError("build_word_tokenizer got no words: pass the training texts (or a word list)")
    vocab = {token: index for index, token in enumerate((*SPECIAL_TOKENS, *words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, vocab[EOS])]
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )
    with staged_directory(out_dir, replace=True) as staging:
        tokenizer.save_pretrained(staging)
    return load_tokenizer(out_dir)


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained` without remote code. Tokenizers without a pad token (GPT-2,
    DialoGPT) get `pad = eos`; the collator masks padding by position, never by id, so this is safe."""
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=False)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {name_or_path!r} has no eos token; fdistill needs one to end targets")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


STUDENT_ADVICE = ("Token-level distillation needs one shared vocabulary: pick a student from the teacher's model "
                  "family (or set pair.tokenizer to the teacher's tokenizer and use student.init=layer_copy/from_config).")


def first_vocab_difference(vocab_a: dict[str, int], vocab_b: dict[str, int]) -> tuple[int, str | None, str | None]:
    """The lowest id the two vocabularies map differently, with each one's token there (None: no token)."""
    by_id_a = {index: token for token, index in vocab_a.items()}
    by_id_b = {index: token for token, index in vocab_b.items()}
    index = min(index for index in set(by_id_a) | set(by_id_b) if by_id_a.get(index) != by_id_b.get(index))
    return index, by_id_a.get(index), by_id_b.get(index)


def check_same_vocab(
    tokenizer_a: PreTrainedTokenizerBase, tokenizer_b: PreTrainedTokenizerBase, name_a: str, name_b: str,
    advice: str = STUDENT_ADVICE,
) -> None:
    """Raise ConfigError naming both models and the first differing token unless their tokenizers map every token
    (and the pad/bos/eos special tokens) to the same ids."""
    vocab_a, vocab_b = tokenizer_a.get_vocab(), tokenizer_b.get_vocab()
    problems = []
    if vocab_a != vocab_b:
        index, token_a, token_b = first_vocab_difference(vocab_a, vocab_b)
        problems.append(f"first difference at id {index}: {token_a!r} in {name_a!r}, {token_b!r} in {name_b!r}")
        only_a = sorted(set(vocab_a) - set(vocab_b))
        only_b = sorted(set(vocab_b) - set(vocab_a))
        moved = sorted(token for token in set(vocab_a) & set(vocab_b) if vocab_a[token] != vocab_b[token])
        problems.append(f"vocabulary sizes {len(vocab_a)} vs {len(vocab_b)}")
        for tokens, where in ((only_a, f"only in {name_a!r}"), (only_b, f"only in {name_b!r}"), (moved, "with different ids")):
            if tokens:
                problems.append(f"{len(tokens)} tokens {where} (e.g. {tokens[:5]})")
    for role in ("pad_token_id", "bos_token_id", "eos_token_id"):
        id_a, id_b = getattr(tokenizer_a, role), getattr(tokenizer_b, role)
        if id_a != id_b:
            problems.append(f"{role} {id_a} vs {id_b}")
    if problems:
        raise ConfigError(
            f"tokenizers of {name_a!r} and {name_b!r} differ: {'; '.join(problems)}. {advice}")
