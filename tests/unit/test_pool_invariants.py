"""Invariants under concurrent load: never more than max_size agents; every call answered once."""

from __future__ import annotations

import asyncio
import collections
import random

import pytest

from shoal import AgentLost, AgentPool, AgentStartError, FakeBackend, PoolBroken, PoolTimeout


class WatchedBackend(FakeBackend):
    """Checks the agent count against the limit at every start."""

    def __init__(self, limit: int, **kw: float) -> None:
        super().__init__(**kw)
        self.limit = limit

    async def start(self, spec):  # type: ignore[no-untyped-def]
        agent = await super().start(spec)
        assert len(self.alive) <= self.limit, f"{len(self.alive)} agents alive > {self.limit}"
        return agent


@pytest.mark.parametrize("seed", range(5))
async def test_concurrent_load_with_faults_answers_every_call_exactly_once(seed: int) -> None:
    rng = random.Random(seed)
    backend = WatchedBackend(limit=4, start_time=0.3)
    answers: dict[int, list[object]] = {i: [] for i in range(400)}

    async def caller(pool: AgentPool, i: int) -> None:
        await asyncio.sleep(rng.uniform(0, 80))
        if rng.random() < 0.05:
            backend.crash_next_calls(1)
        if rng.random() < 0.05:
            backend.fail_next_starts(1)
        try:
            async with asyncio.timeout(rng.choice([None, 5.0])):
                result = await pool.call(asyncio.sleep, (rng.uniform(0, 1), i))
        except (AgentLost, AgentStartError, PoolBroken, PoolTimeout, TimeoutError) as exc:
            answers[i].append(type(exc))
        else:
            answers[i].append(result)

    async with AgentPool("load", min_size=1, max_size=4, idle_timeout=2.0, backend=backend) as pool:
        await asyncio.gather(*(caller(pool, i) for i in range(400)))
        m = pool.metrics
        assert m.busy == 0 and m.queue_depth == 0 and m.requests_active == 0
        assert m.size + m.stopping <= 4
        await asyncio.sleep(60)
        assert pool.size == 1  # back to min_size once the load is gone
    assert all(len(a) == 1 for a in answers.values()), "a call was answered twice or never"
    succeeded = sum(1 for i, a in answers.items() if a[0] == i)
    assert succeeded > 300, collections.Counter(str(a[0]) for a in answers.values())
    assert backend.max_alive <= 4
    assert backend.alive == []
