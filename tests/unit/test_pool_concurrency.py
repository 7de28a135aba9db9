"""max_concurrency in the pool: slots per agent, counted everywhere capacity is counted."""

from __future__ import annotations

import asyncio

import pytest

from shoal import AgentLost, AgentPool, FakeBackend, PoolError
from shoal.pool.metrics import PoolMetrics
from shoal.scaling.policy import TargetUtilizationPolicy as TargetPolicy


async def slow(x: int) -> int:
    await asyncio.sleep(1.0)
    return x


async def test_an_agent_serves_as_many_calls_as_it_has_slots() -> None:
    backend = FakeBackend()
    async with AgentPool("c", min_size=1, max_size=1, max_concurrency=4, backend=backend) as pool:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        calls = [asyncio.create_task(pool.run(slow, i)) for i in range(8)]
        await asyncio.sleep(0.5)
        m = pool.metrics
        assert (m.busy, m.in_flight, m.queue_depth) == (1, 4, 4)
        assert m.utilization_rate == 1.0
        assert await asyncio.gather(*calls) == list(range(8))
        assert loop.time() - t0 == pytest.approx(2.0)  # two rounds of four
    assert backend.started == ["c-1"]


async def test_waiters_beyond_the_slots_start_one_agent_per_slots() -> None:
    backend = FakeBackend(start_time=1.0)
    async with AgentPool("c", min_size=0, max_size=8, max_concurrency=5, backend=backend) as pool:
        calls = [asyncio.create_task(pool.run(slow, i)) for i in range(10)]
        await asyncio.sleep(0)
        assert pool.metrics.starting == 2  # ten waiters: two agents of five slots
        await asyncio.gather(*calls)


async def test_a_lease_carries_one_call_at_a_time() -> None:
    async with AgentPool("c", min_size=1, max_size=1, max_concurrency=3,
                         backend=FakeBackend()) as pool:  # fmt: skip
        lease = await pool.get_agent()
        first = asyncio.create_task(lease.run(slow, 1))
        await asyncio.sleep(0)
        with pytest.raises(PoolError, match="one call at a time"):
            await lease.run(slow, 2)
        other = await pool.get_agent()  # another slot of the same agent
        assert other.agent_id == lease.agent_id
        assert await asyncio.gather(first, other.run(slow, 3)) == [1, 3]
        await pool.release_agent(lease)
        await pool.release_agent(other)


async def test_an_agent_that_must_retire_finishes_its_calls_first() -> None:
    backend = FakeBackend()
    async with AgentPool("c", min_size=1, max_size=1, max_concurrency=3, max_uses=2,
                         backend=backend) as pool:  # fmt: skip
        results = await asyncio.gather(*(pool.run(slow, i) for i in range(3)))
        assert results == [0, 1, 2]  # the third was not cut short by the second's max_uses
        retired = [e for e in pool.events if e.kind == "retire"]
        assert len(retired) == 1 and "max_uses" in retired[0].reason


async def test_a_lost_agent_fails_every_call_it_ran() -> None:
    backend = FakeBackend(call_time=1.0)
    async with AgentPool("c", min_size=1, max_size=1, max_concurrency=3,
                         backend=backend) as pool:  # fmt: skip
        calls = [asyncio.create_task(pool.run(slow, i)) for i in range(3)]
        await asyncio.sleep(0.5)
        backend.crash(pool.agents[0].agent_id)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, AgentLost) for o in outcomes), outcomes
        assert await pool.run(slow, 7) == 7  # replaced


def snapshot(**kw: float) -> PoolMetrics:
    base = dict.fromkeys(PoolMetrics.__dataclass_fields__, 0)
    base.update(name="p", min_size=1, max_size=100, target_size=1, size=1, max_concurrency=1)
    base.update(kw)
    return PoolMetrics(**base)  # type: ignore[arg-type]


def test_the_target_policy_counts_slots_not_agents() -> None:
    policy = TargetPolicy(target_utilization=0.5)
    one_slot = policy.decide(snapshot(busy=20, in_flight=20), policy.initial_state(), 0.0)
    ten_slots = policy.decide(
        snapshot(busy=2, in_flight=20, max_concurrency=10), policy.initial_state(), 0.0
    )
    assert one_slot.desired == 40
    assert ten_slots.desired == 4  # 20 calls fill 2 agents of 10 slots; at 50%: 4


def test_the_simulator_counts_slots() -> None:
    from shoal.sim import simulate, workloads

    load = workloads.generate("steady", rate=20, duration=600, seed=1)
    one = simulate(load, "auto", cold_start=1.0)
    four = simulate(load, "auto", cold_start=1.0, max_concurrency=4)
    assert four.summary()["agent_seconds"] < one.summary()["agent_seconds"] / 2
