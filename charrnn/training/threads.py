"""Fewer CPU threads while another program competes for the cores.

Torch runs one OpenMP thread per core, and at every barrier a thread spins while it waits for the
others. When another busy process shares the cores, the thread being waited for is often the one the
scheduler has set aside, and each barrier costs a time slice: training slows to a crawl, where one
thread per process keeps about half the speed (benchmarks/contention.py measures it; docs/design.md
has the figures). Spinning less (OMP_WAIT_POLICY=PASSIVE) avoids it too but slows an idle machine.

So a timed run on a CPU measures its speed in windows of a few steps and compares thread counts:
it tries one thread for a window early on (a run started next to a busy program), and again
whenever a window runs at under a quarter of the best so far. While on one thread it tries all of
them again now and then, less often each time they lose. Whichever is faster is kept.

Scoring a text outside training (`eval`, `surprise`) does the same, each SCORING_STEP characters a step
(`ScoringWatch`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

WINDOW = 3  # steps per measured window
COLLAPSE = 4.0  # a window this many times slower than the best: the cores are contended
RETRY = 30.0  # seconds on one thread before trying all of them again; doubles each time they lose
RETRY_MAX = 240.0


class ThreadGovernor:
    """Torch's CPU thread count for one run, chosen from the measured speed of its steps."""

    def __init__(self, threads: int | None = None, work: str = "trains", worker: str = "the run"):
        self.most = threads or torch.get_num_threads()
        self.work, self.worker = work, worker  # for the messages: "1 thread trains ... so the run goes on"
        self.steps, self.seconds = 0, 0.0  # the window being measured
        self.windows = 0
        self.best = 0.0  # characters per second of the best window on all threads
        self.rate = {}  # thread count -> characters per second of its last window
        self.trial: int | None = None  # the thread count a trial came from
        self.retry, self.next_retry = RETRY, 0.0

    def step(self, seconds: float, characters: int, now: float) -> str | None:
        """Take one training step's time; a message for the user when the thread count changes."""
        if self.most < 2:
            return None
        self.steps, self.seconds = self.steps + 1, self.seconds + seconds
        if self.steps < WINDOW:
            return None
        rate = self.steps * characters / max(self.seconds, 1e-9)
        self.steps, self.seconds = 0, 0.0
        self.windows += 1
        return self._window(rate, now) if self.windows > 1 else None  # the first window sets up kernels

    def _window(self, rate: float, now: float) -> str | None:
        threads = torch.get_num_threads()
        self.rate[threads] = rate
        if threads == self.most:
            self.best = max(self.best, rate)
        if self.trial is not None:
            return self._decide(threads, now)
        if threads == self.most and (1 not in self.rate or rate < self.best / COLLAPSE):
            self._try(1)
        elif threads == 1 and now >= self.next_retry:
            self._try(self.most)
        return None

    def _try(self, threads: int) -> None:
        self.trial = torch.get_num_threads()
        torch.set_num_threads(threads)

    def _decide(self, threads: int, now: float) -> str | None:
        """After a trial window: keep the faster thread count."""
        came_from, self.trial = self.trial, None
        if self.rate[threads] < self.rate[came_from]:
            torch.set_num_threads(came_from)
            if came_from == 1:  # all threads lost again: wait longer before the next try
                self.retry = min(2 * self.retry, RETRY_MAX)
                self.next_retry = now + self.retry
            return None
        if threads == 1:
            self.retry, self.next_retry = RETRY, now + RETRY
            return (
                f"another program is using the CPU: 1 thread {self.work} {self.rate[1] / self.rate[came_from]:.1f}x "
                f"faster than {came_from} now, so {self.worker} goes on with 1 and tries {came_from} again later"
            )
        self.best = self.rate[threads]
        return f"the CPU is free again: back to {threads} threads"

    def restore(self) -> None:
        """Leave torch with the thread count the run started with."""
        torch.set_num_threads(self.most)


SCORING_STEP = 65_536  # characters of a scoring outside training that the governor takes as one step
Done = Callable[[int, int], None] | None  # hears (characters done, characters in all) as a scoring goes
Note = Callable[[str], None] | None  # hears a message for the user: the thread count changed


class ScoringWatch:
    """Follows a scoring outside training: tells `progress(done, total)` how many of `total`
    characters are scored after each batch, and on a CPU lets a ThreadGovernor choose the thread
    count from the time each SCORING_STEP characters take, its messages to `note`. A context
    manager: the thread count it started with comes back at the end."""

    def __init__(
        self,
        total: int,
        device: torch.device,
        progress: Done = None,
        note: Note = None,
    ):
        self.total, self.progress, self.note = total, progress, note
        self.governor = ThreadGovernor(work="scores", worker="scoring") if device.type == "cpu" else None
        self.start = self.last = time.perf_counter()
        self.counted = 0  # characters scored when the governor's step began

    def __call__(self, done: int) -> None:
        if self.progress is not None:
            self.progress(done, self.total)
        if self.governor is None or done - self.counted < SCORING_STEP:
            return
        now = time.perf_counter()
        message = self.governor.step(now - self.last, done - self.counted, now - self.start)
        self.last, self.counted = now, done
        if message and self.note is not None:
            self.note(message)

    def __enter__(self) -> ScoringWatch:
        return self

    def __exit__(self, *exc) -> None:
        if self.governor is not None:
            self.governor.restore()
