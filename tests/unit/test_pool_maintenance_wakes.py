"""Maintenance sleeps on one timer that sets its wake future (no asyncio.timeout).

It must still wake at its deadlines (a health check of an idle agent is due every
``health_check_interval``) and a call that needs an agent must still get one started at once.
"""

from __future__ import annotations

import asyncio

from shoal import AgentPool
from shoal.clock import run_virtual
from shoal.sim.backend import SimBackend, serve


def test_maintenance_wakes_at_its_health_check_deadlines() -> None:
    async def main() -> list[float]:
        pool = AgentPool(
            "p", backend=SimBackend(), min_size=1, max_size=1, health_check_interval=30.0
        )
        st = pool._state
        tick = st.tick
        seen: list[float] = []

        def counted(now: float) -> float:
            seen.append(now)
            return tick(now)

        st.tick = counted  # type: ignore[method-assign]
        async with pool:
            await asyncio.sleep(100.0)
        return seen

    # Nothing happens but the idle agent's health checks, 30 s apart: passes at those times
    # only (the checked agent's return to the idle list pokes one more at the same instant).
    assert sorted({t for t in run_virtual(main()) if t > 0}) == [30.0, 60.0, 90.0]


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
