"""The failure matrix: each phase of an agent's life x each fault -> the expected outcome.

Phases: starting (the interpreter itself), warming (setup), idle, running (the call),
returning (pickling the result), stopping (interpreter shutdown). Faults: raises, crashes
(SIGKILL), hangs, exits cleanly. Every case runs on real processes and checks that nothing
leaked; after every fault the pool still serves calls, or (for start faults) reports why not.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from shoal import (
    AgentLost,
    AgentPool,
    AgentStartError,
    CallTimeout,
    ProcessBackend,
    RemoteError,
    SerializationError,
)
from tests.integration import faults

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]

FAST = {
    "start_timeout": 3.0,
    "stop_grace": 0.5,
    "health_check_timeout": 0.3,
    "heartbeat_timeout": 2.0,
}


def wrapper(tmp_path: Path, body: str) -> str:
    """A stand-in interpreter that misbehaves before the agent script runs."""
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


STARTING = {
    "raises": "/nonexistent/python",
    "crashes": "kill -9 $$",
    "hangs": "exec sleep 3600",
    "exits": "exit 0",
}


@pytest.mark.parametrize("fault", faults.FAULTS)
async def test_starting(fault: str, tmp_path: Path) -> None:
    body = STARTING[fault]
    python = body if body.startswith("/") else wrapper(tmp_path, body)
    pool = AgentPool("m", min_size=1, max_size=1, backend=ProcessBackend(python=python), **FAST)
    with pytest.raises((AgentStartError, FileNotFoundError)):
        await pool.start()
    assert pool.closed


@pytest.mark.parametrize("fault", faults.FAULTS)
async def test_warming(fault: str) -> None:
    pool = AgentPool("m", min_size=1, max_size=1, setup=faults.warming(fault), **FAST)
    with pytest.raises(AgentStartError) as info:
        await pool.start()
    if fault == "raises":
        assert "injected fault" in str(info.value)
    if fault == "hangs":
        assert "start_timeout" in str(info.value)
    assert pool.closed


@pytest.mark.parametrize("fault", faults.FAULTS)
async def test_idle(fault: str) -> None:
    async with AgentPool(
        "m", min_size=1, max_size=1, setup=faults.idle(fault), health_check_interval=0.2, **FAST
    ) as pool:
        first = pool.agents[0].handle.pid
        await asyncio.sleep(1.2)  # the fault at 0.3 s, then a health check or two
        if fault == "raises":  # a thread's exception does not harm the agent
            assert pool.agents[0].handle.pid == first
        else:  # died or froze: replaced by a fresh agent
            deadline = time.monotonic() + 10
            while not [a for a in pool.agents if a.handle and a.handle.pid != first]:
                assert time.monotonic() < deadline, list(pool.events)
                await asyncio.sleep(0.05)
            kinds = {e.kind for e in pool.events}
            assert "lost" in kinds or "retire" in kinds
        # A fresh agent arms the same fault after its own warm-up; ask before it fires.
        agent = await pool.get_agent()
        try:
            await agent.call(faults.pid)
        except AgentLost:
            pass  # the replacement's own fault won the race; that is the same case again
        finally:
            await pool.release_agent(agent)


RUNNING = {
    "raises": RuntimeError,
    "crashes": AgentLost,
    "hangs": CallTimeout,
    "exits": AgentLost,
}


@pytest.mark.parametrize("fault", faults.FAULTS)
async def test_running(fault: str) -> None:
    async with AgentPool("m", min_size=1, max_size=1, **FAST) as pool:
        before = await pool.run(faults.pid)
        with pytest.raises(RUNNING[fault]):
            await pool.call(faults.running, (fault,), timeout=1.0)
        after = await pool.run(faults.pid)
        assert (after == before) == (fault == "raises")  # only a raise keeps the agent


RETURNING = {
    "raises": SerializationError,
    "crashes": AgentLost,
    "hangs": CallTimeout,
    "exits": AgentLost,
}


@pytest.mark.parametrize("fault", faults.FAULTS)
async def test_returning(fault: str) -> None:
    async with AgentPool("m", min_size=1, max_size=1, **FAST) as pool:
        before = await pool.run(faults.pid)
        with pytest.raises(RETURNING[fault]):
            await pool.call(faults.returning, (fault,), timeout=1.0)
        after = await pool.run(faults.pid)
        assert (after == before) == (fault == "raises")


@pytest.mark.parametrize("fault", faults.FAULTS)
async def test_stopping(fault: str) -> None:
    pool = AgentPool("m", min_size=2, max_size=2, setup=faults.stopping(fault), **FAST)
    await pool.start()
    pids = [a.handle.pid for a in pool.agents]
    assert await pool.run(faults.pid) in pids
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await pool.aclose()
    assert loop.time() - t0 < FAST["stop_grace"] + 1.0  # a hung shutdown is killed in time
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_sys_exit_in_a_call_is_an_error_not_a_lost_agent() -> None:
    async with AgentPool("m", min_size=1, max_size=1, **FAST) as pool:
        before = await pool.run(faults.pid)
        with pytest.raises(RemoteError, match="SystemExit"):
            await pool.run(faults.do, "exits")
        assert await pool.run(faults.pid) == before
