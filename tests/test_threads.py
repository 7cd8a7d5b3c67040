"""A timed CPU run, and a long scoring (`eval`, `surprise`), takes one thread while another program
competes for the cores, and all of them when they are the faster."""

import pytest
import torch
from conftest import generated_text

from charrnn.training.threads import RETRY, WINDOW, ThreadGovernor


@pytest.fixture
def governor():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield ThreadGovernor(2)
    torch.set_num_threads(before)


def window(governor: ThreadGovernor, speeds: dict[int, float], now: float) -> str | None:
    """One window of steps at the speed (characters per second) the current thread count gets."""
    rate = speeds[torch.get_num_threads()]
    messages = [governor.step(1000 / rate, 1000, now) for _ in range(WINDOW)]
    return next((m for m in messages if m), None)


def test_on_an_idle_machine_one_thread_is_tried_once_and_all_are_kept(governor):
    idle = {2: 100.0, 1: 70.0}
    messages = [window(governor, idle, now=t) for t in range(20)]
    assert messages == [None] * 20 and torch.get_num_threads() == 2
    assert governor.rate[1] == 70.0  # tried once, early on


def test_when_another_program_takes_the_cores_it_goes_on_with_one_thread_and_comes_back(governor):
    for t in range(5):
        window(governor, {2: 100.0, 1: 70.0}, now=t)
    busy = {2: 10.0, 1: 50.0}  # all threads collapse, one thread does not
    assert window(governor, busy, now=6) is None  # the slow window: one thread is tried next
    message = window(governor, busy, now=7)
    assert torch.get_num_threads() == 1 and "1 thread trains 5.0x faster than 2" in message
    t = 8
    while torch.get_num_threads() == 1 and t < 8 + RETRY + 5:  # all threads tried again after RETRY s
        window(governor, busy, now=t)
        t += 1
    window(governor, busy, now=t)  # ...and they lose: back to one, next try later
    assert torch.get_num_threads() == 1 and governor.next_retry >= t + 2 * RETRY
    idle = {2: 100.0, 1: 70.0}
    while torch.get_num_threads() == 1:
        t += 1
        window(governor, idle, now=t)
    assert window(governor, idle, now=t + 1) == "the CPU is free again: back to 2 threads"
    assert torch.get_num_threads() == 2


def test_a_run_started_next_to_a_busy_program_finds_one_thread_faster(governor):
    busy = {2: 5.0, 1: 50.0}
    messages = [window(governor, busy, now=t) for t in range(4)]
    assert torch.get_num_threads() == 1 and any(m and "1 thread" in m for m in messages)


def test_a_run_on_one_thread_is_left_alone():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        governor = ThreadGovernor(1)
        assert all(governor.step(0.01 * (i + 1), 1000, i) is None for i in range(30))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_long_scoring_reports_progress_and_takes_one_thread_while_another_program_competes(
    trained_run, tmp_path, monkeypatch, simulated_clock
):
    """`eval` took 134.8 s on a busy machine where it took 16 s a minute later, with nothing on
    screen. Scoring now reports its progress and adapts its threads as training does; the figure
    stays the same. The simulated cores: next to another program, 2 threads score 20,000
    characters a second and 1 thread 400,000."""
    from charrnn import device
    from charrnn.api import load

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)  # scored in fp32, as on most CPUs
    text = tmp_path / "long.txt"
    text.write_text(generated_text(700_000), encoding="utf-8")
    model = load(trained_run)
    data = model.read(text)
    exact = model.score_corpus(data)  # one thread, as the tests run: nothing adapts

    seen: list[int] = []

    def speed() -> float:
        seen.append(torch.get_num_threads())
        return 400_000 if seen[-1] == 1 else 20_000

    simulated_clock(step=0.1, read_speed=speed, per_batch=True)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    progress, notes = [], []
    try:
        governed = model.score_corpus(data, progress=lambda *call: progress.append(call), note=notes.append)
        assert torch.get_num_threads() == 2  # the thread count it started with comes back
    finally:
        torch.set_num_threads(before)
    assert seen[0] == 2 and seen[-1] == 1
    assert notes == [
        "another program is using the CPU: 1 thread scores 20.0x faster than 2 now, so scoring goes on with 1 "
        "and tries 2 again later"
    ]
    total = len(data.ids) - 1
    assert {t for _, t in progress} == {total} and len(progress) > 100  # after each batch of 32 x 64
    done = [d for d, _ in progress]
    assert done == sorted(done) and done[-1] == total == governed.characters
    # the first steps ran on 2 threads, the rest on 1: the speed changes, not the figure (fp32)
    assert abs(governed.nats - exact.nats) < 1e-6


def test_surprise_reports_its_progress_chunk_by_chunk(trained_run, tmp_path):
    """As `eval` does, for a window long enough to take a while."""
    from charrnn.api import load

    text = tmp_path / "long.txt"
    text.write_text(generated_text(150_000), encoding="utf-8")
    model = load(trained_run)
    data, progress = model.read(text), []
    model.surprisal(data, 10_000, 130_000, progress=lambda *call: progress.append(call))
    assert progress == [(65_536, 131_999), (131_072, 131_999), (131_999, 131_999)]  # from 2,000 before the window
