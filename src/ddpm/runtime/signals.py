"""Stop requests: SIGINT and SIGTERM ask a training run to stop after its current step.

The training commands take both signals over as the command line's first act (`catch`, in
`ddpm.cli.main`, before the subcommands and torch are imported), not only once the loop runs: a
scheduler's SIGTERM during the imports or the data's loading would otherwise kill at once, and a
Ctrl-C there raises KeyboardInterrupt wherever the interpreter happens to be, where a library can
swallow it (Python reports a KeyboardInterrupt raised inside a finaliser as "ignored" and goes on;
the chaos benchmark lost one so, and the run trained on to its last step). Caught, a signal at any
moment is a request that the loop honours at its first step. A second SIGINT aborts.

What no handler covers is the interpreter's own start, before `ddpm.cli` runs (some tens of
milliseconds): a signal there acts as it would on any Python program.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator, Optional


class StopRequest:
    requested: Optional[str] = None  # the name of the signal that asked


REQUEST = StopRequest()


def _handler(signum, frame) -> None:
    if REQUEST.requested and signum == signal.SIGINT:
        raise KeyboardInterrupt
    REQUEST.requested = signal.Signals(signum).name


def catch() -> dict:
    """Take SIGINT and SIGTERM over from now on (in the main thread); returns the handlers they had."""
    if signal.getsignal(signal.SIGINT) is not _handler:  # a new command (the tests run several in one process)
        REQUEST.requested = None
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    return previous


def release(previous: dict) -> None:
    """Give the signals back to the handlers `catch` returned."""
    for sig, old in previous.items():
        signal.signal(sig, old)


@contextmanager
def stop_on_signal() -> Iterator[StopRequest]:
    """While training: the request (one that came before, while the command started, included). It is
    cleared when the loop is done, and the handlers from before are back."""
    previous = catch()
    try:
        yield REQUEST
    finally:
        REQUEST.requested = None
        release(previous)
