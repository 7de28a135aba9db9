"""The framed channel on real agent processes: call ids, undecodable replies, liveness."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from shoal import AgentLost, AgentPool, ProcessBackend, SerializationError
from shoal.backends.base import AgentSpec, ReportsLiveness
from shoal.backends.process import ProcessAgent
from tests.integration import workers

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]


def pool(**options: Any) -> AgentPool:
    options.setdefault("min_size", 1)
    options.setdefault("max_size", 1)
    return AgentPool("chan", backend=ProcessBackend(), **options)


@asynccontextmanager
async def agent(
    heartbeat: float | None = None,
) -> AsyncIterator[tuple[ProcessBackend, ProcessAgent]]:
    backend = ProcessBackend()
    spec = AgentSpec(pool="chan", agent_id="chan-1", heartbeat_interval=heartbeat)
    handle = await backend.start(spec)
    try:
        yield backend, handle
    finally:
        await backend.kill(handle)


async def test_a_step_that_forks_and_returns_twice_does_not_shift_the_results() -> None:
    async with asyncio.timeout(60), pool() as p:
        before = await p.run(workers.pid)
        assert await p.run(workers.fork_and_return, 0) == "parent 0"
        for i in range(50):
            assert await p.run(workers.add, i, 1000) == i + 1000
        assert await p.run(workers.pid) == before
        assert p.metrics.agents_started == 1


async def test_a_reply_that_exits_when_unpickled_fails_only_its_call() -> None:
    async with asyncio.timeout(60), pool() as p:
        bystander_may_finish = asyncio.Event()
        bystander = asyncio.create_task(bystander_may_finish.wait())
        before = await p.run(workers.pid)
        with pytest.raises(SerializationError, match="SystemExit"):
            await p.run(workers.return_exits_on_load)
        assert await p.run(workers.add, 1, 2) == 3
        assert await p.run(workers.pid) == before
        bystander_may_finish.set()
        await bystander
        assert not bystander.cancelled()


async def test_a_reply_to_a_call_that_is_not_outstanding_retires_the_agent() -> None:
    async with asyncio.timeout(60), pool(min_size=2, max_size=2) as p:
        async with p.acquire() as forger, p.acquire() as other:
            forger_pid = await forger.run(workers.pid)
            bystander = asyncio.create_task(other.run(workers.sleep, 0.2))
            with pytest.raises(AgentLost) as info:
                await forger.run(workers.write_reply_to_call, 10**6)
            assert await bystander == 0.2
            assert await other.run(workers.add, 1, 2) == 3
        lost = info.value
        assert lost.delivered and not lost.remote
        assert "broke the protocol: reply to call 1000000, which is not outstanding" in str(lost)
        assert "it was killed" in str(lost)
        # The pool replaces the agent; the next calls run elsewhere.
        for _ in range(4):
            assert await p.run(workers.pid) != forger_pid


async def test_the_late_reply_of_an_abandoned_call_is_ignored() -> None:
    async with asyncio.timeout(60), agent() as (backend, handle):
        abandoned = backend.call(handle, workers.sleep, (0.2,), {})
        abandoned.cancel()
        # Served after the abandoned call, whose reply comes first and must not be mistaken.
        assert await backend.call(handle, workers.add, (2, 3), {}) == 5
        assert handle.alive


async def _worst_silence(
    backend: ProcessBackend, handle: ProcessAgent, call: asyncio.Future[Any]
) -> float:
    """The largest unresponsive_for() seen while ``call`` runs, sampled every 50 ms."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not call.done():
        worst = max(worst, backend.unresponsive_for(handle, loop.time()))
        await asyncio.wait({call}, timeout=0.05)
    return worst


async def test_a_stopped_agent_becomes_unresponsive() -> None:
    async with asyncio.timeout(60), agent(heartbeat=0.2) as (backend, handle):
        assert isinstance(backend, ReportsLiveness)
        loop = asyncio.get_running_loop()
        assert backend.unresponsive_for(handle, loop.time()) == 0.0
        call = backend.call(handle, workers.sleep, (60,), {})
        os.kill(handle.pid or -1, signal.SIGSTOP)
        deadline = loop.time() + 15
        while backend.unresponsive_for(handle, loop.time()) <= 1.0:
            assert loop.time() < deadline, "a SIGSTOPped agent still looks alive"
            await asyncio.wait({call}, timeout=0.05)
        await backend.kill(handle)
        with pytest.raises(AgentLost):
            await call


async def test_heartbeats_show_a_sleeping_call_is_alive() -> None:
    async with asyncio.timeout(60), agent(heartbeat=0.2) as (backend, handle):
        call = backend.call(handle, workers.sleep, (3,), {})
        worst = await _worst_silence(backend, handle, call)
        assert await call == 3
        assert worst < 1.0, f"silent for {worst:.2f} s while sleeping"
        assert backend.unresponsive_for(handle, asyncio.get_running_loop().time()) == 0.0


async def test_cpu_time_shows_a_call_holding_the_gil_is_alive() -> None:
    async with asyncio.timeout(120), agent(heartbeat=0.2) as (backend, handle):
        call = backend.call(handle, workers.big_power, (), {})
        worst = await _worst_silence(backend, handle, call)
        assert await call > 0
        assert worst < 1.0, f"silent for {worst:.2f} s while computing"
