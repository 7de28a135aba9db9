"""Crash loops, leaks, recycling and memory ceilings, on the fake backend in virtual time."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shoal import AgentPool, AgentStartError, FakeBackend, PoolBroken


def make_pool(backend: FakeBackend, **options: object) -> AgentPool:
    options.setdefault("min_size", 0)
    options.setdefault("max_size", 2)
    return AgentPool("p", backend=backend, **options)  # type: ignore[arg-type]


async def test_a_crash_loop_breaks_the_pool_fails_fast_and_recovers() -> None:
    backend = FakeBackend(start_time=1.0)
    async with make_pool(backend, crash_loop_starts=3, crash_loop_window=60) as pool:
        backend.fail_next_starts(1000)
        errors = await asyncio.gather(
            *(pool.run(lambda: 1) for _ in range(6)), return_exceptions=True
        )
        assert all(isinstance(e, AgentStartError | PoolBroken) for e in errors)
        assert pool.broken
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(PoolBroken, match="3 agent starts failed within 60 s") as info:
            await pool.run(lambda: 1)
        assert loop.time() == t0  # at once, not after a wait
        assert isinstance(info.value.__cause__, AgentStartError)
        backend._start_faults.clear()  # the image is fixed
        await asyncio.sleep(10)  # the pool keeps probing with backoff
        assert not pool.broken
        assert await pool.run(lambda: 2) == 2
        notes = [e.reason for e in pool.events if e.kind == "note"]
        assert any(n.startswith("broken") for n in notes) and "recovered: an agent started" in notes


async def test_an_agent_held_too_long_is_reported_with_where_it_was_taken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = FakeBackend()
    async with make_pool(backend, min_size=1, leak_threshold=30) as pool:
        agent = await pool.get_agent()  # the line to look for in the warning
        with caplog.at_level(logging.WARNING, logger="shoal.pool"):
            await asyncio.sleep(29)
            assert not caplog.records
            await asyncio.sleep(2)
        assert len(caplog.records) == 1
        text = caplog.records[0].getMessage()
        assert "held for 30.0 s (leak_threshold=30" in text
        assert "test_an_agent_held_too_long" in text and "get_agent" in text
        await pool.release_agent(agent)


async def test_max_lifetime_is_spread_by_jitter_and_recycles_only_between_calls() -> None:
    backend = FakeBackend(call_time=120.0)
    async with make_pool(
        backend, min_size=8, max_size=8, max_lifetime=100, lifetime_jitter=0.2
    ) as pool:
        expiries = sorted(a.expires_at for a in pool.agents)
        assert len(set(expiries)) == 8 and expiries[0] >= 80 and expiries[-1] <= 100
        call = asyncio.create_task(pool.run(lambda: "finished"))
        await asyncio.sleep(0)
        busy = next(a for a in pool.agents if a.state.value == "busy")
        await asyncio.sleep(105)
        assert busy.state.value == "busy"  # past its lifetime, but mid-call: untouched
        assert await call == "finished"
        assert busy.state.value in ("stopping", "stopped")
        assert pool.size == 8


async def test_an_agent_over_its_memory_ceiling_is_recycled_after_its_call() -> None:
    backend = FakeBackend()
    async with make_pool(backend, min_size=1, max_size=1, max_memory_mb=100) as pool:
        first = backend.started[0]
        backend.memory[first] = 50 * 2**20
        await pool.run(lambda: 1)
        assert pool.agents[0].agent_id == first
        backend.memory[first] = 150 * 2**20
        await pool.run(lambda: 1)
        await asyncio.sleep(0)
        assert [a.agent_id for a in pool.agents] != [first]
        assert any("memory 150 MiB above max_memory_mb=100" in e.reason for e in pool.events)
