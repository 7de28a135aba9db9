"""How deep a one-call agent's line may get (pool/depth.py), and the pool state obeying it.

All on virtual time: service times are what the test says they are.
"""

from __future__ import annotations

import pytest

from shoal.config import PoolConfig
from shoal.pool.agent import Lease, PooledAgent
from shoal.pool.depth import MAX_AHEAD, QUEUE_BUDGET_S, RUN_WINDOW, RunTimes
from shoal.pool.state import Assign, PoolState
from shoal.pool.waitqueue import Waiter


def history(took: float, n: int = RUN_WINDOW, start: float = 0.0) -> tuple[RunTimes, float]:
    """An agent that ran ``n`` calls back to back, each ``took`` seconds; and the time now."""
    runs = RunTimes()
    now = start
    runs.began(now)
    for _ in range(n):
        runs.ended(now, now + took)
        now += took
    return runs, now


def test_one_queued_call_is_always_allowed() -> None:
    runs = RunTimes()
    assert runs.may_queue(1, 100.0)
    slow, now = history(10.0)
    assert slow.may_queue(1, now + 60.0)


def test_no_extra_depth_before_a_full_window_of_service_times() -> None:
    runs, now = history(1e-6, RUN_WINDOW - 1)
    assert runs.mean is None
    assert not runs.may_queue(2, now)
    runs.ended(now, now + 1e-6)
    assert runs.may_queue(2, now + 1e-6)


@pytest.mark.parametrize("took", [10e-6, 50e-6, 100e-6, 300e-6, 1e-3])
def test_depth_is_the_budget_over_the_mean_service_time(took: float) -> None:
    runs, now = history(took)
    assert runs.mean == pytest.approx(took)
    allowed = [ahead for ahead in range(1, 40) if runs.may_queue(ahead, now)]
    most = max(1, min(MAX_AHEAD, int(QUEUE_BUDGET_S / took + 1e-9)))
    assert allowed == list(range(1, most + 1))
    assert all(ahead * took <= QUEUE_BUDGET_S + 1e-12 for ahead in allowed if ahead > 1)


def test_one_long_call_in_the_window_shrinks_the_line() -> None:
    runs, now = history(10e-6)
    assert runs.may_queue(MAX_AHEAD, now)
    runs.ended(now, now + 2e-3)  # one 2 ms call among 15 of 10 µs: mean ~134 µs
    now += 2e-3
    mean = runs.mean
    assert mean is not None and mean == pytest.approx((15 * 10e-6 + 2e-3) / 16)
    assert runs.may_queue(int(QUEUE_BUDGET_S / mean), now)
    assert not runs.may_queue(int(QUEUE_BUDGET_S / mean) + 1, now)


def test_nothing_more_queues_behind_a_call_running_past_the_budget() -> None:
    runs, now = history(10e-6)
    runs.began(now)  # a call sent with nothing ahead of it
    assert runs.may_queue(4, now + QUEUE_BUDGET_S)
    assert not runs.may_queue(2, now + QUEUE_BUDGET_S + 1e-6)
    assert runs.may_queue(1, now + 10.0)


def test_a_service_time_counts_from_the_later_of_the_send_and_the_previous_end() -> None:
    runs = RunTimes()
    runs.ended(0.0, 1.0)  # sent at 0, ended at 1: 1 s
    runs.ended(0.5, 1.25)  # queued behind it: started when it ended, at 1
    runs.ended(3.0, 3.5)  # sent after: from its send
    for _ in range(RUN_WINDOW - 3):
        runs.ended(3.5, 3.5)
    assert runs.mean == pytest.approx((1.0 + 0.25 + 0.5) / RUN_WINDOW)


# -- the pool state -------------------------------------------------------------------------------


class Handle:
    exit_code: int | None = None


def one_agent_pool() -> tuple[PoolState, PooledAgent]:
    config = PoolConfig(name="d", min_size=1, max_size=1, heartbeat_timeout=None)
    state = PoolState(config)
    state.prefetch = True
    state.open(0.0)
    (agent,) = state.agents.values()
    state.actions.clear()
    state.agent_started(agent, Handle(), 0.0)
    state.actions.clear()
    return state, agent


def run_calls(state: PoolState, took: float, n: int, now: float) -> float:
    """``n`` calls, one at a time, each ``took`` seconds; returns the time after them."""
    for _ in range(n):
        lease = state.request(now, owned=True)
        assert lease is not None
        state.begin_call(lease, now)
        state.end_call(lease, now, now + took, False)
        now += took
        state.release(lease, now)
    return now


def flood(state: PoolState, now: float, callers: int) -> tuple[Lease, list[Lease]]:
    """The agent's call is sent, then ``callers`` more arrive; the leases queued on it."""
    first = state.request(now, owned=True)
    assert first is not None
    state.begin_call(first, now)
    queued: list[Lease] = []
    for _ in range(callers):
        assert state.request(now, owned=True) is None
        state.enqueue(Waiter(now, None, prefetchable=True), now)
        for action in state.actions:
            if isinstance(action, Assign):
                queued.append(action.lease)
                state.begin_call(action.lease, now)  # its caller sends it
        state.actions.clear()
    return first, queued


def test_tiny_calls_fill_the_line_up_to_its_cap() -> None:
    state, agent = one_agent_pool()
    now = run_calls(state, 20e-6, RUN_WINDOW, 1.0)
    first, queued = flood(state, now, 40)
    # The last one queued waits behind MAX_AHEAD calls: the running one and 15 queued.
    assert len(queued) == MAX_AHEAD
    assert len(state.queue) == 40 - len(queued)
    assert list(state.queued) == queued
    # The call ahead ends: the oldest queued call is the agent's call now, and one more joins.
    state.end_call(first, now, now + 20e-6, False)
    state.release(first, now + 20e-6)
    assert queued[0] not in state.queued and queued[1] in state.queued
    assert len(agent.leases) == MAX_AHEAD + 1  # its new call and a full line behind it


def test_calls_of_a_quarter_millisecond_queue_four_behind_the_running_one() -> None:
    state, _ = one_agent_pool()
    now = run_calls(state, 250e-6, RUN_WINDOW, 1.0)
    _, queued = flood(state, now, 10)
    # The last one queued has 4 calls ahead of it (4 x 250 µs = the budget): 4 queued.
    assert len(queued) == int(QUEUE_BUDGET_S / 250e-6)


def test_slow_calls_get_one_queued_call_as_before() -> None:
    state, _ = one_agent_pool()
    now = run_calls(state, 5e-3, RUN_WINDOW, 1.0)
    _, queued = flood(state, now, 10)
    assert len(queued) == 1


def test_a_call_running_past_the_budget_gets_no_more_behind_it() -> None:
    state, agent = one_agent_pool()
    now = run_calls(state, 20e-6, RUN_WINDOW, 1.0)
    _, queued = flood(state, now, 1)
    assert len(queued) == 1
    later = now + QUEUE_BUDGET_S * 2  # the call ahead has run for 2 ms
    for _ in range(5):
        state.enqueue(Waiter(later, None, prefetchable=True), later)
    assert not [a for a in state.actions if isinstance(a, Assign)]
    assert len(agent.leases) == 2 and len(state.queue) == 5
