"""Stopping a run cleanly: Ctrl-C (SIGINT) or SIGTERM ends the step in progress, the run saves a
checkpoint of the steps done, and `--resume` continues from it.

The first signal only asks (`StopRequests.requested`); the loop looks after each whole step, so a
checkpoint never holds a half-taken step. A second signal stops at once, as Ctrl-C always does.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """The run stopped on a signal; the message says what was saved and how to continue.
    `exit_code` is the shell's for that signal (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signal_name: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signal.Signals[signal_name])


class StopRequests:
    """The signal that asked the run to stop, if any."""

    def __init__(self) -> None:
        self.requested: str | None = None

    def ask(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # the second signal: stop now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\ncm train: {self.requested}: stopping after this step to save it (again: stop now)",
              file=sys.stderr, flush=True)


@contextmanager
def stop_requests(enabled: bool = True) -> Iterator[StopRequests]:
    """SIGINT and SIGTERM ask `StopRequests` while the block runs (only in the main thread, where
    Python delivers signals; elsewhere, or with `enabled=False`, signals act as they always do)."""
    requests = StopRequests()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield requests
        return
    previous = {s: signal.signal(s, requests.ask) for s in SIGNALS}
    try:
        yield requests
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


__all__ = ["StopRequests", "TrainingInterrupted", "stop_requests"]
