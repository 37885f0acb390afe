"""One resumable training loop on `accelerate`, shared by teacher SFT, pre-distillation and distillation.

Resumability: every `checkpoint_every` optimizer steps the full state (model, optimizer and RNG of
every process: `Accelerator.save_state`; step counter and scheduler: ``trainer_state.json``) is
written to ``<work_dir>/checkpoint`` with a manifest of its files (sizes and sha256, `fdistill.files`) by
an atomic directory swap. A resume verifies the manifest first: a damaged checkpoint is refused with the
file and the fix (or, where the other complete copy of a crashed swap verifies, that one is used, saying so).
The data position needs no state of its own: the batch of micro-step `m` is a pure function of (seed, m)
(`StepSampler`), so a resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from fdistill.config import OptimConfig, TrainStageConfig
from fdistill.divergences import NonFiniteInputError
from fdistill.errors import CheckpointError, TrainingDivergedError
from fdistill.files import manifest_problem, read_json_file, write_manifest
from fdistill.progress import POSITION
from fdistill.training.optim import build_optimizer, build_scheduler
from fdistill.training.timing import STEP_TIMES, TIMED_PHASES, timed

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.json"


class StepSampler:
    """Deterministic batches: micro-step m reads positions [m·B, (m+1)·B) of an epoch-wise permutation.

    With several processes each takes a disjoint shard of the global batch (rank::world_size), so
    the global batch size is `batch_size` whatever the number of processes.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if num_items <= 0:
            raise ValueError("cannot train on an empty dataset: check dataset.limit.train and the data files")
        if batch_size < world_size:
            raise ValueError(f"batch_size={batch_size} is smaller than the number of processes ({world_size})")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_items)}
        return self._perms[epoch]

    def global_batch(self, micro_step: int) -> list[int]:
        start = micro_step * self.batch_size
        return [int(self._perm(pos // self.num_items)[pos % self.num_items]) for pos in range(start, start + self.batch_size)]

    def __call__(self, micro_step: int) -> list[int]:
        return self.global_batch(micro_step)[self.rank :: self.world_size]


def micro_step_seed(seed: int, micro_step: int) -> int:
    """A seed that is the same on every process (for draws that must agree, e.g. GKD's λ coin)."""
    return random.Random(f"{seed}:{micro_step}").getrandbits(31)


def parameter_digest(model: torch.nn.Module | dict) -> str:
    """SHA-256 of the state dict (names and raw bytes, in name order): equal iff the weights are identical. Takes a
    model or a state dict (e.g. a sharded model's, gathered)."""
    digest = hashlib.sha256()
    state = model if isinstance(model, dict) else model.state_dict()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def num_training_steps(stage: TrainStageConfig, num_items: int) -> int:
    """Optimizer steps: `max_steps`, or `epochs` over `num_items` examples at the global batch size."""
    if stage.max_steps is not None:
        return stage.max_steps
    per_epoch = math.ceil(num_items / (stage.batch_size * stage.grad_accum))
    return max(1, math.ceil(stage.epochs * per_epoch))


@dataclass
class LoopResult:
    model: torch.nn.Module  # the prepared (wrapped or sharded) model, trained
    steps: int
    resumed_from: int
    seconds: float
    summary: dict


LossFn = Callable[[torch.nn.Module, int], tuple[torch.Tensor, dict[str, float]]]


def _save_checkpoint(parallel, model, optimizer, work_dir: Path, step: int, scheduler: LambdaLR,
                     extra_state: dict | None = None, checksums: bool = True) -> None:
    """Atomically replace <work_dir>/checkpoint with the current state (`Parallel.save_training_state`: accelerate's
    files, or each process's shard of a sharded model) and its manifest (written last, so a checkpoint without one
    was never completed).

    The scheduler is stored in trainer_state.json rather than registered with the accelerator:
    registered objects outlive a stage, so a later stage's checkpoint would carry every earlier
    stage's scheduler and could not be loaded by a run that takes those stages from the cache.
    """
    tmp = work_dir / f"{CHECKPOINT}.tmp"
    if parallel.is_main and tmp.exists():
        shutil.rmtree(tmp)
    parallel.barrier()
    parallel.save_training_state(model, optimizer, tmp)
    parallel.barrier()
    if parallel.is_main:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, "scheduler": scheduler.state_dict(),
                                                  "num_processes": parallel.world_size,
                                                  "sharded": parallel.shard_training,
                                                  **(extra_state or {})}))
        write_manifest(tmp, checksums, step=step)
        final, old = work_dir / CHECKPOINT, work_dir / f"{CHECKPOINT}.old"
        if final.exists():
            if old.exists():  # left by a crash after the last swap; `final` is complete, so it is not needed
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old)
    POSITION.checkpoint, POSITION.checkpoint_step = str(work_dir / CHECKPOINT), step
    parallel.barrier()


def drop_checkpoints(work_dir: Path) -> None:
    """Remove a finished stage's training checkpoints (model, optimizer and RNG state: ~3x the model)."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.tmp", f"{CHECKPOINT}.old"):
        if (work_dir / name).exists():
            shutil.rmtree(work_dir / name)


def verified_checkpoint(work_dir: Path, desc: str, checksums: bool = True) -> Path | None:
    """The checkpoint to resume from, verified against its manifest (sizes; sha256 with `checksums`): the
    current one, else the complete copy a crash between the two renames of a swap left (`.old`), saying so.
    None when the stage has none; :class:`CheckpointError` naming the damage and the fix when none verifies."""
    problems = []
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        candidate = work_dir / name
        if not candidate.exists():
            continue
        problem = manifest_problem(candidate, checksums)
        if problem is None:
            if problems:
                log.warning("[%s] %s; resuming from the other complete copy, %s, instead", desc, problems[0], candidate)
            return candidate
        problems.append(f"checkpoint {candidate}: {problem}")  # .old: left by a crash between the two renames
    if not problems:
        return None
    raise CheckpointError(
        f"[{desc}] cannot resume: {'; '.join(problems)}. Delete {work_dir / CHECKPOINT} to restart this stage from "
        "step 0 (its earlier steps are lost), or restore the damaged file from a copy; nothing was trained")


def _load_checkpoint(parallel, model, optimizer, checkpoint: Path, desc: str) -> dict:
    """Load a verified checkpoint; the trainer state (step, scheduler) is returned. This process's RNG state
    must be there: accelerate would otherwise log "Could not load random states" at INFO and go on."""
    state = read_json_file(checkpoint / STATE_FILE, "trainer state",
                           f"delete {checkpoint} to restart the stage from step 0")
    saved_processes = state.get("num_processes", parallel.world_size)
    if state.get("sharded", False) != parallel.shard_training:
        written = "a sharded" if state.get("sharded") else "an unsharded"
        wanted = "a sharded" if parallel.shard_training else "an unsharded"
        raise CheckpointError(f"[{desc}] {checkpoint} holds {written} model (pipeline.distributed.strategy), this run "
                              f"trains {wanted} one; resume with the same strategy and number of processes, or "
                              f"delete {checkpoint} to restart the stage")
    rng_file = checkpoint / f"random_states_{parallel.rank}.pkl"
    if not rng_file.is_file():
        raise CheckpointError(f"[{desc}] {checkpoint} holds no RNG state of process {parallel.rank} "
                              f"({rng_file.name}): it was written by {saved_processes} process(es), this run has "
                              f"{parallel.world_size}. Resume with the same number of processes, or delete "
                              f"{checkpoint} to restart the stage")
    if saved_processes != parallel.world_size:
        log.warning("[%s] %s was written by %d process(es), this run has %d: the resumed run continues from its "
                    "weights and optimizer state but is not bit-identical to an uninterrupted one", desc, checkpoint,
                    saved_processes, parallel.world_size)
    accelerate_log = logging.getLogger("accelerate.checkpointing")
    captured: list[str] = []
    handler = _MessageCapture(captured)
    level = accelerate_log.level
    accelerate_log.addHandler(handler)
    accelerate_log.setLevel(logging.INFO)
    try:
        parallel.load_training_state(model, optimizer, checkpoint)
    finally:
        accelerate_log.removeHandler(handler)
        accelerate_log.setLevel(level)
    failed = [message for message in captured if message.startswith("Could not load")]
    if failed:
        raise CheckpointError(f"[{desc}] {checkpoint}: accelerate says {failed[0]!r}; delete {checkpoint} to "
                              "restart the stage from step 0")
    return state


class _MessageCapture(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


class _DivergenceGuard:
    """Stops a stage on a non-finite loss or gradient norm, or a logged loss far above the first one.

    ``reference_loss`` (the first logged window's mean) survives a resume through ``trainer_state.json``.
    """

    def __init__(self, desc: str, stage: TrainStageConfig, total_steps: int, reference_loss: float | None) -> None:
        self.desc, self.stage, self.total_steps = desc, stage, total_steps
        self.reference_loss = reference_loss
        self.skipped = 0

    def _last_good(self) -> str:
        if POSITION.checkpoint is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {POSITION.checkpoint} (step {POSITION.checkpoint_step})"

    def fail(self, step: int, what: str, fix: str) -> TrainingDivergedError:
        return TrainingDivergedError(
            f"[{self.desc}] {what} at step {step}/{self.total_steps}; training stopped, nothing of this stage is "
            f"published or marked complete ({self._last_good()}). {fix}")

    def _fix(self) -> str:
        return (f"Lower the learning rate (optim.lr={self.stage.optim.lr} of this stage), check "
                "pipeline.mixed_precision, or set skip_nonfinite_steps=true on the stage to skip such steps")

    def check_gradient(self, step: int, grad_norm: float, loss: float) -> bool:
        """True when the optimizer may step; False to skip it (skip_nonfinite_steps); raises otherwise."""
        if math.isfinite(grad_norm) and math.isfinite(loss):
            return True
        if self.stage.skip_nonfinite_steps:
            self.skipped += 1
            return False
        raise self.fail(step, f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} "
                              f"(loss {loss}, gradient norm {grad_norm})", self._fix())

    def check_logged_loss(self, step: int, loss: float) -> None:
        factor = self.stage.loss_blowup_factor
        if self.reference_loss is None:
            if math.isfinite(loss):  # a window of skipped non-finite steps is no reference
                self.reference_loss = loss
            return
        if factor is not None and loss > factor * max(self.reference_loss, 1.0):
            raise self.fail(step, f"mean loss {loss:.6g} is more than loss_blowup_factor={factor:g} times the first "
                                  f"logged loss {self.reference_loss:.6g}: the run has diverged",
                            self._fix().replace("skip_nonfinite_steps=true on the stage to skip such steps",
                                                "loss_blowup_factor=null on the stage to disable this check"))

    def check_final(self, parallel, model: torch.nn.Module, step: int) -> None:
        bad = parallel.nonfinite_weights(model)
        if bad:
            raise self.fail(step, f"{len(bad)} weight tensors are non-finite (e.g. {bad[:3]})", self._fix())


def train(
    *,
    parallel,
    model: torch.nn.Module,
    loss_fn: LossFn,
    stage: TrainStageConfig,
    total_steps: int,
    work_dir: Path,
    desc: str,
    on_log: Callable[[dict], None] | None = None,
    checksums: bool = True,
) -> LoopResult:
    """Run `total_steps` optimizer steps of `loss_fn(model, micro_step)`, resuming from `work_dir`.

    `model` is the bare model: it is prepared here together with its optimizer (`Parallel.prepare_training`:
    DDP through accelerate, or sharded with FSDP2) and returned prepared in the result. Logs go to
    ``<work_dir>/log.csv`` (and `on_log`, e.g. wandb): per logged row the window means of the loss terms and of
    the gradient norm (before clipping), ``window_steps`` (steps averaged: shorter for the first row after a
    resume), the learning rate, where the time went (`fdistill.training.timing`: wall time, seconds per step,
    target tokens per second, shares of generation, teacher forward, student forward/backward and optimizer)
    and, with ``skip_nonfinite_steps``, the count of skipped steps so far; with fp16 the loss scaler's skipped
    (overflowing) steps are counted, not treated as divergence. A non-finite loss or gradient norm, a NaN/+inf
    model output, a logged loss ``loss_blowup_factor`` times above the first one, or non-finite final weights
    stop the stage with :class:`~fdistill.errors.TrainingDivergedError`. `checksums`: hash the checkpoint's files
    into its manifest and verify them on resume (sizes are always recorded and checked).
    """
    accelerator = parallel.accelerator
    optim: OptimConfig = stage.optim
    model, optimizer = parallel.prepare_training(model, lambda bare: build_optimizer(bare, optim))
    # The scheduler counts optimizer steps; it is not `prepare`d (accelerate would step it once per
    # process) and is checkpointed in trainer_state.json.
    scheduler = build_scheduler(optimizer, optim, total_steps)
    accelerator.gradient_accumulation_steps = stage.grad_accum  # `accumulate` syncs every grad_accum micro-steps
    accelerator.step = 0  # its micro-step counter: this stage's first optimizer step syncs after grad_accum of them
    scaler = accelerator.scaler  # fp16: an overflowing step is the scaler's to skip, not a divergence
    work_dir.mkdir(parents=True, exist_ok=True)

    start, reference_loss, skipped = 0, None, 0
    POSITION.enter(desc)
    checkpoint = verified_checkpoint(work_dir, desc, checksums)
    if checkpoint is not None:
        state = _load_checkpoint(parallel, model, optimizer, checkpoint, desc)
        scheduler.load_state_dict(state["scheduler"])
        POSITION.checkpoint, POSITION.checkpoint_step = str(checkpoint), state["step"]
        start, reference_loss, skipped = state["step"], state.get("reference_loss"), state.get("skipped_nonfinite", 0)
        if parallel.is_main:
            log.info("[%s] resuming from step %d/%d (%s)", desc, start, total_steps, checkpoint)
    guard = _DivergenceGuard(desc, stage, total_steps, reference_loss)
    guard.skipped = skipped
    overflows = 0

    log_path = work_dir / "log.csv"
    if parallel.is_main:
        _drop_log_rows_after(log_path, start, desc)  # a killed run may have logged steps it will redo now
    POSITION.step, POSITION.total = start, total_steps
    t0 = time.perf_counter()
    model.train()
    progress = tqdm(range(start, total_steps), desc=desc, initial=start, total=total_steps,
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    running: dict[str, float] = {}
    window = _Window()
    stage_totals = _Window()
    STEP_TIMES.take()
    steps_since_log = 0
    for step in progress:
        step_start = time.perf_counter()
        for micro in range(stage.grad_accum):
            micro_step = step * stage.grad_accum + micro
            sync = micro == stage.grad_accum - 1
            with parallel.gradient_sync(model, sync), accelerator.autocast():
                try:
                    loss, logs = loss_fn(model, micro_step)
                except NonFiniteInputError as error:
                    raise guard.fail(step + 1, f"non-finite model output ({error})", guard._fix()) from None
                accelerator.backward(loss)  # accelerate divides by grad_accum
            for name, value in {"loss": float(loss.detach()), **logs}.items():
                running[name] = running.get(name, 0.0) + value / stage.grad_accum
        with timed("optimizer"):
            # the norm of the synchronised gradients: the same decision on every process
            grad_norm = parallel.clip_grad_norm(model, optim.max_grad_norm if optim.max_grad_norm > 0 else float("inf"))
            if scaler is not None and not math.isfinite(grad_norm) and math.isfinite(float(loss.detach())):
                optimizer.step()  # the scaler skips it and lowers its scale
                overflows += 1
            elif guard.check_gradient(step + 1, grad_norm, float(loss.detach())) or scaler is not None:
                optimizer.step()  # (with a scaler, a skipped step must still reach it: it unscaled the gradients)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        running["grad_norm"] = running.get("grad_norm", 0.0) + grad_norm
        window.add_step(time.perf_counter() - step_start)
        done = step + 1
        POSITION.step = done
        if POSITION.interrupted:  # a Ctrl-C whose KeyboardInterrupt was dropped (raised inside a finalizer)
            raise KeyboardInterrupt
        steps_since_log += 1
        if done % stage.log_every == 0 or done == total_steps:
            timing = window.close()
            stage_totals.merge(timing)
            row = {"step": done, "lr": scheduler.get_last_lr()[0], "window_steps": steps_since_log,
                   **{k: v / steps_since_log for k, v in running.items()}, **timing.row()}
            if stage.skip_nonfinite_steps:
                row["skipped_nonfinite"] = guard.skipped
            if scaler is not None:
                row["fp16_overflow_steps"] = overflows
            running, steps_since_log, window = {}, 0, _Window()
            progress.set_postfix(loss=f"{row['loss']:.4f}")
            if parallel.is_main:
                _append_csv(log_path, row)
                if on_log is not None:
                    on_log(row)
            guard.check_logged_loss(done, row["loss"])
        if done % stage.checkpoint_every == 0 or done == total_steps:
            if done == total_steps:
                guard.check_final(parallel, model, done)
            saving = time.perf_counter()
            _save_checkpoint(parallel, model, optimizer, work_dir, done, scheduler,
                             {"reference_loss": guard.reference_loss, "skipped_nonfinite": guard.skipped}, checksums)
            stage_totals.checkpoint_seconds += time.perf_counter() - saving
    progress.close()
    if start >= total_steps:  # resumed after the last checkpoint: the weights were checked before it was saved
        guard.check_final(parallel, model, total_steps)
    summary = stage_totals.summary(desc)
    if summary["steps"] and parallel.is_main:
        log.info("%s", summary["line"])
    return LoopResult(model=model, steps=total_steps, resumed_from=start, seconds=time.perf_counter() - t0,
                      summary=summary)


class _Window:
    """Step times of one logged window (or, merged, of a whole stage) and the phase seconds reported into
    :data:`~fdistill.training.timing.STEP_TIMES` meanwhile."""

    def __init__(self) -> None:
        self.steps, self.step_seconds, self.tokens, self.checkpoint_seconds = 0, 0.0, 0, 0.0
        self.phases: dict[str, float] = {}

    def add_step(self, seconds: float) -> None:
        self.steps += 1
        self.step_seconds += seconds

    def close(self) -> _Window:
        phases, self.tokens = STEP_TIMES.take()
        self.phases = dict(phases)
        accounted = sum(self.phases.get(name, 0.0) for name in (*TIMED_PHASES, "optimizer"))
        self.phases["forward_backward"] = max(0.0, self.step_seconds - accounted)
        return self

    def merge(self, other: _Window) -> None:
        self.steps += other.steps
        self.step_seconds += other.step_seconds
        self.tokens += other.tokens
        for name, seconds in other.phases.items():
            self.phases[name] = self.phases.get(name, 0.0) + seconds

    def shares(self) -> dict[str, float]:
        total = self.step_seconds or 1.0
        return {name: min(1.0, self.phases.get(name, 0.0) / total) for name in PHASE_COLUMNS}

    def row(self) -> dict:
        return {"wall_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "step_seconds": self.step_seconds / max(1, self.steps),
                "target_tokens_per_second": self.tokens / self.step_seconds if self.step_seconds else 0.0,
                **{f"share_{name}": share for name, share in self.shares().items()}}

    def summary(self, desc: str) -> dict:
        per_step = self.step_seconds / max(1, self.steps)
        shares = self.shares()
        parts = ", ".join(f"{shares[name]:.0%} {name.replace('_', ' ')}" for name in PHASE_COLUMNS if shares[name] > 0)
        rate = self.tokens / self.step_seconds if self.step_seconds else 0.0
        line = (f"{desc}: {self.steps} steps, {per_step:.3g} s/step, {parts}, {rate:,.0f} target tok/s; "
                f"checkpoints {self.checkpoint_seconds:.1f} s")
        return {"steps": self.steps, "seconds_per_step": per_step, "target_tokens_per_second": rate,
                "shares": shares, "checkpoint_seconds": self.checkpoint_seconds, "line": line}


#: the log.csv share columns, in the order of the stage summary
PHASE_COLUMNS = ("generation", "teacher_forward", "forward_backward", "optimizer")


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _drop_log_rows_after(path: Path, step: int, desc: str = "") -> None:
    """Keep only the rows of steps <= `step` in the CSV log (rewritten atomically). A log that cannot be read
    is kept aside as ``log.csv.unreadable`` and a new one started (the log records the run; it determines
    nothing, so training goes on), saying so."""
    if not path.exists():
        return
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = [row for row in reader if int(row["step"]) <= step]
            fieldnames = reader.fieldnames
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, csv.Error) as error:
        aside = path.with_name(path.name + ".unreadable")
        os.replace(path, aside)
        log.warning("[%s] %s cannot be read (%s: %s); kept as %s, a new log starts at step %d", desc, path,
                    type(error).__name__, error, aside.name, step + 1)
        return
    if not rows:
        path.unlink()
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
