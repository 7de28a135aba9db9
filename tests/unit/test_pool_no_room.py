"""A cluster with no room for more agents (``ResourcesUnavailable``) is not a crash loop."""

from __future__ import annotations

import asyncio

import pytest

from shoal import AgentPool, FakeBackend, ResourcesUnavailable


def no_room() -> ResourcesUnavailable:
    return ResourcesUnavailable("no room: needs 1 CPU, 0 of 6 free", short={"CPU": 1.0})


async def test_a_full_cluster_keeps_the_pool_serving_says_so_once_and_is_not_a_crash() -> None:
    backend = FakeBackend(start_time=0.5)
    async with AgentPool("p", min_size=2, max_size=8, crash_loop_starts=2, backend=backend) as pool:
        backend.fail_next_starts(30, no_room())
        with pytest.raises(ResourcesUnavailable, match="needs 1 CPU"):
            await pool.resize(5)
        assert pool.size == 2 and not pool.broken
        assert pool.metrics.start_failures == 0
        assert await asyncio.gather(*(pool.run(lambda x: x, i) for i in range(6))) == list(range(6))
        await asyncio.sleep(30)  # it keeps trying, backing off, and is never broken
        assert not pool.broken and pool.size == 2
        assert [e.kind for e in pool.events].count("waiting_for_resources") == 1
        backend._start_faults.clear()  # room again: another pool shrank, or a node joined
        await asyncio.sleep(10)
        assert pool.size == 5


async def test_callers_that_no_agent_can_serve_get_the_error_naming_what_is_short() -> None:
    backend = FakeBackend(start_time=0.5)
    async with AgentPool("p", min_size=0, max_size=2, backend=backend) as pool:
        backend.fail_next_starts(1000, no_room())
        with pytest.raises(ResourcesUnavailable, match="needs 1 CPU"):
            await asyncio.wait_for(pool.run(lambda: 1), 30)
        assert not pool.broken


async def test_a_floor_with_room_for_some_agents_starts_with_those() -> None:
    backend = FakeBackend()
    backend.fail_next_starts(1)  # an ordinary failure still fails start()
    with pytest.raises(Exception, match="scripted start failure"):
        await AgentPool("p", min_size=2, max_size=2, backend=backend).start()
    backend = FakeBackend(start_time=0.5)
    backend.fail_next_starts(1)
    backend._start_faults[0] = no_room()
    async with AgentPool("p", min_size=3, max_size=3, backend=backend) as pool:
        assert pool.size >= 2  # started with what there is room for; the third is retried
