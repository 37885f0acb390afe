"""The teacher's distribution at every target position, kept sparse and cached once per sweep (the
``teacher_signal`` artifact), or asked of a served teacher (`fdistill.sampling.served`): what the objectives use
instead of a teacher in memory (`fdistill.divergences.sparse` computes the losses).

A signal is extracted from the teacher's logits at the target positions of a batch of sequences (the cached
teacher samples, or the references), chunk by chunk through its head (its [tokens, V] logits never exist):

* ``topk``: the k most probable entries, their log-probabilities and the exact log-mass of the rest;
* ``sampled`` (RSKD): m draws with replacement from the teacher at ``proposal_temperature``, with their teacher
  and proposal log-probabilities (the draws of a sequence come from a generator seeded by its key, so they do
  not depend on the batch or on the number of processes).

On disk (`SignalStore`): a `datasets` (Arrow) dataset per shard, one row per sequence: ``source`` ("samples" or
"references"), ``row`` (its index there), ``positions``, and fixed-width per-position columns flattened: ``ids``
int32 [positions × k], ``logp`` float16 or float32 [positions × k], ``log_tail`` float32 [positions] (top-k) or
``log_proposal`` [positions × k] (sampled): 6k + 4 bytes per target token for a float16 top-k. Shards are written
as their batches finish (one per global batch, by whichever process computed it), so an interrupted build
resumes where it stopped and any number of processes writes the same shards.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from fdistill.divergences.sparse import SparseSignal

SIGNAL_DIR = "signal"
#: how signals are extracted and stored; part of the key of a cached signal
SIGNAL_VERSION = "per-sequence-v1"
SOURCES = ("samples", "references")


@dataclass(frozen=True)
class SignalSpec:
    """What is extracted at each position (pipeline.teacher_signal)."""

    method: str = "topk"
    k: int = 128
    proposal_temperature: float = 1.0
    seed: int = 0
    dtype: str = "float16"


def extract(logits: torch.Tensor, spec: SignalSpec, generator: torch.Generator | None = None) -> SparseSignal:
    """The signal of rows of teacher logits [R, V] (float32 math)."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    if spec.method == "topk":
        k = min(spec.k, log_p.shape[-1])
        logp, ids = log_p.topk(k, dim=-1)
        log_tail = torch.logsumexp(log_p.scatter(-1, ids, float("-inf")), dim=-1)
        return SparseSignal("topk", ids, logp, log_tail=log_tail)
    log_proposal = torch.log_softmax(logits.float() / spec.proposal_temperature, dim=-1)
    ids = torch.multinomial(log_proposal.exp(), spec.k, replacement=True, generator=generator)
    return SparseSignal("sampled", ids, log_p.gather(-1, ids), log_proposal=log_proposal.gather(-1, ids))


def _sequence_generator(spec: SignalSpec, key: str, device) -> torch.Generator | None:
    if spec.method != "sampled":
        return None
    from fdistill.sampling import row_seed

    return torch.Generator(device=device).manual_seed(row_seed(spec.seed, key, 0))


@torch.no_grad()
def teacher_signal(teacher, batch: dict, spec: SignalSpec, keys: Sequence[str], vocab_size: int | None = None,
                   parallel=None) -> list[SparseSignal]:
    """One signal per sequence of `batch` (its valid target positions, in order), from the teacher's logits,
    computed one sequence at a time through its head where fdistill reproduces the head (else from its logits)."""
    from fdistill.divergences.fused import head_logits
    from fdistill.models import head_inputs_and_hidden_states, output_head, supports_fused_head, token_logits

    valid = batch["labels"] != -100
    counts = valid.sum(-1).tolist()
    fused = supports_fused_head(teacher)
    if fused:
        states, _ = head_inputs_and_hidden_states(teacher, batch)
        rows = states[valid]
    else:
        logits = token_logits(teacher, batch)
        rows = logits[..., : vocab_size or logits.shape[-1]][valid]

    def per_sequence(head, states: torch.Tensor) -> list[SparseSignal]:
        signals, start = [], 0
        for count, key in zip(counts, keys, strict=True):
            piece = states[start : start + count]
            logits = head_logits(head, piece) if head is not None else piece.float()
            signals.append(extract(logits, spec, _sequence_generator(spec, key, logits.device)))
            start += count
        return signals

    if not fused:
        return per_sequence(None, rows)
    if parallel is not None:
        return parallel.call_head(teacher, per_sequence, rows, vocab_size)
    return per_sequence(output_head(teacher, vocab_size), rows)


# ------------------------------------------------------------------------------------------- on disk
def signal_record(source: str, row: int, signal: SparseSignal, dtype: str) -> dict:
    """One sequence's row on disk."""
    low = np.float16 if dtype == "float16" else np.float32
    record = {"source": source, "row": int(row), "positions": int(signal.ids.shape[0]),
              "ids": signal.ids.to(torch.int32).cpu().numpy().reshape(-1),
              "logp": signal.logp.float().cpu().numpy().astype(low).reshape(-1)}
    if signal.kind == "topk":
        record["log_tail"] = signal.log_tail.float().cpu().numpy().reshape(-1)
    else:
        record["log_proposal"] = signal.log_proposal.float().cpu().numpy().astype(low).reshape(-1)
    return record


def _features(spec: SignalSpec) -> datasets.Features:
    low = spec.dtype
    columns = {"source": datasets.Value("string"), "row": datasets.Value("int64"),
               "positions": datasets.Value("int32"), "ids": datasets.Sequence(datasets.Value("int32")),
               "logp": datasets.Sequence(datasets.Value(low))}
    if spec.method == "topk":
        columns["log_tail"] = datasets.Sequence(datasets.Value("float32"))
    else:
        columns["log_proposal"] = datasets.Sequence(datasets.Value(low))
    return datasets.Features(columns)


def write_shard(directory: Path, index: int, records: list[dict], spec: SignalSpec) -> None:
    """Shard `index` (its own folder, written to a temporary one and renamed: a shard exists whole or not at all)."""
    final = directory / SIGNAL_DIR / f"shard-{index:06d}"
    temporary = final.with_name(final.name + ".tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    columns = {name: [record.get(name) for record in records] for name in _features(spec)}
    datasets.Dataset.from_dict(columns, features=_features(spec)).save_to_disk(str(temporary))
    temporary.rename(final)


def shard_done(directory: Path, index: int) -> bool:
    return (directory / SIGNAL_DIR / f"shard-{index:06d}").is_dir()


class SignalStore:
    """A cached signal, looked up by (source, row) and laid out like a batch's valid target positions."""

    def __init__(self, directory: Path, kind: str, k: int) -> None:
        shards = sorted((directory / SIGNAL_DIR).glob("shard-*"))
        shards = [shard for shard in shards if not shard.name.endswith(".tmp")]
        self.dataset = datasets.concatenate_datasets([datasets.load_from_disk(str(shard)) for shard in shards]) \
            if shards else None
        self.kind, self.k = kind, k
        sources = self.dataset["source"] if self.dataset is not None else []
        rows = self.dataset["row"] if self.dataset is not None else []
        self.index = {(source, int(row)): position for position, (source, row) in enumerate(zip(sources, rows,
                                                                                                strict=True))}

    def __len__(self) -> int:
        return len(self.index)

    def bytes_per_token(self, directory: Path) -> float:
        files = [path for path in (directory / SIGNAL_DIR).rglob("*.arrow")]
        tokens = sum(self.dataset["positions"]) if self.dataset is not None else 0
        return sum(path.stat().st_size for path in files) / max(1, tokens)

    def signal(self, source: str, rows: Sequence[int]) -> SparseSignal:
        """The rows' signals concatenated, in order (row-major like ``batch["labels"][valid]``)."""
        missing = [row for row in rows if (source, int(row)) not in self.index]
        if missing:
            raise KeyError(f"the cached teacher signal has no {source} rows {missing[:5]}: it was built for another "
                           "set of sequences (rebuild it: pipeline.rebuild=[teacher_signal])")
        records = self.dataset.select([self.index[(source, int(row))] for row in rows])
        k = self.k
        ids = torch.from_numpy(np.concatenate([np.asarray(value, dtype=np.int64) for value in records["ids"]]))
        logp = torch.from_numpy(np.concatenate([np.asarray(value, dtype=np.float32) for value in records["logp"]]))
        if self.kind == "topk":
            tail = torch.from_numpy(np.concatenate([np.asarray(value, dtype=np.float32)
                                                    for value in records["log_tail"]]))
            return SparseSignal("topk", ids.view(-1, k), logp.view(-1, k), log_tail=tail)
        proposal = torch.from_numpy(np.concatenate([np.asarray(value, dtype=np.float32)
                                                    for value in records["log_proposal"]]))
        return SparseSignal("sampled", ids.view(-1, k), logp.view(-1, k), log_proposal=proposal.view(-1, k))

    def check_covers(self, source: str, rows: int) -> None:
        found = sum(1 for key in self.index if key[0] == source)
        if found != rows:
            raise KeyError(f"the cached teacher signal holds {found} {source} rows, the run needs {rows}")


def effective_k(spec: SignalSpec, vocab_size: int) -> int:
    return min(spec.k, vocab_size) if spec.method == "topk" else spec.k


class CachedSignals:
    """The teacher interface of a cached signal: the signal of a batch of teacher samples or references (by their
    rows), none for fresh student samples (their teacher terms need the teacher itself)."""

    def __init__(self, store: SignalStore) -> None:
        self.store = store

    def signal_for(self, batch: dict, source: str, rows) -> SparseSignal | None:
        return self.store.signal(source, rows) if source in SOURCES else None
