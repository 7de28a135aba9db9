"""What a warm agent saves: a pool whose agents import numpy once, timed cold against warm.

Run with ``make demo``. Each agent is a local worker process that imports numpy in its setup;
the first call pays that cold start, every call after runs on a warm agent.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from heavy import load_numpy, normalise, simulate

from shoal import AgentPool


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:8.1f} µs"


async def main() -> None:
    data = [float(i % 17) for i in range(1000)]

    print("shoal pool demo: agents are local worker processes whose setup imports numpy\n")
    t0 = time.perf_counter()
    async with AgentPool("demo", min_size=1, max_size=4, setup=load_numpy) as pool:
        cold_start = time.perf_counter() - t0
        t1 = time.perf_counter()
        await pool.run(normalise, data)
        first = time.perf_counter() - t1
        print(f"  cold start (spawn + import numpy) {ms(cold_start)}")
        print(f"  first call on the fresh agent     {ms(first)}")

        warm = []
        for _ in range(500):
            t = time.perf_counter()
            await pool.run(normalise, data)
            warm.append(time.perf_counter() - t)
        p50 = statistics.median(warm)
        print(f"  warm call, p50 of 500             {ms(p50)}")
        print(f"  a warm call is {cold_start / p50:,.0f}x faster than a cold start\n")

        print("  a burst of 200 simulations (~3 ms each): the pool grows on demand to max_size=4")
        t = time.perf_counter()
        results = await asyncio.gather(*(pool.run(simulate, seed) for seed in range(200)))
        print(
            f"    200 calls in {ms(time.perf_counter() - t)} on "
            f"{len({r['pid'] for r in results})} agents"
        )
        print(f"    {pool!r}")
        m = pool.metrics
        print(
            f"    requests {m.requests_total}, warm hits {m.warm_hits}, cold starts "
            f"{m.cold_starts}, wait p50 {ms(m.wait_p50).strip()}, p99 {ms(m.wait_p99).strip()}"
        )
        print("    why the pool has its size:")
        for event in pool.events:
            print(
                f"      {event.kind:<6} {event.agent_id:<7} {event.from_size} -> {event.to_size}"
                f"  ({event.reason})"
            )

    print("\n  for comparison, a fresh agent per call (the cold path), 3 times:")
    for _ in range(3):
        t = time.perf_counter()
        async with AgentPool("cold", min_size=1, max_size=1, setup=load_numpy) as once:
            await once.run(normalise, data)
        print(f"    start + call + stop             {ms(time.perf_counter() - t)}")


if __name__ == "__main__":
    asyncio.run(main())
