"""SIGTERM before a job installs its own handlers (which finish the batch in flight) is a clean stop: exit 0,
not death by the signal. Installed first thing by `python -m gateway` and by the `gateway` command, so an
orchestrator that stops a process still starting (importing, connecting, creating topics) sees success."""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(0)


def exit_cleanly_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, _exit_cleanly)
