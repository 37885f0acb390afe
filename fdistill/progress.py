"""Where the run in this process is (stage, step, last checkpoint): what the one line printed on Ctrl-C says.

The pipeline sets the stage, the training loop the step and each checkpoint it writes or resumes from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunPosition:
    stage: str | None = None
    step: int | None = None
    total: int | None = None
    checkpoint: str | None = None
    checkpoint_step: int | None = None
    #: set by fdistill's SIGINT handler; the training loop stops at the next step boundary even where the
    #: KeyboardInterrupt itself was raised inside a finalizer, which Python reports and drops
    interrupted: bool = False

    def enter(self, stage: str) -> None:
        self.stage, self.step, self.total, self.checkpoint, self.checkpoint_step = stage, None, None, None, None

    def describe(self) -> str:
        """e.g. "during distill at step 17/40 (last checkpoint: step 15, outputs/.../checkpoint)"."""
        if self.stage is None:
            return "before any stage started"
        where = f"during {self.stage}"
        if self.step is not None and self.total is not None:
            where += f" at step {self.step}/{self.total}"
        if self.checkpoint is not None:
            where += f" (last checkpoint: step {self.checkpoint_step}, {self.checkpoint})"
        elif self.step is not None:
            where += " (no checkpoint of this stage yet: it restarts from step 0)"
        return where


#: the position of the run in this process
POSITION = RunPosition()
