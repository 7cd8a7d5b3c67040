"""Continuous batching: every request in flight advances by one character per recurrent step.

A request (a `Job`, with `count` samples) is primed through the model's batched forward pass, as
`charrnn sample` primes (requests arriving together in one call), then joins the batch: its rows
of hidden state and logits are appended to everyone else's. Each step draws the next character of
every row with that request's own decoding and random generator (rows that share a decoding in one
call), hands the characters to the requests, then runs one `FastStep` for the rows still going.
A finished or cancelled request leaves the batch before the model's step.

Long work, the priming of a long prompt or the scoring of a text, runs a slice at a time between
two steps (`Engine.start_work`): one forward call of at most SLICE characters per step over all such
work, taken in turn, so that the rows in flight wait one slice at most between two characters.

One worker thread owns the models and their state; the HTTP side only submits work and reads
text. A request alone in the batch computes exactly what `charrnn sample` computes, so a seed
reproduces the same text (tests/test_serve.py); rows batched with others differ from it by float
rounding, and in bf16 (LOW_PRECISION_ROWS) by about 1e-3 in the logits.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue

import torch

from charrnn.data.vocab import Vocab
from charrnn.generation.sampler import Decoding, Sampler, Stops, make_generator
from charrnn.model.fast_step import FastStep, map_state
from charrnn.model.network import CharRNN
from charrnn.model.scoring import CHUNK
from charrnn.serving.draws import Group

# How often the running requests are told that new text is waiting, all on the same step: one
# wake-up per character and request would cost the HTTP side more than the model's step costs.
# Each stream's event has a fixed cost in the event loop whatever it carries, so with many streams
# the interval grows to keep to about EVENTS_PER_SECOND events, up to NOTIFY_INTERVAL_MAX.
NOTIFY_INTERVAL = 0.015
NOTIFY_INTERVAL_MAX = 0.05
EVENTS_PER_SECOND = 1000

# With many rows the step's matrix products are compute-bound and one more thread speeds them up
# little, while it takes the core that the HTTP side needs to stream the rows; a step of a few rows
# is memory-bound and keeps every thread (benchmarks/serve_load.py measures both).
MANY_ROWS = 8

# From this many rows a step's products run in bf16 when the server was started with a lower
# precision (`--precision auto` on a CPU with native bf16): faster for a full batch, slower for a
# few rows. A request alone, or among a few, computes in fp32 as `charrnn sample` does.
LOW_PRECISION_ROWS = 16

# Characters of long work per slice: as `charrnn eval` reads a text (scoring.CHUNK), so that a text
# scored in slices gives eval's figure, and a prompt primed in slices `charrnn sample`'s state.
SLICE = CHUNK


def step_threads(rows: int, threads: int) -> int:
    """Torch threads for a step of `rows` rows when `threads` are available: one core is left to
    the HTTP side once the batch has MANY_ROWS rows."""
    return max(1, threads - 1) if rows >= MANY_ROWS else threads


SHUTTING_DOWN = "the server is shutting down"


class ShuttingDown(Exception):
    """Work handed to an engine that has stopped."""


@dataclass(eq=False)
class Job:
    """One completion request: `count` samples of up to `length` characters after `prompt`."""

    prompt: str
    length: int
    decoding: Decoding
    count: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    notify: Callable[[], None] = lambda: None  # called from the worker thread when there is news
    # Written by the worker thread, read by the HTTP side under `lock`:
    texts: list[list[str]] = field(default_factory=list)
    finish: list[str | None] = field(default_factory=list)
    error: str | None = None
    cancelled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.texts = [[] for _ in range(self.count)]
        self.finish = [None] * self.count

    @property
    def done(self) -> bool:
        return self.error is not None or all(f is not None for f in self.finish)

    def read(self, row: int, start: int) -> tuple[str, str | None]:
        """Row `row`'s text from character `start` on, and its finish reason (None while running)."""
        with self.lock:
            return "".join(self.texts[row][start:]), self.finish[row]


class Batch:
    """The requests in flight on one model, and their stacked state."""

    def __init__(self, model: CharRNN, vocab: Vocab, low: torch.dtype | None = None):
        self.fast = FastStep(model, low)
        self.low = low is not None
        self.sampler = Sampler(model, vocab, fast=self.fast)  # primes each request as `charrnn sample` does
        self.chars = vocab.chars
        self.jobs: list[_Running] = []
        self.joining: list[Job] = []  # added, primed at the start of the next step
        self.priming: list[Job] = []  # long prompts primed a slice at a time (`prime_in_slices`)
        self.groups: list[Group] = []  # how `_choose` draws, rebuilt when requests join or leave
        self.state: list | None = None
        self.logits: torch.Tensor | None = None
        self.notified = 0.0  # when the requests in flight were last told of new text

    @property
    def rows(self) -> int:
        return sum(r.job.count for r in self.jobs)

    def add(self, job: Job) -> None:
        """Queue `job`; it is primed and joins the batch at the start of the next step."""
        if job.length == 0:
            with job.lock:
                job.finish = ["length"] * job.count
            job.notify()
            return
        self.joining.append(job)

    def prime_in_slices(self, job: Job) -> Iterator[None]:
        """The slices that prime `job`'s prompt, SLICE characters each, after which it joins the
        batch; for `Engine.start_work`. The state is the one `charrnn sample` primes in one call."""
        self.priming.append(job)
        return self._slices(job, Sampler(self.sampler.model, self.sampler.vocab, fast=self.fast))

    def _slices(self, job: Job, sampler: Sampler) -> Iterator[None]:
        try:
            for start in range(0, len(job.prompt), SLICE):
                if job.cancelled or job.error:
                    return
                sampler.feed(job.prompt[start : start + SLICE], job.count)
                yield
            self._append([job], sampler.state, sampler.logits)
        except Exception as e:  # only this request fails; those in flight go on
            job.error = f"internal error: {type(e).__name__}: {e}"
            job.notify()
        finally:
            if job in self.priming:  # not when `fail` has ended it
                self.priming.remove(job)

    def step(self) -> None:
        """One character for every row in flight, handed out before the model's step; finished and
        cancelled requests leave before it, so no step is spent on them."""
        self._join()
        self._drop([r for r in self.jobs if r.job.cancelled])
        if not self.jobs:
            return
        ids = self._choose()
        flat, start, now = ids.tolist(), 0, time.monotonic()
        interval = min(NOTIFY_INTERVAL_MAX, max(NOTIFY_INTERVAL, len(flat) / EVENTS_PER_SECOND))
        tick = now - self.notified >= interval
        if tick:
            self.notified = now
        for r in self.jobs:
            r.advance([self.chars[i] for i in flat[start : start + r.job.count]], tick)
            start += r.job.count
        keep = self._drop([r for r in self.jobs if r.job.done])
        if self.jobs:
            ids = ids if keep is None else ids.index_select(0, keep)
            low = self.low and len(ids) >= LOW_PRECISION_ROWS
            self.logits, self.state = self.fast.step(ids, self.state, low)

    def fail(self, reason: str) -> None:
        """End every request in flight or joining with `reason` as its error."""
        for job in [r.job for r in self.jobs] + self.joining + self.priming:
            job.error = reason
            job.notify()
        self.jobs, self.joining, self.priming, self.groups, self.state, self.logits = [], [], [], [], None, None

    def _join(self) -> None:
        """Prime the requests that arrived since the last step and append their rows. A request
        alone is primed exactly as `charrnn sample` primes it; requests arriving together with
        prompts of one length are primed in one batched call, so that none waits for the others'
        priming one by one (32 of them took 220 ms, one by one, on a 2x512 LSTM)."""
        joining, self.joining = [j for j in self.joining if not j.cancelled], []
        by_length: dict[int, list[Job]] = {}
        for job in joining:
            by_length.setdefault(len(job.prompt), []).append(job)
        for jobs in by_length.values():
            try:
                self._prime(jobs)
            except Exception as e:  # only these requests fail; those in flight go on
                for job in jobs:
                    job.error = f"internal error: {type(e).__name__}: {e}"
                    job.notify()

    def _prime(self, jobs: list[Job]) -> None:
        self.sampler.reset()
        if len(jobs) == 1:
            self.sampler.feed(jobs[0].prompt, jobs[0].count)
        else:
            self.sampler.feed_rows([job.prompt for job in jobs for _ in range(job.count)])
        self._append(jobs, self.sampler.state, self.sampler.logits)

    def _append(self, jobs: list[Job], state: list, logits: torch.Tensor) -> None:
        """Add primed requests, with their rows of state and logits, to the batch."""
        if self.jobs:
            state = map_state(lambda old, new: torch.cat([old, new]), self.state, state)
            logits = torch.cat([self.logits, logits])
        self.state, self.logits = state, logits
        for job in jobs:
            generator = make_generator(job.seed, self.sampler.device)
            self.jobs.append(_Running(job, generator, Stops(job.stop, job.count)))
        self.groups = Group.of(self.jobs)

    def _choose(self) -> torch.Tensor:
        """The next character of every row: one draw per group of rows that share their decoding."""
        if len(self.groups) == 1 and self.groups[0].index is None:
            return self.groups[0].choose(self.logits)
        ids = torch.empty(self.logits.shape[0], dtype=torch.long, device=self.logits.device)
        for group in self.groups:
            ids[group.index] = group.choose(self.logits.index_select(0, group.index))
        return ids

    def _drop(self, leaving: list[_Running]) -> torch.Tensor | None:
        """Remove `leaving` and their rows; the index of the rows kept (None when none leave)."""
        if not leaving:
            return None
        keep, start = [], 0
        for r in self.jobs:
            if r not in leaving:
                keep.extend(range(start, start + r.job.count))
            start += r.job.count
        self.jobs = [r for r in self.jobs if r not in leaving]
        self.groups = Group.of(self.jobs)
        if not keep:
            self.state, self.logits = None, None
            return None
        index = torch.tensor(keep, device=self.logits.device)
        self.state = map_state(lambda t: t.index_select(0, index), self.state)
        self.logits = self.logits.index_select(0, index)
        return index


@dataclass(eq=False)
class _Running:
    """A job in a batch, with the random generator and stop tracking of its rows."""

    job: Job
    generator: torch.Generator | None
    stops: Stops
    steps: int = 0

    def advance(self, chars: list[str], tick: bool) -> None:
        """Hand out the rows' new characters; tell the request on a tick, its first character or its end."""
        job = self.job
        self.steps += 1
        out = self.stops.advance(chars)
        with job.lock:
            for row, ch in enumerate(out):
                if job.finish[row] is not None:
                    continue
                job.texts[row].append(ch)
                if self.stops.done[row]:
                    job.finish[row] = "stop"
                elif self.steps >= job.length:
                    job.finish[row] = "length"
        if tick or self.steps == 1 or job.done:
            job.notify()


class Engine:
    """The worker thread: runs submitted calls between steps and steps every model's batch."""

    def __init__(self, models: dict[str, tuple[CharRNN, Vocab]], low: torch.dtype | None = None):
        self.batches = {name: Batch(model, vocab, low) for name, (model, vocab) in models.items()}
        self.tasks: SimpleQueue = SimpleQueue()
        self.working: deque[tuple[Iterator, Future]] = deque()  # long work, a slice per step in turn
        self.thread = threading.Thread(target=self._run, name="charrnn-engine", daemon=True)
        self.stopping = False

    def start(self) -> None:
        self.thread.start()

    def halt(self) -> None:
        """Stop after the current step; requests in flight end with "the server is shutting down"."""
        self.stopping = True
        self.tasks.put(None)

    def stop(self) -> None:
        self.halt()
        self.thread.join(timeout=10)

    def submit(self, fn: Callable, *args) -> Future:
        """Run fn(*args) on the worker thread, between two steps."""
        future: Future = Future()
        if self.stopping:
            future.set_exception(ShuttingDown(SHUTTING_DOWN))
        else:
            self.tasks.put((future, fn, args))
        return future

    def start_job(self, model: str, job: Job) -> Future:
        """Queue `job` on `model`'s batch; a prompt longer than a slice is primed in slices first."""
        batch = self.batches[model]
        if len(job.prompt) <= SLICE or job.length == 0:
            return self.submit(batch.add, job)
        return self.submit(lambda: self.working.append((batch.prime_in_slices(job), Future())))

    def start_work(self, slices: Iterator) -> Future:
        """Run the generator `slices` one slice (a `next`) per step, in turn with other such work;
        the future gets its return value or exception. Cancelling the future stops the work before
        its next slice."""
        future: Future = Future()

        def refused(queued: Future) -> None:  # the engine had stopped
            if queued.exception() is not None:
                future.set_exception(queued.exception())

        self.submit(self.working.append, (slices, future)).add_done_callback(refused)
        return future

    def rows(self) -> int:
        return sum(b.rows for b in self.batches.values())

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        available = torch.get_num_threads()
        while not self.stopping:
            idle = not self.working and not any(b.jobs or b.joining for b in self.batches.values())
            self._run_tasks(block=idle)
            threads = step_threads(self.rows() + sum(len(b.joining) for b in self.batches.values()), available)
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
            self._run_slice()
            for batch in self.batches.values():
                try:
                    batch.step()
                except Exception as e:  # a bug must not leave every request waiting forever
                    batch.fail(f"internal error: {type(e).__name__}: {e}")
        for batch in self.batches.values():
            batch.fail(SHUTTING_DOWN)
        for slices, future in self.working:
            slices.close()
            with contextlib.suppress(InvalidStateError):
                future.set_exception(ShuttingDown(SHUTTING_DOWN))
        self.working.clear()
        while not self.tasks.empty():  # work queued as the engine stopped: answered, not left waiting
            if (task := self.tasks.get_nowait()) is not None:
                task[0].set_exception(ShuttingDown(SHUTTING_DOWN))
        torch.set_num_threads(available)

    def _run_tasks(self, block: bool) -> None:
        while True:
            try:
                task = self.tasks.get(timeout=0.5) if block else self.tasks.get_nowait()
            except Empty:
                if block and not self.stopping:
                    continue
                return
            if task is None:
                return
            future, fn, args = task
            block = False
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except Exception as e:  # handed to the request that asked, as its error
                    future.set_exception(e)

    def _run_slice(self) -> None:
        """One slice of the long work that has waited longest, which then waits behind the others."""
        while self.working:
            slices, future = self.working.popleft()
            if future.cancelled():  # its client has gone
                slices.close()
                continue
            try:
                next(slices)
            except StopIteration as done:
                with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                    future.set_result(done.value)
            except Exception as e:  # handed to the request that asked, as its error
                with contextlib.suppress(InvalidStateError):
                    future.set_exception(e)
            else:
                self.working.append((slices, future))
            return
