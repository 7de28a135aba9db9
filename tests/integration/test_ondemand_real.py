"""On-demand starts on real agent processes, where calls are prefetched (see the README's
"Prefetch"): a caller the pool left to a busy agent, rather than start one for it, is not
left there once that agent's call has run as long as a start."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal import AgentPool
from tests.integration import workers
from tests.integration.test_prefetch import lines

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]
# A second agent's start and one tiny call, on a loaded machine; under the per-test timeout.
PATIENCE = 30.0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (polling, up to PATIENCE) until ``condition()`` holds: what agent processes write."""
    try:
        async with asyncio.timeout(PATIENCE):
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not seen within {PATIENCE} s: {what}") from None


async def test_a_caller_queued_behind_a_long_call_gets_an_agent_of_its_own(
    tmp_path: Path,
) -> None:
    # Calls have taken milliseconds and a start took longer, so a caller arriving while the
    # one agent is busy is left to it and queued on it. Its call never ends (until the test
    # opens the gate): the caller must get a second agent, not wait for that call.
    log, gate = tmp_path / "log", tmp_path / "gate"
    async with AgentPool("od", min_size=1, max_size=2) as pool:
        first = pool.agents[0].agent_id
        for _ in range(20):
            await pool.run(workers.pid)
        assert [a.agent_id for a in pool.agents] == [first]
        gated = asyncio.create_task(pool.run(workers.gated, str(gate), str(log), "a"))
        await until(lambda: len(lines(log)) == 1, "the agent running the gated call")
        try:
            async with asyncio.timeout(PATIENCE):
                tag, pid = await pool.run(workers.logged, str(log), "x")
        except TimeoutError:
            raise AssertionError(
                f"the caller waited {PATIENCE} s behind a call that never ends"
            ) from None
        finally:
            gate.touch()
        assert tag == "x"
        assert pid != int(lines(log)[0].split()[2]), "it ran behind the gated call"
        assert (await gated)[0] == "a"


async def test_no_call_is_prefetched_onto_an_agent_held_with_get_agent_and_a_timeout(
    tmp_path: Path,
) -> None:
    # A holder has its agent to itself, with or without a timeout on the wait for it.
    log = tmp_path / "log"
    async with AgentPool("od", min_size=1, max_size=1) as pool:
        st = pool._state
        lease = await pool.get_agent(timeout=PATIENCE)
        held = await lease.run(workers.pid)
        other = asyncio.create_task(pool.run(workers.logged, str(log), "o"))
        await until(lambda: bool(st.queue or st.queued or other.done()), "the other caller")
        assert not other.done(), "another caller's call ran on the held agent"
        assert not st.queued, "another caller's call was queued on the held agent"
        async with asyncio.timeout(PATIENCE):
            tag, pid = await lease.call(workers.logged, (str(log), "holder"), timeout=PATIENCE)
        assert (tag, pid) == ("holder", held)
        await pool.release_agent(lease)
        async with asyncio.timeout(PATIENCE):
            assert await other == ("o", held)
    assert [line.split()[1] for line in lines(log)] == ["holder", "o"]
