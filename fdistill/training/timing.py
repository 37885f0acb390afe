"""Where a training step's time goes: cheap wall-clock timers around its phases, read by the training loop
once per logged window (``log.csv``) and once per stage (its one-line summary).

Phases timed where they happen: ``generation`` (on-policy and online teacher sampling), ``teacher_forward``
(the teacher's forward pass for the loss) and, by the loop itself, the ``optimizer`` (clipping, step,
zeroing) and checkpoints; the trained model's forward and backward (``forward_backward``) are the rest of the step.
On a GPU the timers measure queued work unless ``profile`` synchronises the device at each boundary (exact
shares, slightly slower steps).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: the phases other code reports into (the loop adds "forward_backward" and "optimizer")
TIMED_PHASES = ("generation", "teacher_forward")


class StepTimes:
    """Seconds per phase and target tokens since the last :meth:`take`."""

    def __init__(self) -> None:
        self.profile = False
        self.seconds: dict[str, float] = defaultdict(float)
        self.tokens = 0
        self._depth = 0

    def _now(self) -> float:
        if self.profile and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as `name` (an inner phase inside an outer one counts for the outer one only)."""
        self._depth += 1
        start = self._now() if self._depth == 1 else None
        try:
            yield
        finally:
            self._depth -= 1
            if start is not None:
                self.seconds[name] += self._now() - start

    def count_tokens(self, labels: torch.Tensor) -> None:
        """Add the target tokens of a training batch (labels on the CPU: no device sync)."""
        self.tokens += int((labels != -100).sum())

    def take(self) -> tuple[dict[str, float], int]:
        """The window's (seconds per phase, tokens), and a fresh window."""
        seconds, tokens = dict(self.seconds), self.tokens
        self.seconds, self.tokens = defaultdict(float), 0
        return seconds, tokens


#: the timers of this process's training loop
STEP_TIMES = StepTimes()


def timed(name: str):
    """``with timed("generation"): ...``: the block's seconds go to the current step's `name` phase."""
    return STEP_TIMES.phase(name)
