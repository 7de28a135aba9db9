"""Prefetch on real agent processes: when every agent is busy and callers wait, a call is
queued on a busy agent. It never waits there while another agent is free, and an agent that
dies with it queued leaves it undelivered: it runs once, elsewhere."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shoal import AgentLost, AgentPool
from shoal.pool.agent import Lease
from tests.integration import workers

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]
PATIENCE = 60.0  # seconds: generous, for a loaded machine


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (polling, up to PATIENCE) until ``condition()`` holds: what it reads is written by
    agent processes, which no event of ours can announce."""
    try:
        async with asyncio.timeout(PATIENCE):
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not seen within {PATIENCE} s: {what}") from None


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def two_blocked_and_one_queued(
    pool: AgentPool, tmp_path: Path
) -> tuple[dict[int, tuple[str, asyncio.Task[tuple[str, int]]]], asyncio.Task[Any], Lease]:
    """Both agents run a gated call; a third call is queued on one of them. Returns the gated
    calls (tag, task) by the pid running them, the queued call, and its lease."""
    log = tmp_path / "log"
    gated = {
        tag: asyncio.create_task(pool.run(workers.gated, str(tmp_path / tag), str(log), tag))
        for tag in ("a", "b")
    }
    await until(lambda: len(lines(log)) == 2, "both agents running a gated call")
    queued = asyncio.create_task(pool.run(workers.logged, str(log), "x"))
    st = pool._state
    await until(lambda: len(st.queued) == 1, "the third call queued on a busy agent")
    (lease,) = st.queued
    by_pid = {}
    for line in lines(log):
        _, tag, pid = line.split()
        by_pid[int(pid)] = (tag, gated[tag])
    return by_pid, queued, lease


def open_gates(tmp_path: Path) -> None:
    for tag in ("a", "b"):
        (tmp_path / tag).touch()


async def test_a_queued_call_is_taken_back_and_run_when_another_agent_comes_free(
    tmp_path: Path,
) -> None:
    async with AgentPool("pf", min_size=2, max_size=2) as pool:
        by_pid, queued, lease = await two_blocked_and_one_queued(pool, tmp_path)
        behind = lease.agent.handle.pid
        (other,) = set(by_pid) - {behind}
        # Free the agent the queued call is NOT on; the one it waits on stays blocked.
        (tmp_path / by_pid[other][0]).touch()
        async with asyncio.timeout(PATIENCE):
            tag, pid = await queued
        assert tag == "x" and pid == other, "the queued call ran on the agent that came free"
        assert not by_pid[behind][1].done(), "it did not wait for the blocked call"
        open_gates(tmp_path)
        async with asyncio.timeout(PATIENCE):
            results = await asyncio.gather(*(task for _, task in by_pid.values()))
    runs = [line for line in lines(tmp_path / "log") if line.startswith("run x")]
    assert len(runs) == 1, runs  # taken back unstarted: run once, not twice
    assert sorted(t for t, _ in results) == ["a", "b"]


async def test_a_queued_call_on_an_agent_that_dies_runs_once_elsewhere(tmp_path: Path) -> None:
    async with AgentPool("pf", min_size=2, max_size=2) as pool:
        by_pid, queued, lease = await two_blocked_and_one_queued(pool, tmp_path)
        behind = lease.agent.handle.pid
        os.kill(behind, signal.SIGKILL)
        with pytest.raises(AgentLost) as lost:
            async with asyncio.timeout(PATIENCE):
                await by_pid[behind][1]  # the call that had started is lost, not retried
        assert lost.value.delivered
        async with asyncio.timeout(PATIENCE):
            tag, pid = await queued  # the queued one was never delivered: retried elsewhere
        assert tag == "x" and pid != behind
        open_gates(tmp_path)
        (survivor,) = set(by_pid) - {behind}
        async with asyncio.timeout(PATIENCE):
            assert (await by_pid[survivor][1])[1] == survivor
    runs = [line for line in lines(tmp_path / "log") if line.startswith("run x")]
    assert len(runs) == 1, runs


async def test_a_cancelled_queued_call_never_runs_and_spares_the_call_ahead(
    tmp_path: Path,
) -> None:
    async with AgentPool("pf", min_size=2, max_size=2) as pool:
        by_pid, queued, lease = await two_blocked_and_one_queued(pool, tmp_path)
        behind = lease.agent.handle.pid
        await until(lambda: lease.future is not None, "the queued call sent to its agent")
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        open_gates(tmp_path)
        async with asyncio.timeout(PATIENCE):
            results = await asyncio.gather(*(task for _, task in by_pid.values()))
        assert {pid for _, pid in results} == set(by_pid)  # neither agent was killed
        assert behind in {a.handle.pid for a in pool.agents}
        assert await pool.run(workers.pid) in set(by_pid)
        assert pool.metrics.agents_started == 2
    assert not [line for line in lines(tmp_path / "log") if line.startswith("run x")]
