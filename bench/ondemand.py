"""On-demand starts, old rule against new, in virtual time: p50/p99 wait and agent-seconds.

The old rule starts an agent at once for every waiting caller not covered by agents starting
or idle; the new one first leaves to the busy agents the callers they are expected to reach
before a new agent would be up (``shoal.pool.ondemand.reached_before_a_start``). Each scenario
runs an ``AgentPool`` on a ``FakeBackend`` on a ``VirtualTimeLoop`` with no autoscaler
(on-demand starts are then the only way the pool grows), ``min_size=1`` and the ``max_size``
and ``idle_timeout`` each scenario names; the calls are ``pool.run(asyncio.sleep, d)``. The
figures are exact and repeatable (virtual time, seeded arrivals): they depend on the pool's
rules, not on the machine.
The fake backend does not pipeline, so nothing is prefetched (the process backend's calls are).

Run it once per source tree and compare (the old rule: ``git archive c572a17~1 src``)::

    PYTHONPATH=src python bench/ondemand.py
    PYTHONPATH=/tmp/old-rev/src python bench/ondemand.py
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass

from shoal import AgentPool, FakeBackend
from shoal.clock import VirtualTimeLoop

Workload = list[tuple[float, float]]  # (arrival, run time), by arrival


@dataclass
class Outcome:
    p50: float
    p99: float
    worst: float
    agent_s: float
    starts: int


def bursts(every: float, size: int, n: int, run_s: Callable[[random.Random], float]) -> Workload:
    rng = random.Random(1)
    return [(i * every, run_s(rng)) for i in range(n) for _ in range(size)]


def poisson(
    rate: float, n: int, run_s: Callable[[random.Random], float], t0: float = 0.0
) -> Workload:
    rng = random.Random(2)
    t, out = t0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append((t, run_s(rng)))
    return out


def fixed(seconds: float) -> Callable[[random.Random], float]:
    return lambda _rng: seconds


def lognormal(median: float, sigma: float) -> Callable[[random.Random], float]:
    return lambda rng: rng.lognormvariate(math.log(median), sigma)


def regime_change() -> Workload:
    short = poisson(20.0, 2000, fixed(0.05))
    return short + poisson(3.0, 600, fixed(5.0), t0=short[-1][0])


# name: (start time, max_size, idle_timeout, workload)
SCENARIOS: dict[str, tuple[float, int, float, Workload]] = {
    "A. max 8, idle 300 s: bursts of 20 x 1-s calls every 10 s, 30-ms starts": (
        0.03,
        8,
        300.0,
        bursts(10.0, 20, 60, fixed(1.0)),
    ),
    "B. max 8, idle 5 s: bursts of 20 x 1-s calls every 20 s, 30-ms starts": (
        0.03,
        8,
        5.0,
        bursts(20.0, 20, 60, fixed(1.0)),
    ),
    "C. max 8, idle 5 s: bursts of 6 x 1-s calls every 20 s, 2-s starts": (
        2.0,
        8,
        5.0,
        bursts(20.0, 6, 60, fixed(1.0)),
    ),
    "D. max 32, idle 5 s: bursts of 20 x 1-s calls every 20 s, 2-s starts": (
        2.0,
        32,
        5.0,
        bursts(20.0, 20, 60, fixed(1.0)),
    ),
    "E. max 32, idle 1 s: bursts of 50 x 10-ms calls every 2 s, 30-ms starts": (
        0.03,
        32,
        1.0,
        bursts(2.0, 50, 100, fixed(0.01)),
    ),
    "F. max 32, idle 10 s: Poisson 10/s x 1-s calls, 2-s starts": (
        2.0,
        32,
        10.0,
        poisson(10.0, 6000, fixed(1.0)),
    ),
    "G. max 32, idle 10 s: Poisson 10/s x lognormal(0.3 s, 1.5), 1-s starts": (
        1.0,
        32,
        10.0,
        poisson(10.0, 6000, lognormal(0.3, 1.5)),
    ),
    "H. max 32, idle 10 s: 20/s x 50-ms calls, then 3/s x 5-s calls, 1-s starts": (
        1.0,
        32,
        10.0,
        regime_change(),
    ),
}


async def run(start_s: float, max_size: int, idle_s: float, work: Workload) -> Outcome:
    loop = asyncio.get_running_loop()
    pool = AgentPool(
        "bench",
        backend=FakeBackend(start_time=start_s),
        min_size=1,
        max_size=max_size,
        idle_timeout=idle_s,
    )
    waits: list[float] = []
    agent_s = 0.0
    last = 0.0
    size = 0

    def account() -> None:
        nonlocal agent_s, last, size
        now = loop.time()
        agent_s += size * (now - last)
        last, size = now, pool.size

    async def one(at: float, d: float) -> None:
        await asyncio.sleep(at - loop.time())
        account()
        t = loop.time()
        await pool.run(asyncio.sleep, d)
        account()
        waits.append(loop.time() - t - d)

    async with pool:
        t0 = loop.time()
        last, size = t0, pool.size
        started = pool.metrics.agents_started
        await asyncio.gather(*(one(t0 + at, d) for at, d in work))
        await asyncio.sleep(idle_s + 60.0)  # the surplus agents idle out
        account()
        starts = pool.metrics.agents_started - started
    waits.sort()
    return Outcome(
        p50=waits[len(waits) // 2],
        p99=waits[min(len(waits) - 1, int(0.99 * len(waits)))],
        worst=waits[-1],
        agent_s=agent_s,
        starts=starts,
    )


def main() -> None:
    print("| scenario | wait p50 (s) | wait p99 (s) | worst (s) | agent-s | starts |")
    print("|---|---|---|---|---|---|")
    for name, (start_s, max_size, idle_s, work) in SCENARIOS.items():
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            out = runner.run(run(start_s, max_size, idle_s, work))
        print(
            f"| {name} | {out.p50:.3f} | {out.p99:.3f} | {out.worst:.3f} | "
            f"{out.agent_s:.0f} | {out.starts} |"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
