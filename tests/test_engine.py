"""Continuous batching: requests that join and leave one batch get exactly what each would alone."""

import itertools
import math
import threading

import pytest
import torch

from charrnn.generation.sampler import Decoding, Request, Sampler, Stops, make_generator
from charrnn.serving.draws import Group
from charrnn.serving.engine import LOW_PRECISION_ROWS, MANY_ROWS, SLICE, Batch, Job, _Running, step_threads
from charrnn.storage import checkpoints as ckpt

SPECS = [
    dict(prompt="ANNA:", length=300, decoding=Decoding(1.0), seed=1),
    dict(prompt="BEN: the", length=200, decoding=Decoding(0.7, top_k=5), seed=2, count=3, stop=["."]),
    dict(prompt="", length=250, decoding=Decoding(1.2, top_p=0.9), seed=3, count=2, stop=["the"]),
    dict(prompt="ANNA: the cat", length=120, decoding=Decoding(0)),
]


@pytest.fixture(scope="module")
def loaded(trained_run):
    torch.set_grad_enabled(False)
    yield ckpt.load(trained_run)
    torch.set_grad_enabled(True)


def alone(loaded, spec) -> list[str]:
    """What `charrnn sample` generates for the same request."""
    sampler = Sampler(loaded.model, loaded.vocab)
    count = spec.get("count", 1)
    request = Request(spec["prompt"], spec["length"], count, spec.get("stop", []), spec.get("seed"))
    rows = [[] for _ in range(count)]
    for chars in sampler.generate(request, spec["decoding"]):
        for row, ch in enumerate(chars):
            rows[row].append(ch)
    return ["".join(r) for r in rows]


def test_requests_joining_at_different_steps_match_their_solo_runs(loaded):
    batch = Batch(loaded.model, loaded.vocab)
    jobs = []
    for spec in SPECS:  # each joins while the earlier ones are part-way through
        jobs.append(Job(**spec))
        batch.add(jobs[-1])
        for _ in range(7):
            batch.step()
    while batch.jobs:
        batch.step()
    for spec, job in zip(SPECS, jobs):
        assert ["".join(t) for t in job.texts] == alone(loaded, spec)
    assert jobs[1].finish.count("stop") >= 1 and jobs[0].finish == ["length"]


def test_a_cancelled_request_leaves_and_the_others_go_on(loaded):
    batch = Batch(loaded.model, loaded.vocab)
    leaving, staying = Job(**SPECS[0]), Job(**SPECS[2])
    batch.add(leaving)
    batch.add(staying)
    batch.step()
    leaving.cancelled = True
    batch.step()
    assert batch.rows == 2 and len(leaving.texts[0]) == 1
    while batch.jobs:
        batch.step()
    assert ["".join(t) for t in staying.texts] == alone(loaded, SPECS[2])


def test_requests_joining_in_the_same_step_match_their_solo_runs(loaded):
    specs = [dict(spec, prompt="ANNA:", length=150) for spec in SPECS]  # one prompt length: primed together
    batch = Batch(loaded.model, loaded.vocab)
    jobs = [Job(**spec) for spec in specs]
    for job in jobs:
        batch.add(job)
    batch.step()
    assert batch.rows == 7 and all(len(t) == 1 for job in jobs for t in job.texts)  # first characters at once
    while batch.jobs:
        batch.step()
    for spec, job in zip(specs, jobs):
        assert ["".join(t) for t in job.texts] == alone(loaded, spec)


def test_a_busy_batch_computes_in_bf16_and_a_few_requests_in_full_precision(loaded):
    def logits(rows: int, low: torch.dtype | None) -> torch.Tensor:
        batch = Batch(loaded.model, loaded.vocab, low)
        for _ in range(rows):
            batch.add(Job("BEN:", 50, Decoding(0)))
        for _ in range(5):
            batch.step()
        return batch.logits

    few = LOW_PRECISION_ROWS - 1  # below the threshold: exactly `charrnn sample`'s arithmetic
    assert torch.equal(logits(few, torch.bfloat16), logits(few, None))
    busy, exact = logits(LOW_PRECISION_ROWS, torch.bfloat16), logits(LOW_PRECISION_ROWS, None)
    assert not torch.equal(busy, exact) and (busy - exact).abs().max() < 0.02


def test_in_a_busy_bf16_batch_a_request_does_not_depend_on_the_others(loaded):
    def busy(others: Decoding) -> str:
        batch = Batch(loaded.model, loaded.vocab, low=torch.bfloat16)
        mine = Job(**SPECS[1])
        for job in [mine] + [Job("ANNA:", 300, others) for _ in range(LOW_PRECISION_ROWS)]:
            batch.add(job)
        while batch.jobs or batch.joining:
            batch.step()
        return ["".join(t) for t in mine.texts]

    assert busy(Decoding(0)) == busy(Decoding(1.5, top_k=3))


def test_drawing_rows_together_equals_drawing_each_request_with_its_own_seed():
    """The engine draws all rows sharing a decoding in one call; each seeded request must still
    get exactly the characters `Decoding.choose` draws from its own generator, as `charrnn sample` does."""
    torch.manual_seed(0)
    for decoding in (Decoding(1.0), Decoding(0.7, top_k=5), Decoding(1.3, top_p=0.8)):
        counts, seeds = [1, 3, 2, 1], [7, 8, 9, 10]
        jobs = [
            _Running(Job("", 10, decoding, c, seed=s), make_generator(s, torch.device("cpu")), Stops([], c))
            for c, s in zip(counts, seeds)
        ]
        (group,) = Group.of(jobs)
        solo = [make_generator(s, torch.device("cpu")) for s in seeds]
        for _ in range(200):
            logits = torch.randn(sum(counts), 65) * 3
            together = group.choose(logits).tolist()
            rows = torch.split(logits, counts)
            each = torch.cat([decoding.choose(r, g) for r, g in zip(rows, solo)]).tolist()
            assert together == each


def test_a_batch_of_many_rows_leaves_one_core_to_the_http_side():
    assert step_threads(1, 2) == 2 and step_threads(MANY_ROWS - 1, 16) == 16  # a few rows: every thread
    assert step_threads(MANY_ROWS, 2) == 1 and step_threads(32, 16) == 15 and step_threads(32, 1) == 1


def test_work_handed_to_a_stopped_engine_is_answered_not_left_waiting(loaded):
    """Between Ctrl-C and the server's end, a request can still arrive: it gets "shutting down" at
    once, rather than a wait that ends in uvicorn cancelling it."""
    from charrnn.serving.engine import Engine, ShuttingDown

    engine = Engine({"run": (loaded.model, loaded.vocab)})
    engine.start()
    assert engine.submit(lambda: 7).result(timeout=10) == 7
    engine.stop()
    with pytest.raises(ShuttingDown, match="shutting down"):
        engine.submit(lambda: 7).result(timeout=10)


LONG = "ANNA: the cat sat on a mat.\nBEN: the dog ran.\n" * 12  # several slices long


def test_a_long_prompt_is_primed_a_slice_at_a_time_and_gives_sample_s_text(loaded):
    spec = dict(prompt=LONG, length=80, decoding=Decoding(0.9), seed=6, count=2)
    batch = Batch(loaded.model, loaded.vocab)
    job = Job(**spec)
    slices = 0
    for _ in batch.prime_in_slices(job):  # the engine steps the batch between two slices
        slices += 1
        assert batch.rows == 0 and batch.priming == [job]
    assert slices == math.ceil(len(LONG) / SLICE) and batch.rows == 2 and batch.priming == []
    while batch.jobs:
        batch.step()
    assert ["".join(t) for t in job.texts] == alone(loaded, spec)


def test_long_work_runs_a_slice_between_two_steps_and_stops_once_cancelled(loaded):
    """Scoring and long primes run a slice at a time: a stream in flight draws one character
    between two slices, however long the work; cancelled work stops before its next slice."""
    from charrnn.serving.engine import Engine

    engine = Engine({"run": (loaded.model, loaded.vocab)})
    engine.start()
    try:
        stream = Job("ANNA:", 100_000, Decoding(1.0))
        engine.start_job("run", stream).result(timeout=10)
        seen = []

        def work():
            for _ in range(20):
                seen.append(len(stream.texts[0]))  # on the engine's thread, between two steps
                yield
            return "done"

        assert engine.start_work(work()).result(timeout=60) == "done"
        assert [b - a for a, b in zip(seen, seen[1:])] == [1] * 19

        ran, closed, future = [], threading.Event(), []

        def endless():
            try:
                for i in itertools.count():
                    ran.append(i)
                    if i == 3:
                        future[0].cancel()  # as the server does when the client hangs up
                    yield
            finally:
                closed.set()

        future.append(engine.start_work(endless()))
        assert closed.wait(timeout=60) and ran == [0, 1, 2, 3]
    finally:
        engine.stop()


def test_long_work_in_flight_when_the_engine_stops_is_answered(loaded):
    from charrnn.serving.engine import Engine, ShuttingDown

    engine = Engine({"run": (loaded.model, loaded.vocab)})
    engine.start()
    priming = Job(LONG * 50, 10, Decoding(1.0))
    engine.start_job("run", priming).result(timeout=10)
    work = engine.start_work(iter(itertools.count()))
    engine.stop()
    with pytest.raises(ShuttingDown, match="shutting down"):
        work.result(timeout=10)
    assert priming.error == "the server is shutting down" and not engine.thread.is_alive()


def test_a_whole_reply_whose_job_failed_between_two_looks_is_an_error_not_partial_text(loaded):
    """A request waiting for its whole reply checks its job between waits for news: when the engine
    failed the job (shutting down) in between, the reply was a 200 with partial text."""
    import asyncio
    from types import SimpleNamespace

    from charrnn.serving.replies import Reply
    from charrnn.serving.requests import ApiError, Completion

    server = SimpleNamespace(runs={"m": loaded}, wakeups=None, streams=1)
    c = Completion("m", "A", 100, Decoding(), 1, [], 1, False, False, False)
    reply = Reply(server, c)
    reply.job.error = "the server is shutting down"  # failed with no news sent yet

    async def disconnected():
        return False

    with pytest.raises(ApiError) as e:
        asyncio.run(reply.whole(SimpleNamespace(is_disconnected=disconnected)))
    assert e.value.status == 503 and "shutting down" in e.value.message
