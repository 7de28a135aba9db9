"""Chaos: many calls over a small pool while a killer SIGKILLs random agents at a steady rate.

Every logical call must be answered exactly once with the right value (callers retry a call
whose agent was lost, which is what a step's ``retries`` does), the pool must return to its
minimum, and no process may leak. ``SHOAL_CHAOS_SECONDS`` makes it run longer by hand.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest

from shoal import AgentPool
from shoal.errors import agent_failed
from tests.integration import workers

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]

SECONDS = float(os.environ.get("SHOAL_CHAOS_SECONDS", "4"))
KILL_EVERY_S = 0.05
CLIENTS = 8
CALLS_PER_KILL = 20  # calls answered between two kills
MIN_KILLS, MIN_CALLS = 20, 500
MAX_SECONDS = 45.0


@pytest.mark.timeout(SECONDS + MAX_SECONDS + 60)
async def test_chaos_every_call_answered_exactly_once() -> None:
    rng = random.Random(7)
    answers: dict[int, list[int]] = {}
    kills = 0
    retries = 0
    async with AgentPool("chaos", min_size=2, max_size=3, start_timeout=30) as pool:
        started = time.monotonic()
        counter = iter(range(10**9))

        def enough() -> bool:
            # Done once the test has run its time and seen enough of both calls and kills; a
            # busy machine takes longer to get there (agents start slowly), not fails.
            elapsed = time.monotonic() - started
            return elapsed > MAX_SECONDS or (
                elapsed > SECONDS and kills >= MIN_KILLS and len(answers) >= MIN_CALLS
            )

        async def client() -> None:
            nonlocal retries
            while not enough():
                i = next(counter)
                for _ in range(50):
                    try:
                        value = await pool.run(workers.add, i, 1)
                    except Exception as exc:
                        if not agent_failed(exc):
                            raise
                        retries += 1
                        continue
                    answers.setdefault(i, []).append(value)
                    break
                else:
                    raise AssertionError(f"call {i} never succeeded")

        async def killer() -> None:
            nonlocal kills
            seen = 0
            while not enough():
                await asyncio.sleep(KILL_EVERY_S)
                if len(answers) < seen + CALLS_PER_KILL:
                    continue  # let the pool serve between kills, however slowly it starts
                live = [
                    a.handle.pid for a in pool.agents if a.handle is not None and a.handle.alive
                ]
                if live:
                    try:
                        os.kill(rng.choice(live), signal.SIGKILL)
                        kills += 1
                        seen = len(answers)
                    except ProcessLookupError:
                        pass

        await asyncio.gather(killer(), *(client() for _ in range(CLIENTS)))
        calls = len(answers)
        wrong = [i for i, v in answers.items() if v != [i + 1]]
        settle = time.monotonic() + 30
        # Settled: every lost agent replaced, up to the floor; agents started on demand for
        # the last callers may stay (they go after idle_timeout).
        while pool.size < pool.min_size or pool.metrics.starting or pool.metrics.stopping:
            assert time.monotonic() < settle, (pool, [str(e) for e in pool.events][-12:])
            await asyncio.sleep(0.05)
        assert pool.size <= pool.max_size
        started = pool.metrics.agents_started
    print(
        f"\nchaos: {calls} calls, {kills} kills, {retries} retried, lost 0, "
        f"duplicates {sum(len(v) - 1 for v in answers.values())}, agents started {started}"
    )
    assert calls >= MIN_CALLS and kills >= MIN_KILLS
    assert wrong == []  # each call answered exactly once, with its own value
