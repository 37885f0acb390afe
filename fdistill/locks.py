"""File locks that say whom they wait for.

A lock is an ``flock`` on a file (the `filelock` package): the kernel releases it when its holder dies, so a
killed builder's lock is free at once. Next to it, ``<lock>.holder`` records who holds it (pid, host, since
when, command), so a process that has to wait says so once and then every `report_every` seconds instead of
waiting in silence, and a refused run dir names the process that holds it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from fdistill.files import write_json_atomic

log = logging.getLogger(__name__)

HOLDER_SUFFIX = ".holder"
#: seconds between "still waiting" lines
REPORT_EVERY = 60.0


def holder_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + HOLDER_SUFFIX)


def describe_holder(lock_path: Path) -> str:
    """"pid N on HOST since T (command)" of the process that holds `lock_path`, as far as it recorded itself."""
    try:
        holder = json.loads(holder_path(lock_path).read_text())
        return (f"pid {holder['pid']} on {holder['host']} since {holder['since']} "
                f"({' '.join(holder.get('command', []))})")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that did not record itself"


def _record_holder(lock_path: Path) -> None:
    write_json_atomic(holder_path(lock_path), {
        "pid": os.getpid(), "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": sys.argv[:4]})


@contextmanager
def held_lock(lock_path: str | os.PathLike, what: str, report_every: float = REPORT_EVERY) -> Iterator[None]:
    """Hold the lock on `lock_path` for the block, waiting as long as it takes; while waiting, log who holds
    it once and then every `report_every` seconds. `what` names the locked thing in those lines."""
    lock_path = Path(lock_path)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        started = time.monotonic()
        log.warning("waiting for the lock on %s, held by %s", what, describe_holder(lock_path))
        while True:
            try:
                lock.acquire(timeout=report_every)
                break
            except Timeout:
                log.warning("still waiting for the lock on %s (%.0f min so far), held by %s", what,
                            (time.monotonic() - started) / 60, describe_holder(lock_path))
        log.info("got the lock on %s after %.0f s", what, time.monotonic() - started)
    try:
        _record_holder(lock_path)
        yield
    finally:
        holder_path(lock_path).unlink(missing_ok=True)
        lock.release()


@contextmanager
def try_lock(lock_path: str | os.PathLike) -> Iterator[bool]:
    """The lock if it is free now (True, held for the block), else False at once; no waiting."""
    lock_path = Path(lock_path)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        _record_holder(lock_path)
        yield True
    finally:
        holder_path(lock_path).unlink(missing_ok=True)
        lock.release()


def is_held(lock_path: str | os.PathLike) -> bool:
    """Whether a live process holds `lock_path`, tested without creating the file (absent: not held)."""
    import fcntl

    try:
        handle = os.open(str(lock_path), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
    finally:
        os.close(handle)
