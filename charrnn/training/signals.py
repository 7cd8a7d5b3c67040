"""Ctrl-C and SIGTERM during training: they set a flag; the loop finishes its step, saves and exits."""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """SIGINT / SIGTERM set `caught`; the training loop finishes its step, saves and exits 130 / 143.
    A second signal while saving only sets the flag again, so a save is never cut short."""

    def __init__(self):
        self.caught: int | None = None
        self.previous: dict = {}  # the handlers from before `install`

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; a run in a thread is stopped by its caller

        def handler(signum, frame):
            self.caught = signum

        self.previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        """The handlers from before `install`, back."""
        for s, h in self.previous.items():
            signal.signal(s, h)
