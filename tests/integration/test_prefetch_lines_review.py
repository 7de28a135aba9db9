"""Deep prefetch lines attacked where their frames meet a full pipe, on real agent processes
(the second review of prefetch: see the README's "Prefetch"). Depth is decided from real-time
service times, so the agents get a history of tiny calls and an hour's budget to queue
against, as in test_prefetch_deep.py."""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import signal
import time
from pathlib import Path

import pytest

from shoal import AgentPool
from shoal.pool import depth
from tests.integration import workers
from tests.integration.test_prefetch import PATIENCE, lines, until
from tests.integration.test_prefetch_deep import tiny_history

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]
BIG = b"x" * 2_000_000  # arguments far larger than a pipe holds


@pytest.fixture(autouse=True)
def patient_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(depth, "QUEUE_BUDGET_S", 3600.0)


def wait_readable(fd: int) -> None:
    """Block (the event loop too, on purpose) until ``fd`` has bytes to read."""
    deadline = time.monotonic() + PATIENCE
    while not select.select([fd], [], [], 0.05)[0]:
        assert time.monotonic() < deadline, f"nothing to read on fd {fd} within {PATIENCE} s"


async def test_cancelling_a_call_queued_behind_a_big_one_still_being_written_spares_it(
    tmp_path: Path,
) -> None:
    # A runs; B (2 MB of arguments) and C wait behind it, kept back unwritten. A's answer
    # releases both; the agent is stopped before it reads B, so B's bytes wait in the pool's
    # out buffer. C's caller is cancelled then: C has certainly not started, and B, which the
    # agent is about to run, must not be killed for it.
    log = tmp_path / "log"
    async with AgentPool("rv", min_size=1, max_size=1, heartbeat_timeout=None) as pool:
        tiny_history(pool)
        (agent,) = pool.agents
        channel, pid = agent.handle.channel, agent.handle.pid
        a = asyncio.create_task(pool.run(workers.gated, str(tmp_path / "a"), str(log), "a"))
        await until(lambda: len(lines(log)) == 1, "A running")
        b = asyncio.create_task(pool.run(workers.size_and_pid, BIG))
        await until(lambda: len(pool._state.queued) == 1, "B queued behind A")
        c = asyncio.create_task(pool.run(workers.logged, str(log), "c"))
        await until(lambda: len(pool._state.queued) == 2, "C queued behind B")
        await until(lambda: len(channel.pending) == 3, "B and C sent to the agent")
        (tmp_path / "a").touch()
        wait_readable(channel._in)  # A's answer is in the pipe, unread by the pool ...
        os.kill(pid, signal.SIGSTOP)  # ... and the agent is stopped before it reads B
        try:
            async with asyncio.timeout(PATIENCE):
                assert await a == ("a", pid)
            c.cancel()
            with pytest.raises(asyncio.CancelledError):
                await c
        finally:
            os.kill(pid, signal.SIGCONT)
        async with asyncio.timeout(PATIENCE):
            assert await b == (len(BIG), pid)
        assert [a.handle.pid for a in pool.agents] == [pid], "the agent was replaced"
        assert await pool.run(workers.logged, str(log), "d") == ("d", pid)
    assert [line.split()[1] for line in lines(log)] == ["a", "d"]  # C never ran


async def test_a_line_the_pipe_takes_in_part_can_still_be_cancelled_without_a_kill(
    tmp_path: Path,
) -> None:
    # A pipe of one page (what Linux gives a user past fs.pipe-user-pages-soft): the frames
    # of four calls queued behind A do not all fit. Cancelling those that went in whole, and
    # those that did not go in at all, must leave A and the agent alone; the rest run once.
    log = tmp_path / "log"
    async with AgentPool("rv", min_size=1, max_size=1, heartbeat_timeout=None) as pool:
        tiny_history(pool)
        (agent,) = pool.agents
        channel, pid = agent.handle.channel, agent.handle.pid
        fcntl.fcntl(channel._out, fcntl.F_SETPIPE_SZ, 4096)
        a = asyncio.create_task(pool.run(workers.gated, str(tmp_path / "a"), str(log), "a"))
        await until(lambda: len(lines(log)) == 1, "A running")
        pad = "p" * 1500  # four such frames are more than a page
        line = [
            asyncio.create_task(pool.run(workers.logged, str(log), f"x{i} {pad}")) for i in range(4)
        ]
        await until(lambda: len(channel.pending) == 5, "the four sent behind A")
        assert channel._parked or channel._out_buf, "the pipe took all four: nothing tested"
        cancelled = [line[1], line[3]]
        for task in cancelled:
            task.cancel()
        await asyncio.gather(*cancelled, return_exceptions=True)
        assert all(task.cancelled() for task in cancelled)
        (tmp_path / "a").touch()
        async with asyncio.timeout(PATIENCE):
            assert await a == ("a", pid)
            assert [tag.split()[0] for tag, _ in await asyncio.gather(line[0], line[2])] == [
                "x0",
                "x2",
            ]
        assert [a.handle.pid for a in pool.agents] == [pid], "the agent was replaced"
    assert [line.split()[1] for line in lines(log)] == ["a", "x0", "x2"]
