"""The autoscaler driving a pool on the fake backend, in virtual time."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import pytest

from shoal import AgentPool, FakeBackend
from shoal.pool.metrics import PoolMetrics
from shoal.scaling import AutoScaler, Decision

COLD_START = 2.0


def pool(backend: FakeBackend, **options: Any) -> AgentPool:
    options.setdefault("min_size", 1)
    options.setdefault("max_size", 30)
    options.setdefault("idle_timeout", 30.0)
    return AgentPool("api", backend=backend, **options)


async def drive(
    p: AgentPool, rate: float, duration: float, service: float, *, seed: int | None = None
) -> list[Any]:
    """Open-loop arrivals: ``rate`` per second for ``duration`` s (Poisson if ``seed``)."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    end = loop.time() + duration
    calls = []
    while loop.time() < end:
        calls.append(asyncio.ensure_future(p.run(asyncio.sleep, service, "ok")))
        await asyncio.sleep(rng.expovariate(rate) if seed is not None else 1 / rate)
    return list(await asyncio.gather(*calls, return_exceptions=True))


def scale_events(p: AgentPool) -> list[Any]:
    return [e for e in p.events if e.kind == "scale"]


def reversals(p: AgentPool) -> int:
    signs = [1 if e.to_size > e.from_size else -1 for e in scale_events(p)]
    return sum(1 for a, b in itertools.pairwise(signs) if a != b)


async def test_a_step_in_load_scales_up_within_a_few_intervals() -> None:
    backend = FakeBackend(start_time=COLD_START)
    async with pool(backend) as p, AutoScaler(p, {"min": 1, "max": 30, "interval": 1}):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        load = asyncio.ensure_future(drive(p, rate=10, duration=60, service=1.0))
        while p.target_size < 10:
            await asyncio.sleep(0.5)
            assert loop.time() - t0 < 5, scale_events(p)
        await asyncio.sleep(10)  # the first wave waited for cold starts; after it, none does
        cold_before = p.metrics.cold_starts
        await asyncio.sleep(40)
        assert p.metrics.cold_starts == cold_before
        assert all(r == "ok" for r in await load)


async def test_idle_scales_down_only_after_the_cooldown_and_never_below_min() -> None:
    backend = FakeBackend(start_time=COLD_START)
    policy = {"min": 2, "max": 30, "cooldown_period": 60, "interval": 1}
    async with pool(backend, min_size=2, idle_timeout=3600) as p, AutoScaler(p, policy):
        await drive(p, rate=10, duration=20, service=1.0)
        assert p.target_size >= 10
        for _ in range(55):  # within the window the capacity for the recent load stays
            await asyncio.sleep(1)
            assert p.target_size >= 10
        await asyncio.sleep(60)  # the window, plus the smoothed demand's decay (~3 x 10 s)
        assert p.target_size == 2 and p.size == 2
        await asyncio.sleep(600)
        assert p.size == 2
        downs = [e for e in scale_events(p) if e.to_size < e.from_size]
        assert downs and all(e.reason.startswith("autoscaler:") for e in downs)


async def test_a_steady_load_near_a_threshold_does_not_oscillate() -> None:
    backend = FakeBackend(start_time=COLD_START)
    policy = {"min": 1, "max": 30, "interval": 1, "cooldown_period": 60}
    async with pool(backend) as p, AutoScaler(p, policy):
        results = await drive(p, rate=7, duration=600, service=1.0, seed=3)
        assert all(r == "ok" for r in results)
        events = scale_events(p)
        assert reversals(p) <= 3, [str(e) for e in events]
        settled = [e for e in events if e.time > 120]  # after the first wave and its window
        assert all(abs(e.to_size - e.from_size) <= 3 for e in settled), settled
        assert len(events) <= 12


async def test_a_burst_takes_the_burst_path() -> None:
    backend = FakeBackend(start_time=COLD_START)
    async with pool(backend) as p, AutoScaler(p, {"min": 1, "max": 30, "queue_depth": 5}):
        calls = [asyncio.ensure_future(p.run(asyncio.sleep, 5.0, "ok")) for _ in range(25)]
        await asyncio.sleep(1.5)
        bursts = [e for e in scale_events(p) if "burst" in e.reason]
        assert bursts and bursts[0].to_size >= 25
        assert bursts[0].metrics is not None and bursts[0].metrics.queue_depth >= 5
        assert all(r == "ok" for r in await asyncio.gather(*calls))


async def test_scale_to_zero_and_back() -> None:
    backend = FakeBackend(start_time=COLD_START)
    policy = {"mode": "reactive", "max": 10, "idle_terminate": 120, "interval": 1}
    async with pool(backend, min_size=0, idle_timeout=3600) as p, AutoScaler(p, policy):
        await drive(p, rate=2, duration=10, service=1.0)
        await asyncio.sleep(60)
        assert p.size >= 1  # not yet: one agent stays warm until idle_terminate
        await asyncio.sleep(80)
        assert p.target_size == 0 and p.size == 0
        assert any("no requests for" in e.reason for e in scale_events(p))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await p.run(asyncio.sleep, 0.5, "back") == "back"  # waits for a cold start
        assert loop.time() - t0 == pytest.approx(COLD_START + 0.5)


async def test_the_cost_cap_holds_even_for_on_demand_starts() -> None:
    backend = FakeBackend(start_time=COLD_START)
    policy = {"min": 1, "max": 30, "cost_threshold": 2.0}
    async with pool(backend, price_per_hour=0.5) as p, AutoScaler(p, policy):
        results = await drive(p, rate=20, duration=30, service=1.0)
        assert all(r == "ok" for r in results)
        assert backend.max_alive <= 4 and p.ceiling == 4
        assert any("at most 4 agents" in e.reason for e in p.events)


async def test_scale_down_never_retires_a_busy_agent() -> None:
    backend = FakeBackend(start_time=COLD_START)
    policy = {"min": 1, "max": 30, "cooldown_period": 5, "interval": 1}
    async with pool(backend) as p, AutoScaler(p, policy):
        long_calls = [asyncio.ensure_future(p.run(asyncio.sleep, 120.0, "done")) for _ in range(8)]
        await asyncio.sleep(3)
        assert p.metrics.busy == 8
        await asyncio.sleep(60)  # demand (8 busy) keeps the target; none is let go
        assert p.metrics.busy == 8
        assert all(r == "done" for r in await asyncio.gather(*long_calls))
        await asyncio.sleep(30)
        assert p.target_size == 1
        assert not [e for e in p.events if e.kind == "lost"]


async def test_a_custom_function_policy_and_every_change_has_a_reason() -> None:
    def every_ten_seconds(snapshot: PoolMetrics, state: int | None, now: float) -> Decision[int]:
        size = 3 if int(now) // 10 % 2 else 1
        return Decision(size, (state or 0) + 1, f"clock says {size}")

    backend = FakeBackend(start_time=COLD_START)
    async with pool(backend) as p, AutoScaler(p, every_ten_seconds, interval=5) as scaler:
        await asyncio.sleep(41)
        assert scaler.state.inner == 8  # the policy's own state, inside the surplus guard's
        ups = [e for e in scale_events(p) if e.to_size == 3]
        assert len(ups) == 2 and all("clock says 3" in e.reason for e in ups)
        assert all(e.reason for e in p.events)


async def test_decisions_land_at_fixed_times_however_long_each_takes() -> None:
    """A decision that takes 40 ms must not push every later one 40 ms later: the autoscaler
    decides at start + k x interval (the real one drifted 0.2-0.4 s by t = 240 s)."""
    loop = asyncio.get_running_loop()
    times: list[float] = []

    def slow(snapshot: PoolMetrics, state: None, now: float) -> Decision[None]:
        times.append(loop.time())
        loop.advance(0.04)  # type: ignore[attr-defined]  # the decision's own cost
        return Decision(snapshot.target_size, None, "keep")

    backend = FakeBackend(start_time=COLD_START)
    async with pool(backend) as p:
        scaler = AutoScaler(p, slow, interval=1.0)
        start = loop.time()
        async with scaler:
            await asyncio.sleep(240.5)
    assert len(times) == 240
    assert [round(t - start, 6) for t in times] == [float(k) for k in range(1, 241)]
