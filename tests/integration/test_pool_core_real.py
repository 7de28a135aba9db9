"""The pool core's edges on real agent processes: a reply that has arrived wins over a deadline
or a cancel landing in the same loop pass; user code raising AgentLost keeps its agent; a frozen
busy agent is found without a call timeout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import pytest

from shoal import AgentLost, AgentPool
from tests.integration import workers

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]


async def test_a_reply_and_a_deadline_in_the_same_pass_give_the_caller_its_result() -> None:
    async with AgentPool("r", min_size=1, max_size=1) as pool:
        first = pool.agents[0].handle.pid
        call = asyncio.create_task(pool.call(workers.sleep_and_pid, (0.05,), timeout=0.5))
        await asyncio.sleep(0)  # the call goes out
        await asyncio.sleep(0)
        time.sleep(0.8)  # noqa: ASYNC251 - the loop stalls (a big unpickle) past reply and deadline
        assert await call == first  # no CallTimeout: the reply was there
        assert pool.agents[0].handle.pid == first  # and the healthy agent was not killed
        assert not [e for e in pool.events if e.kind in ("retire", "lost")]


async def test_a_cancel_landing_after_the_reply_keeps_the_agent_warm() -> None:
    async with AgentPool("r", min_size=1, max_size=1) as pool:
        first = pool.agents[0].handle.pid
        call = asyncio.create_task(pool.call(workers.sleep_and_pid, (0.05,)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        # A timer runs after the pass's I/O: the cancel lands once the reply has been read.
        asyncio.get_running_loop().call_later(0.1, call.cancel)
        time.sleep(0.8)  # noqa: ASYNC251 - the loop stalls with the reply in the pipe
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await pool.run(workers.pid) == first  # the same agent, still warm
        assert not [e for e in pool.events if e.kind in ("retire", "lost")]


async def test_agent_lost_raised_by_user_code_does_not_kill_the_agent() -> None:
    async with AgentPool("r", min_size=1, max_size=1) as pool:
        first = pool.agents[0].handle.pid
        with pytest.raises(AgentLost, match="nested pool") as info:
            await pool.run(workers.raise_agent_lost)
        assert info.value.remote
        assert await pool.run(workers.pid) == first
        assert not [e for e in pool.events if e.kind in ("retire", "lost")]


async def test_a_frozen_busy_agent_fails_its_call_without_a_timeout() -> None:
    async with AgentPool("r", min_size=1, max_size=1, heartbeat_timeout=1.0) as pool:
        first = pool.agents[0].handle.pid
        call = asyncio.create_task(pool.run(workers.sleep, 600.0))
        await asyncio.sleep(0.2)
        os.kill(first, signal.SIGSTOP)  # frozen mid-call: alive, but shows no sign of life
        try:
            async with asyncio.timeout(30):
                with pytest.raises(AgentLost):
                    await call
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(first, signal.SIGCONT)
        assert any("unresponsive" in e.reason for e in pool.events), list(pool.events)
        assert await pool.run(workers.pid) != first  # replaced


async def test_a_long_call_that_beats_is_not_taken_for_frozen() -> None:
    async with AgentPool("r", min_size=1, max_size=1, heartbeat_timeout=0.5) as pool:
        first = pool.agents[0].handle.pid
        assert await pool.run(workers.sleep_and_pid, 2.0) == first
        assert not any("unresponsive" in e.reason for e in pool.events)
