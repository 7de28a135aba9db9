"""Benchmark: what placements cost the pool's hot path, against the code before them.

Run ``.venv/bin/python bench/placement_overhead.py [--old REV] [--rounds N] [--calls N]``.

Contenders, each in its own interpreter (the same package cannot be imported twice):

* **before** — ``src/`` of git revision ``--old`` (default ``main``), extracted with
  ``git archive`` to a temporary folder: the pool without placements;
* **after, 1 placement** — this tree's ``src/``: a pool configured as before (one implicit
  on-demand placement);
* **after, 2 placements** — this tree, ``placements=[on_demand, spot]`` on the same backend.

What is measured, in each contender:

a. *Bookkeeping per call*: :class:`~shoal.pool.state.PoolState` alone, two agents warm,
   ``request`` → ``begin_call`` → ``end_call`` → ``release`` in a loop (``--calls`` times); ns per
   call from ``time.perf_counter_ns`` around the loop.
b. *No-op round trip* on real agent processes: ``AgentPool(min_size=2, max_size=2)`` on the
   process backend, ``await pool.run(noop)`` one at a time; p50 in µs.

Method: ``--rounds`` rounds, each runs every contender once, the order rotated from round to
round; the figure of a contender is its median over rounds. Ratios are against *before* in the
same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent

CHILD = r"""
import asyncio, json, sys, time
sys.path.insert(0, BENCH)
import _work
from shoal.config import PoolConfig
from shoal.pool.state import PoolState, Start

placements = int(sys.argv[1])
calls = int(sys.argv[2])
extra = {}
if placements == 2:
    extra = {"placements": ({"name": "od"}, {"name": "spot", "capacity": "spot"})}

class Handle:
    exit_code = None

def bookkeeping():
    cfg = PoolConfig.build("bench", {"name": "b", "min_size": 2, "max_size": 2,
                                      "heartbeat_timeout": None, **extra})
    st = PoolState(cfg)
    st.open(0.0)
    for a in st.actions:
        if isinstance(a, Start):
            st.agent_started(a.agent, Handle(), 0.0)
    st.actions.clear()
    now = 1.0
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        lease = st.request(now)
        st.begin_call(lease)
        st.end_call(lease, now, now, False)
        st.release(lease, now)
    return (time.perf_counter_ns() - t0) / calls

async def round_trip():
    from shoal import AgentPool, ProcessBackend
    kw = {"placements": list(extra["placements"])} if extra else {}
    async with AgentPool("rt", min_size=2, max_size=2, backend=ProcessBackend(), **kw) as pool:
        for _ in range(200):
            await pool.run(_work.noop)
        samples = []
        for _ in range(2000):
            t = time.perf_counter()
            await pool.run(_work.noop)
            samples.append(time.perf_counter() - t)
    samples.sort()
    return samples[len(samples) // 2] * 1e6

print(json.dumps({"ns_per_call": bookkeeping(), "rt_p50_us": asyncio.run(round_trip())}))
"""


def old_tree(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True
    ).stdout
    tar = into / "old.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into / "src"


def run_child(src: Path, placements: int, calls: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = f"BENCH = {str(BENCH)!r}\n" + CHILD
    out = subprocess.run(
        [sys.executable, "-c", code, str(placements), str(calls)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--old", default="main", help="git revision of the code before")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = old_tree(args.old, Path(tmp))
        contenders = [
            ("before", old, 1),
            ("after, 1 placement", ROOT / "src", 1),
            ("after, 2 placements", ROOT / "src", 2),
        ]
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in contenders}
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        load = os.getloadavg()[0]
        for r in range(args.rounds):
            order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
            for name, src, placements in order:
                results[name].append(run_child(src, placements, args.calls))
    base = {k: statistics.median(x[k] for x in results["before"]) for k in results["before"][0]}
    print(f"date {started}; load average {load:.1f} at the start; rounds {args.rounds}")
    print("| contender | bookkeeping ns/call | ratio | no-op round trip p50 µs | ratio |")
    print("|---|---|---|---|---|")
    for name, _, _ in contenders:
        ns = statistics.median(x["ns_per_call"] for x in results[name])
        rt = statistics.median(x["rt_p50_us"] for x in results[name])
        print(
            f"| {name} | {ns:,.0f} | {ns / base['ns_per_call']:.2f}x | {rt:.1f} | "
            f"{rt / base['rt_p50_us']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
