"""What `run.py` wraps around Hydra: fdistill's own errors as one message with exit code 2 (a traceback only
for unexpected errors), and a check of the composed config before Hydra does anything with it, so that
``--cfg job`` validates what it prints and an output dir that cannot be created fails with a message."""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from fdistill.errors import FdistillError, StorageError

log = logging.getLogger("fdistill")
EXIT_CONFIG_ERROR = 2
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.ENOTDIR}


def fail(error: Exception) -> None:
    """Log (into run.log, when Hydra set it up) and print `error` without a traceback; exit with code 2."""
    log.debug("fdistill error", exc_info=error)
    print(f"fdistill: error: {error}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG_ERROR)


@contextmanager
def guarded() -> Iterator[None]:
    """fdistill's errors, and storage failures (disk full, read-only, not a directory), end the run cleanly."""
    try:
        yield
    except FdistillError as error:
        fail(error)
    except OSError as error:
        if error.errno not in STORAGE_ERRNOS:
            raise
        fail(StorageError(f"cannot write {error.filename or 'a file'}: {error.strerror} (errno {error.errno}); "
                          "free disk space or point paths.output_dir / paths.cache_dir at a writable disk. "
                          "Finished stages and checkpoints stay valid: re-run the same command to resume"))


def _composable(overrides: Sequence[str]) -> list[str]:
    """The overrides without sweeps (`a=1,2`, `range(...)`), which only a multirun expands."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [override.input_line for override in parsed if not override.is_sweep_override()]


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
