"""Maintenance wakes for its deadlines, not for every agent that comes free.

The pool's maintenance task sleeps until the earliest of its deadlines (health checks, idle
timeouts, lifetimes, heartbeats); the state's ``poke`` wakes it sooner when a deadline moves
earlier. An agent freed into an empty idle list used to poke it every time, and a pool whose
backend reports no liveness still woke every ``heartbeat_timeout / 4`` while calls ran: a
simulation paid a maintenance pass (and its timer) for most requests. These tests count the
passes, on virtual time, and check that a call that needs an agent still gets one started at
once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shoal import AgentPool
from shoal.backends import FakeBackend
from shoal.clock import run_virtual
from shoal.config import PoolConfig
from shoal.pool.state import PoolState, Start
from shoal.sim.backend import SimBackend, serve


class _Handle:
    exit_code: int | None = None


def _count_ticks(pool: AgentPool) -> list[float]:
    """Record the loop time of each maintenance pass of ``pool``."""
    st = pool._state
    tick = st.tick
    seen: list[float] = []

    def counted(now: float) -> float:
        seen.append(now)
        return tick(now)

    st.tick = counted  # type: ignore[method-assign]
    return seen


def test_an_agent_freed_into_an_empty_idle_list_pokes_only_for_an_earlier_deadline() -> None:
    config = PoolConfig(
        name="p", min_size=1, max_size=2, idle_timeout=600.0, health_check_interval=30.0
    )
    st = PoolState(config)
    st.open(0.0)
    (start,) = st.actions
    st.actions.clear()
    assert isinstance(start, Start)
    st.agent_started(start.agent, _Handle(), 0.0)
    st.actions.clear()
    lease = st.request(1.0, owned=True)
    assert lease is not None and not st.idle
    # Maintenance sleeps until the agent's next health check, as it computed before the call.
    st.wake_at = 30.0
    st.poke = False
    st.release(lease, 2.0)
    assert st.idle and not st.poke, "freed with its deadlines after 30 s: nothing to wake for"
    lease = st.request(3.0, owned=True)
    assert lease is not None
    st.wake_at = 40.0  # maintenance sleeps past the check that the call's answer moved to 34 s
    st.poke = False
    st.release(lease, 4.0)
    assert st.poke, "its health check at 34 s comes before the 40 s maintenance sleeps until"


def test_sequential_calls_wake_maintenance_only_for_its_deadlines() -> None:
    """One agent, 120 calls a second apart: each frees the agent into an empty idle list."""

    async def main() -> tuple[list[float], int]:
        pool = AgentPool(
            "p",
            backend=SimBackend(),
            min_size=1,
            max_size=1,
            health_check_interval=30.0,
            heartbeat_timeout=30.0,
        )
        seen = _count_ticks(pool)
        async with pool:
            for _ in range(120):
                await pool.call(serve, (0.5,))
                await asyncio.sleep(0.5)
            return seen, pool.metrics.requests_total

    seen, served = run_virtual(main())
    assert served == 120
    # Health checks are due every 30 s of idleness and the calls keep the agent fresh: a
    # pass at start and a handful more, not one per call (there were 240 passes before).
    assert len(seen) <= 12, f"{len(seen)} maintenance passes for 120 calls: {seen[:20]}"


def test_a_pool_without_liveness_reports_does_not_wake_for_heartbeats() -> None:
    async def run(backend: Any, fn: Any) -> list[float]:
        pool = AgentPool(
            "p",
            backend=backend,
            min_size=1,
            max_size=1,
            heartbeat_timeout=4.0,
            health_check_interval=1000.0,  # (maintenance's own pace otherwise: every 1000 s)
        )
        seen = _count_ticks(pool)
        async with pool:
            await pool.call(fn, (100.0,))  # a 100 s call
        return [t for t in seen if 1.0 < t < 99.0]

    # The simulated backend reports no liveness: nothing to read while its call runs.
    assert run_virtual(run(SimBackend(), serve)) == []
    # A backend that does report it is still watched every heartbeat_timeout / 4.
    watched = run_virtual(run(FakeBackend(), asyncio.sleep))
    assert len(watched) >= 20, watched


def test_a_call_that_needs_an_agent_gets_one_started_at_once() -> None:
    """Fewer maintenance passes must not delay a start: the call's own request starts it."""

    async def main() -> list[float]:
        pool = AgentPool(
            "p",
            backend=SimBackend(cold_start=2.0),
            min_size=0,
            max_size=3,
            idle_timeout=5.0,
            on_demand=True,
        )
        loop = asyncio.get_running_loop()
        done: list[float] = []
        async with pool:
            for _ in range(3):
                t0 = loop.time()
                await pool.call(serve, (1.0,))
                done.append(loop.time() - t0)
                await asyncio.sleep(20.0)  # past the idle timeout: the agent is retired
        return done

    # Each call finds no agent, starts one (2 s) and runs (1 s): 3 s, never a tick later.
    assert run_virtual(main()) == [3.0, 3.0, 3.0]
