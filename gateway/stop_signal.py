"""SIGTERM before a job installs its own handlers (which finish the batch in flight) is a clean stop: exit 0,
not death by the signal. Installed first thing by `python -m gateway` and by the `gateway` command (both enter
through gateway/launch.py), so an orchestrator that stops a process still starting (importing, connecting,
creating topics) sees success.

The moments before Python runs any of our code cannot have a handler; a parent that starts us (the
`--processes` supervisor) closes that gap by starting the child with SIGTERM blocked (`sigterm_blocked`):
the signal waits, pending, until the handler is installed and SIGTERM unblocked here."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType

_SIGTERM = {signal.SIGTERM}


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    """os._exit, not sys.exit: a handler runs wherever the main thread is, and SystemExit raised inside a C
    extension's call (confluent-kafka parsing a client's settings) came out as a TypeError and exit 1.
    Nothing before a job's own handlers holds state to save: start-up only reads and creates topics."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # mid-write when the signal came: the line is lost, not the exit
            stream.flush()
    os._exit(0)


def exit_cleanly_on_sigterm() -> None:
    """The handler, then SIGTERM unblocked: a signal sent while a parent had it blocked is delivered now."""
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGTERM)


@contextlib.contextmanager
def sigterm_blocked() -> Iterator[None]:
    """SIGTERM blocked on the calling thread for the block's duration: a child started inside it inherits the
    blocked mask across exec, and holds a SIGTERM pending until `exit_cleanly_on_sigterm` runs."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGTERM)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
