"""Benchmark: prefetch on and off in one pool, alternating, so both see the same machine.

Run ``python bench/prefetch_ab.py [--rounds N]``. One pool of 2 process agents; each round runs
10,000 no-op calls in flight, then 60 calls of 10 ms of CPU, once with prefetch off and once
with it on (``PoolState.prefetch``, switched between batches; no call is in flight then).
Prints every round and the medians: no-op calls/s and CPU efficiency (calls/s over the ideal
of 2 agents x 100 calls/s).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import _work  # noqa: E402

from shoal import AgentPool  # noqa: E402


async def run(rounds: int) -> dict[bool, tuple[list[float], list[float]]]:
    out: dict[bool, tuple[list[float], list[float]]] = {False: ([], []), True: ([], [])}
    async with AgentPool("ab", min_size=2, max_size=2) as pool:
        st = pool._state
        await asyncio.gather(*(pool.run(_work.noop) for _ in range(1000)))
        for r in range(rounds):
            for on in (False, True) if r % 2 == 0 else (True, False):
                st.prefetch = on
                st.spare.clear()
                gc.collect()
                t = time.perf_counter()
                await asyncio.gather(*(pool.run(_work.noop) for _ in range(10_000)))
                out[on][0].append(10_000 / (time.perf_counter() - t))
                t = time.perf_counter()
                await asyncio.gather(*(pool.run(_work.busy, 0.010) for _ in range(60)))
                out[on][1].append(60 / (time.perf_counter() - t) / 200)
            print(
                f"  round {r + 1}: off {out[False][0][-1]:,.0f}/s {out[False][1][-1]:.1%}, "
                f"on {out[True][0][-1]:,.0f}/s {out[True][1][-1]:.1%}",
                flush=True,
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    out = asyncio.run(run(args.rounds))
    off_t, off_c = (statistics.median(x) for x in out[False])
    on_t, on_c = (statistics.median(x) for x in out[True])
    print(f"no-op throughput: prefetch off {off_t:,.0f}/s, on {on_t:,.0f}/s ({on_t / off_t:.2f}x)")
    print(f"10 ms CPU calls, efficiency: prefetch off {off_c:.1%}, on {on_c:.1%}")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
