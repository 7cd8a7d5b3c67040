"""A timed CPU run takes one thread while another program competes for the cores, and all of them
when they are the faster."""

import pytest
import torch

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
