"""Benchmark: ``shoal simulate`` of this tree against another tree of shoal, same run.

Run ``python bench/sim_ab.py --peer-src DIR`` where ``DIR`` holds another version's ``shoal``
package (e.g. ``git archive main src | tar -x -C /tmp/main`` then ``--peer-src /tmp/main/src``).
For each trace of ``bench/perf13.py`` and each policy, each round runs the simulation once per
tree, each in a fresh interpreter, the order swapped every round. It reports the median CPU
seconds of each as requests per CPU-second (CPU time, not wall: on a shared machine the wall
clock also counts other processes' turns), their ratio, and whether the two runs' summaries
were identical.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

CHILD = """
import json, sys, time
from shoal.sim import workload
from shoal.sim.run import simulate
trace, policy, scale = sys.argv[1], sys.argv[2], float(sys.argv[3])
if trace == "6h":
    wl = workload.diurnal(rate=16.0, duration=6 * 3600 * scale, seed=1)
else:
    wl = workload.bursty(rate=0.35, duration=2 * 86400 * scale, seed=1)
cpu = time.process_time()
result = simulate(wl, policy, max_size=200)
cpu = time.process_time() - cpu
print(json.dumps({"n": len(wl), "cpu": cpu, "summary": result.summary()}))
"""


def once(src: Path, trace: str, policy: str, scale: float) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, trace, policy, str(scale)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--peer-src", type=Path, required=True)
    parser.add_argument("--policies", default="auto,target,rule,hpa,kpa,rayserve,keepalive")
    parser.add_argument("--traces", default="6h,2d")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each trace")
    args = parser.parse_args(argv)
    print("| trace | policy | requests | this tree | peer | ratio | same figures |")
    print("|---|---|---:|---:|---:|---:|---|")
    for trace in args.traces.split(","):
        for policy in args.policies.split(","):
            ours: list[float] = []
            peer: list[float] = []
            same = True
            n = 0
            for r in range(args.rounds):
                order = [(SRC, ours), (args.peer_src, peer)]
                if r % 2:
                    order.reverse()
                summaries = []
                for src, into in order:
                    got = once(src, trace, policy, args.scale)
                    n = int(got["n"])  # type: ignore[call-overload]
                    into.append(float(got["cpu"]))  # type: ignore[arg-type]
                    summaries.append(got["summary"])
                same = same and summaries[0] == summaries[1]
            a, b = statistics.median(ours), statistics.median(peer)
            print(
                f"| {trace} | {policy} | {n:,} | {n / a:,.0f} | {n / b:,.0f} | {b / a:.2f}x | "
                f"{'yes' if same else '**no**'} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
