"""What `run.py` wraps around Hydra: fdistill's own errors as one message with exit code 2 (a traceback only
for unexpected errors), and a check of the composed config before Hydra does anything with it, so that
``--cfg job`` validates what it prints and an output dir that cannot be created fails with a message."""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fdistill.errors import FdistillError, StorageError
from fdistill.progress import POSITION

log = logging.getLogger("fdistill")
EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.ENOTDIR}
#: how libraries that do not raise OSError say that a write failed for lack of space: safetensors ("I/O error: No
#: space left on device (os error 28)"), torch.save ("[enforce fail at inline_container.cc] unexpected pos" or
#: "PytorchStreamWriter failed writing file")
STORAGE_MESSAGES = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122",
                    "PytorchStreamWriter failed writing file", "unexpected pos")
RESUME_HINT = ("Finished stages and checkpoints stay valid: re-run the same command to resume")


@dataclass(frozen=True)
class JobFailure:
    job: str
    run_dir: str
    message: str


#: the jobs of this process's Hydra multirun: how many started, which failed (reported when the sweep ends)
SWEEP: dict[str, list] = {"started": [], "failed": []}


def fail(error: Exception) -> None:
    """Log (into run.log, when Hydra set it up) and print `error` without a traceback; exit with code 2."""
    log.debug("fdistill error", exc_info=error)
    print(f"fdistill: error: {error}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG_ERROR)


def _storage_error(error: BaseException) -> StorageError | None:
    """A write that failed for lack of space, a read-only or not-a-directory location, anywhere in the chain of
    causes of `error`, as fdistill's StorageError (None: not a storage failure)."""
    seen = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in STORAGE_ERRNOS:
            return StorageError(f"cannot write {cause.filename or 'a file'}: {cause.strerror} (errno {cause.errno}); "
                                "free disk space or point paths.output_dir / paths.cache_dir at a writable disk. "
                                + RESUME_HINT)
        text = str(cause)
        if any(marker in text for marker in STORAGE_MESSAGES):
            return StorageError(f"a write failed for lack of disk space ({type(cause).__name__}: {text.strip()[:300]}); "
                                "free disk space or point paths.output_dir / paths.cache_dir at another disk. "
                                + RESUME_HINT)
        cause = cause.__cause__ or cause.__context__
    return None


def explained(error: BaseException) -> FdistillError | None:
    """`error` as one of fdistill's own explained errors, or None for an unexpected one (a bug: keep its traceback)."""
    if isinstance(error, FdistillError):
        return error
    return _storage_error(error)


@contextmanager
def guarded(job: str | None = None, run_dir: str | None = None) -> Iterator[None]:
    """fdistill's errors and storage failures end the run with one message and exit code 2; Ctrl-C with one
    line saying where the run stopped and how to resume (exit code 130).

    `job` (a Hydra multirun job's label): a failure of that job, explained or not, is logged and recorded in
    :data:`SWEEP` and the sweep goes on with its next job; :func:`sweep_exit_code` reports them at the end."""
    if job is not None:
        SWEEP["started"].append(job)
    previous = _install_interrupt_handler()
    try:
        yield
    except KeyboardInterrupt:
        print(f"fdistill: interrupted {POSITION.describe()}. {RESUME_HINT}.", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as error:  # noqa: BLE001 - sorted into explained and unexpected below
        known = explained(error)
        if job is None:
            if known is None:
                raise
            fail(known)
        if known is not None:
            log.debug("fdistill error", exc_info=error)
            log.error("fdistill: job %s failed: %s", job, known)
        else:
            log.error("fdistill: job %s failed with an unexpected error (a bug; please report it)", job, exc_info=error)
        SWEEP["failed"].append(JobFailure(job, str(run_dir), str(known or f"{type(error).__name__}: {error}")))
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _interrupt(signum, frame) -> None:
    POSITION.interrupted = True
    raise KeyboardInterrupt


def _install_interrupt_handler():
    """Ctrl-C raises KeyboardInterrupt as usual and also marks the run interrupted (see `RunPosition.interrupted`);
    returns the previous handler (None where no handler can be installed: not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    POSITION.interrupted = False
    return signal.signal(signal.SIGINT, _interrupt)


def sweep_exit_code() -> int:
    """After a multirun: print which jobs failed and why, and return 2 if any did (else 0)."""
    failed: list[JobFailure] = SWEEP["failed"]
    if not failed:
        return 0
    lines = [f"fdistill: {len(failed)} of {len(SWEEP['started'])} jobs of the sweep failed (the others ran to the end):"]
    for failure in failed:
        lines.append(f"  job {failure.job}: {failure.message}\n    run dir: {failure.run_dir}")
    print("\n".join(lines), file=sys.stderr)
    return EXIT_CONFIG_ERROR


def _composable(overrides: Sequence[str]) -> list[str]:
    """The overrides of a multirun's first job: each sweep (`a=1,2`, `range(...)`) at its first value (a sweep
    left out could leave a config no job has, e.g. several teachers without an ensemble method)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    def first(override) -> list[str]:
        if not override.is_sweep_override():
            return [override.input_line]
        try:
            return [f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"]
        except Exception:  # noqa: BLE001 - glob(...) needs the config repository: left to the jobs' own checks
            return []

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [line for override in parsed for line in first(override)]


def precheck(argv: Sequence[str], config_dir: Path) -> None:
    """Compose the config the command line asks for and validate it (schema, ranges, unknown keys); for
    a single run also the output and cache locations. A failure exits with the message and code 2."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser

    from fdistill.config import validate_config
    from fdistill.pipeline.preflight import check_storage, preflight

    args, _ = get_args_parser().parse_known_args(list(argv))
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    overrides = _composable(args.overrides)
    if not any(item.lstrip("+~").startswith("paths.root=") for item in overrides):
        overrides.append(f"paths.root={os.getcwd()}")  # what ${hydra:runtime.cwd} resolves to in a run
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(args.config_name or "config", overrides=overrides)
        typed = validate_config(cfg)
        preflight(typed, check_resources=False)
        if not args.cfg and not args.multirun:
            check_storage(typed)
    except FdistillError as error:
        fail(error)
