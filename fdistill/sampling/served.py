"""A teacher served by an OpenAI-compatible server that returns top-k prompt log-probabilities (vLLM's and SGLang's
servers, or ``python -m fdistill.serve_teacher``): the teacher signal of any batch (teacher samples, student
samples, references), asked for over HTTP, so the teacher lives on other GPUs (or another machine) than training.

Before the first step :meth:`ServedTeacher.check` makes sure the server answers and serves the pair's tokenizer:
it tokenises a probe text (fixed characters of many kinds and a spread of the local vocabulary's own tokens) on
the server (``/tokenize``) and compares the ids with the local tokenizer's (a tokenizer fingerprint), so a server
running another model's vocabulary is refused up front. Requests carry the
batch's sequences as token ids with ``prompt_logprobs=k``, are retried with backoff on connection errors and
server errors, and time out; every failure is a :class:`~fdistill.errors.ConfigError` naming the server and the fix.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request

import torch

from fdistill.divergences.sparse import SparseSignal
from fdistill.errors import ConfigError

#: tokenised on the server and locally: letters, digits, punctuation, accents, a CJK character, an emoji
PROBE_TEXT = "fdistill probe: The 3 quick brown foxes jumped over 12 lazy dogs — naïve café, 東京, 🙂."
START_HINT = ("start the teacher server (`vllm serve DIR --max-logprobs K` on its own GPUs, or `python -m "
              "fdistill.serve_teacher --model DIR --port N` on a CPU) or correct pipeline.teacher_server.url")


class ServedTeacher:
    """A teacher behind `url` (see the module docstring)."""

    def __init__(self, url: str, tokenizer, k: int, timeout_seconds: float = 60.0, retries: int = 3,
                 batch_size: int = 16) -> None:
        self.url, self.tokenizer, self.k = url.rstrip("/"), tokenizer, k
        self.timeout, self.retries, self.batch_size = timeout_seconds, retries, batch_size
        self.model: str | None = None

    # ------------------------------------------------------------------ transport
    def _request(self, path: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if payload is None else "POST",
                                         headers={"Content-Type": "application/json"})
        last = ""
        for attempt in range(self.retries):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                body = error.read().decode(errors="replace")
                try:
                    message = json.loads(body)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = body[:300]
                if error.code < 500:  # the request is wrong: retrying changes nothing
                    raise ConfigError(f"teacher server {self.url}{path} refused the request (HTTP {error.code}): "
                                      f"{message}" + (f". Serve it with --max-logprobs >= {self.k}"
                                                      if "logprob" in message else "")) from None
                last = f"HTTP {error.code}: {message}"
            except TimeoutError:
                last = f"no answer within {self.timeout:g} s"
            except urllib.error.URLError as error:
                reason = error.reason
                last = f"no answer within {self.timeout:g} s" if isinstance(reason, TimeoutError) else f"{reason}"
            except OSError as error:
                last = str(error)
            if attempt + 1 < self.retries:
                time.sleep(min(2.0**attempt, 10.0))
        raise ConfigError(f"teacher server {self.url} failed {self.retries} time(s) ({last}); {START_HINT} "
                          "(pipeline.teacher_server.timeout_seconds / retries set the patience)")

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """The server answers, and tokenises like the pair's tokenizer (else a ConfigError naming the difference)."""
        models = self._request("/v1/models")
        try:
            self.model = models["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise ConfigError(f"teacher server {self.url}/v1/models answered {str(models)[:200]}: not an "
                              "OpenAI-compatible server") from None
        probe = self.probe_text()
        served = self._request("/tokenize", {"model": self.model, "prompt": probe,
                                             "add_special_tokens": False}).get("tokens")
        local = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        if served != local:
            first = next((index for index, (a, b) in enumerate(zip(served or [], local, strict=False)) if a != b),
                         min(len(served or []), len(local)))
            raise ConfigError(f"teacher server {self.url} serves {self.model!r}, whose tokenizer differs from the pair's "
                              f"(the probe text's token {first}: server {(served or [None])[first:first + 1]}, "
                              f"local {local[first:first + 1]}); distilling over mismatched ids gives garbage. Serve "
                              "the pair's teacher, or point pipeline.teacher_server.url at it")

    def probe_text(self) -> str:
        """The fingerprint's text: fixed characters of many kinds, then 256 tokens spread over the local vocabulary
        (so two tokenizers that both map the fixed text to unknown tokens still differ)."""
        size = len(self.tokenizer)
        spread = self.tokenizer.decode(list(range(0, size, max(1, size // 256))), skip_special_tokens=True)
        return f"{PROBE_TEXT} {spread}"

    # ------------------------------------------------------------------ the signal
    def signal_for(self, batch: dict, source: str, rows) -> SparseSignal:
        """The teacher interface: any batch (teacher samples, student samples, references) is asked of the server."""
        return self.signal(batch)

    def signal(self, batch: dict) -> SparseSignal:
        """The top-k signal of every valid target position of a decoder-only `batch` (row-major, like
        ``batch["labels"][valid]``), the tail's log-mass from the returned top-k."""
        sequences, starts = [], []
        for row in range(batch["labels"].shape[0]):
            targets = batch["labels"][row][batch["labels"][row] != -100].tolist()
            prompt_length = batch["input_ids"].shape[1] - batch["labels"].shape[1]
            prompt = batch["input_ids"][row, :prompt_length][batch["attention_mask"][row, :prompt_length].bool()]
            sequences.append(prompt.tolist() + targets)
            starts.append((len(prompt), len(targets)))
        ids, logp, tails = [], [], []
        for first in range(0, len(sequences), self.batch_size):
            answer = self._request("/v1/completions", {
                "model": self.model, "prompt": sequences[first : first + self.batch_size], "max_tokens": 1,
                "temperature": 0.0, "prompt_logprobs": self.k})
            for choice, (prompt_length, count) in zip(answer["choices"], starts[first : first + self.batch_size],
                                                      strict=True):
                for position in range(prompt_length, prompt_length + count):
                    entry = choice["prompt_logprobs"][position]
                    top = sorted(((int(token), value["logprob"], value.get("rank", 0)) for token, value in entry.items()),
                                 key=lambda item: item[2])[: self.k]
                    ids.append([token for token, _, _ in top])
                    logp.append([value for _, value, _ in top])
                    kept = math.fsum(math.exp(value) for _, value, _ in top)
                    whole = len(top) >= len(self.tokenizer)  # the top-k are the whole vocabulary: no tail
                    tails.append(math.log1p(-kept) if kept < 1.0 and not whole else float("-inf"))
        return SparseSignal("topk", torch.tensor(ids, dtype=torch.long), torch.tensor(logp, dtype=torch.float32),
                            log_tail=torch.tensor(tails, dtype=torch.float32))
