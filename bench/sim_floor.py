"""Benchmark: what the simulator's 2-day row of issue 13 costs per tick and per request.

Run ``python bench/sim_floor.py [--policies a,b] [--scale 1.0]``. For each policy it
simulates, in CPU time, the 2-day bursty trace of ``bench/perf13.py`` twice: first the same
horizon with a single request (what the autoscaler's ticks and the idle pool cost alone, one
decision per simulated second), then the whole trace. ``ticks alone`` caps the requests per
second any run of that horizon can reach however cheap requests become; the rest of the full
run is the requests' own cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "src"))

from shoal.sim import workload  # noqa: E402
from shoal.sim.run import POLICIES, simulate  # noqa: E402
from shoal.sim.workload import Workload  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--policies", default=",".join(p for p in POLICIES if p != "fixed"))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 2 days")
    args = parser.parse_args()
    trace = workload.bursty(rate=0.35, duration=2 * 86400 * args.scale, seed=1)
    ticks_only = Workload("ticks-only", (0.0,), (0.5,), horizon=trace.horizon)
    n, ticks = len(trace), trace.horizon
    print(f"2-day bursty trace x {args.scale:g}: {n:,} requests, {ticks:,.0f} simulated seconds")
    print(
        "| policy | ticks alone (CPU s) | per tick (µs) | cap from ticks (req/s) "
        "| full run (CPU s) | req/s | per request beyond ticks (µs) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for policy in args.policies.split(","):
        t = time.process_time()
        simulate(ticks_only, policy, max_size=200)
        alone = time.process_time() - t
        t = time.process_time()
        simulate(trace, policy, max_size=200)
        full = time.process_time() - t
        print(
            f"| `{policy}` | {alone:.2f} | {alone / ticks * 1e6:.1f} | {n / alone:,.0f} "
            f"| {full:.2f} | {n / full:,.0f} | {(full - alone) / n * 1e6:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
