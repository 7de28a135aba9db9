"""Lines deeper than one queued call, on real agent processes (pool/depth.py).

Whether a line may grow is decided from service times measured in real time, which a loaded
machine makes unpredictable; these tests are about what the pool does with a deep line, so
they give the agents a history of tiny calls and a budget of an hour to queue against. What
the rule allows is tested on virtual time in tests/unit/test_prefetch_depth.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from shoal import AgentLost, AgentPool
from shoal.pool import depth
from tests.integration import workers
from tests.integration.test_prefetch import PATIENCE, lines, until

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]
DEEP = 3  # calls queued behind each agent's gated call


@pytest.fixture(autouse=True)
def patient_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(depth, "QUEUE_BUDGET_S", 3600.0)


def tiny_history(pool: AgentPool) -> None:
    for agent in pool.agents:
        for _ in range(depth.RUN_WINDOW):
            agent.runs.ended(0.0, 0.0)


async def gated_with_lines(
    pool: AgentPool, tmp_path: Path
) -> tuple[dict[int, tuple[str, asyncio.Task[Any]]], list[asyncio.Task[Any]]]:
    """Both agents run a gated call with DEEP calls queued behind each. Returns the gated
    calls (tag, task) by pid, and the queued calls (tags x0, x1, ...)."""
    tiny_history(pool)
    log = tmp_path / "log"
    gated = {
        tag: asyncio.create_task(pool.run(workers.gated, str(tmp_path / tag), str(log), tag))
        for tag in ("a", "b")
    }
    await until(lambda: len(lines(log)) == 2, "both agents running a gated call")
    queued = [
        asyncio.create_task(pool.run(workers.logged, str(log), f"x{i}")) for i in range(2 * DEEP)
    ]
    st = pool._state
    await until(lambda: len(st.queued) == 2 * DEEP, "calls queued behind both gated calls")
    assert sorted(len(a.leases) for a in pool.agents) == [DEEP + 1, DEEP + 1]
    await until(
        lambda: all(lease.future is not None for lease in st.queued), "the queued calls sent"
    )
    by_pid = {}
    for line in lines(log):
        _, tag, pid = line.split()
        by_pid[int(pid)] = (tag, gated[tag])
    return by_pid, queued


def runs_of_x(tmp_path: Path) -> list[str]:
    return [line.split()[1] for line in lines(tmp_path / "log") if line.startswith("run x")]


async def test_an_agent_that_comes_free_takes_back_every_call_queued_on_the_blocked_one(
    tmp_path: Path,
) -> None:
    async with AgentPool("deep", min_size=2, max_size=2) as pool:
        by_pid, queued = await gated_with_lines(pool, tmp_path)
        blocked, free = list(by_pid)
        (tmp_path / by_pid[free][0]).touch()
        async with asyncio.timeout(PATIENCE):
            results = await asyncio.gather(*queued)
        assert [tag for tag, _ in results] == [f"x{i}" for i in range(2 * DEEP)]
        assert {pid for _, pid in results} == {free}, "a call waited behind the blocked one"
        assert not by_pid[blocked][1].done()
        (tmp_path / by_pid[blocked][0]).touch()
        async with asyncio.timeout(PATIENCE):
            await by_pid[blocked][1]
    assert sorted(runs_of_x(tmp_path)) == [f"x{i}" for i in range(2 * DEEP)]  # each once


async def test_calls_queued_deep_on_an_agent_that_dies_run_once_elsewhere(
    tmp_path: Path,
) -> None:
    async with AgentPool("deep", min_size=2, max_size=2) as pool:
        by_pid, queued = await gated_with_lines(pool, tmp_path)
        victim, survivor = list(by_pid)
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(AgentLost) as lost:
            async with asyncio.timeout(PATIENCE):
                await by_pid[victim][1]
        assert lost.value.delivered  # the call that had started is lost, not run again
        (tmp_path / by_pid[survivor][0]).touch()
        async with asyncio.timeout(PATIENCE):
            results = await asyncio.gather(*queued)
        assert [tag for tag, _ in results] == [f"x{i}" for i in range(2 * DEEP)]
        assert victim not in {pid for _, pid in results}
        async with asyncio.timeout(PATIENCE):
            await by_pid[survivor][1]
    assert sorted(runs_of_x(tmp_path)) == [f"x{i}" for i in range(2 * DEEP)]


async def test_a_call_cancelled_in_the_middle_of_a_line_never_runs_and_spares_the_rest(
    tmp_path: Path,
) -> None:
    async with AgentPool("deep", min_size=2, max_size=2) as pool:
        by_pid, queued = await gated_with_lines(pool, tmp_path)
        middle = queued[DEEP]  # the agents take turns: x3 is second in a line of three
        middle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await middle
        for path in ("a", "b"):
            (tmp_path / path).touch()
        async with asyncio.timeout(PATIENCE):
            results = await asyncio.gather(*(q for q in queued if q is not middle))
            await asyncio.gather(*(task for _, task in by_pid.values()))
        assert [tag for tag, _ in results] == [f"x{i}" for i in range(2 * DEEP) if i != DEEP]
        assert {a.handle.pid for a in pool.agents} == set(by_pid), "an agent was killed"
        assert pool.metrics.agents_started == 2
    assert f"x{DEEP}" not in runs_of_x(tmp_path)


async def test_thousands_of_calls_in_flight_each_answered_once_with_its_own_result() -> None:
    async with AgentPool("deep", min_size=2, max_size=2) as pool:
        tiny_history(pool)
        async with asyncio.timeout(PATIENCE):
            results = await asyncio.gather(*(pool.run(workers.echo, i) for i in range(5000)))
        assert results == list(range(5000))
        assert max(len(a.leases) for a in pool.agents) == 0
        assert pool.metrics.requests_total == 5000
