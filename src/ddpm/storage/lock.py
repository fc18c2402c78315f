"""One writer per run directory: an exclusive advisory lock (flock) on RUN/.lock.

A process that writes a run (`ddpm train`, new or resumed; under torchrun, rank 0 for all ranks)
holds the lock for as long as it writes. The operating system drops it when the process ends, in
any way, `kill -9` included, so a lock is never stale. A second writer is refused at once, with
the PID and host of the holder, which the holder writes into the lock file.

Readers (sample, eval, show, report) take no lock: checkpoints are written atomically and `latest`
moves last, so they always find a complete one. `ddpm eval --run` appends its row to eval.csv
under a short lock of its own (`appending`), so two evaluations each add one whole row.

flock is advisory and local: some network file systems do not honour it, and then two writers
are not kept apart. Where the file system refuses locks outright, a warning says so and the run
goes on unlocked.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from ..errors import InputError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

LOCK_FILE = ".lock"


class RunLock:
    """The writer's lock on one run directory (which must exist)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._handle = None

    def acquire(self) -> None:
        """Take the lock, or raise InputError naming the process that holds it. Nothing is written
        yet: a process that is refused after this (a checkpoint that does not fit, say) leaves the
        run as it found it. `announce` writes the holder's name once the process will write anyway.
        Taking a lock this object holds already does nothing."""
        if self._handle is not None:
            return
        if not self.path.parent.is_dir():
            raise InputError(f"run directory {self.path.parent} does not exist; train one with "
                             f"'ddpm train --out {self.path.parent}'")
        handle = open(self.path, "a+")
        try:
            _flock(handle, blocking=False)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise InputError(f"run {self.path.parent} is being written by {holder}; wait for it to finish or stop "
                             f"it (Ctrl-C writes a checkpoint), then resume") from None
        except OSError as error:  # the file system does not lock (some network file systems)
            print(f"ddpm: warning: cannot lock {self.path} ({error.strerror}); make sure no other process writes "
                  f"this run", file=sys.stderr)
        self._handle = handle

    def announce(self, what: str = "training") -> None:
        """Write who holds the lock into the lock file, for a refused writer's message."""
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"PID {os.getpid()} on {socket.gethostname()} ({what} since "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S')})")
        self._handle.flush()

    def release(self) -> None:
        """Let go (the file stays: removing it would race with the next writer opening it)."""
        if self._handle is not None:
            self._handle.close()  # closing the file drops the lock
            self._handle = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def appending(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on .PATH.lock beside PATH while appending to it: writers wait their turn."""
    with open(Path(path).with_name(f".{Path(path).name}.lock"), "a") as handle:
        with contextlib.suppress(OSError):  # a file system without locks: append unlocked
            _flock(handle, blocking=True)
        yield


def holder(run_dir: Path) -> Optional[str]:
    """Who holds the run's lock now, or None if nobody does (for tests and messages)."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return None
    with open(path, "a+") as handle:
        try:
            _flock(handle, blocking=False)
        except BlockingIOError:
            handle.seek(0)
            return handle.read().strip()
        return None


def _flock(handle, blocking: bool) -> None:
    if fcntl is None:
        raise OSError(0, "no flock on this system")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
