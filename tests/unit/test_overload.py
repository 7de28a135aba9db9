"""Overload: 100,000 callers outstanding stay bounded in memory and are served in order."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest

from shoal import AgentPool, FakeBackend, PoolAtCapacity

N = 100_000


# 5 s alone; ten times that on a 2-core machine shared with other jobs. It times nothing.
@pytest.mark.timeout(300)
async def test_a_hundred_thousand_waiting_callers_cost_little_and_are_served_in_order() -> None:
    backend = FakeBackend()
    async with AgentPool("busy", min_size=2, max_size=2, backend=backend) as pool:
        held = [await pool.get_agent(), await pool.get_agent()]
        order: list[int] = []

        async def caller(i: int) -> None:
            agent = await pool.get_agent()
            order.append(i)
            await pool.release_agent(agent)

        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tasks = [asyncio.ensure_future(caller(i)) for i in range(N)]
        await asyncio.sleep(0)
        assert pool.metrics.queue_depth == N
        per_caller = (tracemalloc.get_traced_memory()[0] - base) / N
        tracemalloc.stop()
        # A waiting caller costs its task and coroutine plus ~200 bytes of pool bookkeeping.
        print(f"\n{N} waiting callers: {per_caller:.0f} bytes each")
        assert per_caller < 3000, per_caller
        for agent in held:
            await pool.release_agent(agent)
        await asyncio.gather(*tasks)
        assert order == list(range(N))  # first come, first served
        assert len(pool._state.queue) == 0 and pool.metrics.queue_depth == 0


async def test_a_bounded_queue_refuses_fast_and_keeps_memory_flat() -> None:
    async with AgentPool("q", min_size=1, max_size=1, max_queue=100, backend=FakeBackend()) as p:
        held = await p.get_agent()
        waiting = [asyncio.ensure_future(p.get_agent()) for _ in range(100)]
        await asyncio.sleep(0)
        refused = 0
        for _ in range(N):
            try:
                await p.get_agent()
            except PoolAtCapacity:
                refused += 1
        assert refused == N and p.metrics.queue_depth == 100
        await p.release_agent(held)
        for fut in waiting:
            await p.release_agent(await fut)
