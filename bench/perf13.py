"""Benchmark: every row of issue 13 against its peer, idle and with two busy loops running.

Run ``python bench/perf13.py [--quick] [--write bench/RESULTS.md]`` (``make bench``).

For each load — *idle*, then *busy* (this script starts two ``while True: pass`` processes and
stops them after) — ``--rounds`` rounds alternate shoal and its peer, the order swapped each
round, every pool or executor created and warmed up outside the timed sections, 2 workers each:

* no-op round trip p50, a module function (``_work.noop``) and a function defined in this
  script (``script_noop``, which reads a global): shoal ``await pool.run(fn)`` against
  ``ProcessPoolExecutor.submit(fn).result()`` (fork start method);
* no-op throughput with 10,000 calls in flight (module function);
* CPU-bound efficiency: 100 calls of 10 ms of pure Python, calls/s over the ideal;
* ``map`` of ``square`` over 100,000 ints: shoal ``AgentPool.map`` against
  ``multiprocessing.Pool.map``, each with the best of several chunk sizes (the time of the
  best one is reported, with its chunk size).

Then, once (idle): ``shoal.sim.simulate`` on two generated traces shaped like the public ones
(6 hours with ~345k requests; 2 days with ~100k), for every policy, in requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import datetime as dt
import gc
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import _work  # noqa: E402
from pool_bench import _cpu_model, _loadavg, stop_resource_trackers  # noqa: E402

from shoal import AgentPool  # noqa: E402
from shoal.sim import workload  # noqa: E402
from shoal.sim.run import POLICIES, simulate  # noqa: E402

WORKERS = 2
CPU_S = 0.010
MAP_ITEMS = 100_000
CHUNKS = (500, 2_000, 12_500)
SCALE = 1


def script_noop() -> int:
    """A function of the user's script (this file is ``__main__``): it reads a global."""
    return SCALE


Row = dict[str, float]


async def _shoal(q: bool) -> Row:
    n_lat, n_tput, n_cpu = (500, 10_000, 60) if q else (2_000, 10_000, 100)
    out: Row = {}
    async with AgentPool("bench", min_size=WORKERS, max_size=WORKERS) as pool:
        for fn in (_work.noop, script_noop):
            for _ in range(200):
                await pool.run(fn)
        await asyncio.gather(*(pool.run(_work.busy, 0.001) for _ in range(4)))
        for name, fn in (("rt_module", _work.noop), ("rt_script", script_noop)):
            gc.collect()
            lat = []
            for _ in range(n_lat):
                t = time.perf_counter()
                await pool.run(fn)
                lat.append(time.perf_counter() - t)
            out[name] = statistics.median(lat) * 1e6
        gc.collect()
        t = time.perf_counter()
        await asyncio.gather(*(pool.run(_work.noop) for _ in range(n_tput)))
        out["tput"] = n_tput / (time.perf_counter() - t)
        gc.collect()
        t = time.perf_counter()
        await asyncio.gather(*(pool.run(_work.busy, CPU_S) for _ in range(n_cpu)))
        out["cpu"] = n_cpu / (time.perf_counter() - t) / (WORKERS / CPU_S)
        items = list(range(MAP_ITEMS))
        best = (float("inf"), 0)
        for chunk in CHUNKS:
            gc.collect()
            t = time.perf_counter()
            res = await pool.map(_work.square, items, chunksize=chunk)
            best = min(best, (time.perf_counter() - t, chunk))
            assert res[-1] == (MAP_ITEMS - 1) ** 2
        out["map_s"], out["map_chunk"] = best
    return out


def shoal_round(q: bool) -> Row:
    return asyncio.run(_shoal(q))


def ppe_round(q: bool) -> Row:
    n_lat, n_tput, n_cpu = (500, 10_000, 60) if q else (2_000, 10_000, 100)
    out: Row = {}
    ctx = multiprocessing.get_context("fork")
    with cf.ProcessPoolExecutor(WORKERS, mp_context=ctx) as ex:
        for fn in (_work.noop, script_noop):
            for _ in range(200):
                ex.submit(fn).result()
        [f.result() for f in [ex.submit(_work.busy, 0.001) for _ in range(4)]]
        for name, fn in (("rt_module", _work.noop), ("rt_script", script_noop)):
            gc.collect()
            lat = []
            for _ in range(n_lat):
                t = time.perf_counter()
                ex.submit(fn).result()
                lat.append(time.perf_counter() - t)
            out[name] = statistics.median(lat) * 1e6
        gc.collect()
        t = time.perf_counter()
        [f.result() for f in [ex.submit(_work.noop) for _ in range(n_tput)]]
        out["tput"] = n_tput / (time.perf_counter() - t)
        gc.collect()
        t = time.perf_counter()
        [f.result() for f in [ex.submit(_work.busy, CPU_S) for _ in range(n_cpu)]]
        out["cpu"] = n_cpu / (time.perf_counter() - t) / (WORKERS / CPU_S)
    with ctx.Pool(WORKERS) as mp_pool:
        mp_pool.map(_work.square, range(1000))
        items = list(range(MAP_ITEMS))
        best = (float("inf"), 0)
        for chunk in CHUNKS:
            gc.collect()
            t = time.perf_counter()
            res = mp_pool.map(_work.square, items, chunksize=chunk)
            best = min(best, (time.perf_counter() - t, chunk))
            assert res[-1] == (MAP_ITEMS - 1) ** 2
        out["map_s"], out["map_chunk"] = best
    return out


def measure(rounds: int, quick: bool) -> dict[str, list[Row]]:
    runs: dict[str, list[Row]] = {"shoal": [], "peer": []}
    pair: list[tuple[str, Callable[[bool], Row]]] = [("shoal", shoal_round), ("peer", ppe_round)]
    for r in range(rounds):
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            runs[name].append(fn(quick))
        s, p = runs["shoal"][-1], runs["peer"][-1]
        print(
            f"  round {r + 1}: rt {s['rt_module']:.0f}/{s['rt_script']:.0f} vs "
            f"{p['rt_module']:.0f}/{p['rt_script']:.0f} µs, tput {s['tput']:,.0f} vs "
            f"{p['tput']:,.0f}/s, cpu {s['cpu']:.1%} vs {p['cpu']:.1%}, map "
            f"{s['map_s'] * 1e3:.0f} vs {p['map_s'] * 1e3:.0f} ms",
            flush=True,
        )
    return runs


def med(rows: list[Row], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def busy_loops(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def sim_rows(quick: bool, policies: list[str]) -> list[tuple[str, str, int, float, float]]:
    scale = 0.1 if quick else 1.0
    traces = [
        ("6 h, diurnal", workload.diurnal(rate=16.0, duration=6 * 3600 * scale, seed=1)),
        ("2 days, bursty", workload.bursty(rate=0.35, duration=2 * 86400 * scale, seed=1)),
    ]
    rows = []
    for label, wl in traces:
        for policy in policies:
            t, cpu = time.perf_counter(), time.process_time()
            simulate(wl, policy, max_size=200)
            dt_s = time.perf_counter() - t
            # CPU time too: on a shared machine the wall time also counts other processes' turns.
            cpu_s = time.process_time() - cpu
            rows.append((label, policy, len(wl), dt_s, cpu_s))
            print(
                f"  sim {label} {policy}: {len(wl) / dt_s:,.0f} req/s "
                f"({len(wl) / cpu_s:,.0f} per CPU-second)",
                flush=True,
            )
    return rows


PODMAN_SOCK = "/run/podman/podman.sock"
IMAGE = "shoal-agent:latest"


def container_rows(n: int) -> tuple[float, float] | None:
    """Median cold start (s): a shoal container pool's start, and ``podman run --rm`` of the
    same image with the same options (init, network, mounts, user, read-only, caps) running
    ``python -c pass``; alternated. None without Podman's socket."""
    if not os.path.exists(PODMAN_SOCK):
        return None
    from shoal.backends.container import ContainerBackend

    # One backend for every start, as a runtime keeps one: its connection to the engine (and
    # the sweep for orphans that comes with it) is made once, before the first timed start.
    backend = ContainerBackend(IMAGE, base_url=f"unix://{PODMAN_SOCK}")
    backend._engine()

    async def shoal_start() -> float:
        t = time.perf_counter()
        async with AgentPool("cold", min_size=1, max_size=1, backend=backend):
            took = time.perf_counter() - t
        return took

    opts = backend._options(_spec(), "perf13-peer", "/tmp")
    cmd = ["podman", "run", "--rm", "--init", f"--network={opts['network_mode']}", "--read-only"]
    cmd += [f"--user={opts['user']}", "--cap-drop=ALL", "--security-opt=no-new-privileges"]
    cmd += ["--tmpfs=/tmp:rw,nosuid,nodev,mode=1777", f"--pids-limit={opts['pids_limit']}"]
    cmd += [f"-v={h}:{m['bind']}:{m['mode']}" for h, m in opts["volumes"].items()]
    cmd += [f"--workdir={opts['working_dir']}", IMAGE, opts["command"][0], "-c", "pass"]
    mine: list[float] = []
    peer: list[float] = []
    for i in range(n + 1):
        order = [0, 1] if i % 2 == 0 else [1, 0]
        for which in order:
            if which == 0:
                took = asyncio.run(shoal_start())
            else:
                t = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, timeout=60)
                took = time.perf_counter() - t
            if i:  # the first pair warms the engine's caches
                (mine if which == 0 else peer).append(took)
    return statistics.median(mine), statistics.median(peer)


def _spec() -> Any:
    from shoal.backends.base import AgentSpec

    return AgentSpec(pool="perf13", agent_id="peer", image=IMAGE, setup=None)


def table(
    loads: dict[str, dict[str, list[Row]]],
    sims: list[tuple[str, str, int, float, float]],
    containers: tuple[float, float] | None = None,
) -> str:
    lines = [
        "| measure | load | shoal | peer, same run | ratio | goal | verdict |",
        "|---|---|---:|---:|---:|---|---|",
    ]

    def add(
        measure: str, load: str, s: float, p: float, fmt: str, ratio: float, goal: str, ok: bool
    ) -> None:
        lines.append(
            f"| {measure} | {load} | {fmt.format(s)} | {fmt.format(p)} | {ratio:.2f}x | {goal} "
            f"| {'PASS' if ok else 'MISS'} |"
        )

    for load, runs in loads.items():
        s, p = runs["shoal"], runs["peer"]
        for key, what in (("rt_module", "module function"), ("rt_script", "script function")):
            a, b = med(s, key), med(p, key)
            add(
                f"no-op round trip p50 (µs), {what}",
                load,
                a,
                b,
                "{:.1f}",
                a / b,
                "≤ 0.33x PPE",
                a / b <= 0.33,
            )
        a, b = med(s, "tput"), med(p, "tput")
        add(
            "no-op throughput, 10,000 in flight (calls/s)",
            load,
            a,
            b,
            "{:,.0f}",
            a / b,
            "≥ 2.5x PPE",
            a / b >= 2.5,
        )
        a, b = med(s, "cpu"), med(p, "cpu")
        add(
            "10 ms CPU calls, efficiency",
            load,
            a * 100,
            b * 100,
            "{:.1f}%",
            a / b,
            "≥ 97% and ≥ PPE",
            a >= 0.97 and a >= b,
        )
        a, b = med(s, "map_s"), med(p, "map_s")
        add(
            f"map of 100,000 tiny items, best chunksize (ms; shoal {med(s, 'map_chunk'):.0f}, "
            f"mp {med(p, 'map_chunk'):.0f})",
            load,
            a * 1e3,
            b * 1e3,
            "{:.0f}",
            a / b,
            "< 1x multiprocessing.Pool.map",
            a < b,
        )
    for label, policy, n, secs, cpu_s in sims:
        rate = n / secs
        lines.append(
            f"| `shoal simulate`, {label}, {n:,} requests, `{policy}` | after the rounds | "
            f"{secs:.1f} s = {rate:,.0f} req/s (CPU {cpu_s:.1f} s = {n / cpu_s:,.0f}/s) | | | "
            f"≥ 50,000 req/s | {'PASS' if rate >= 50_000 else 'MISS'} |"
        )
    if containers is not None:
        a, b = containers
        lines.append(
            f"| container cold start (ms, median) | after the rounds | {a * 1e3:.0f} | "
            f"{b * 1e3:.0f} "
            f"(`podman run --rm`, same image and options, `python -c pass`) | {a / b:.2f}x | "
            f"<= podman's own run | {'PASS' if a <= b else 'MISS'} |"
        )
    return "\n".join(lines)


MARK_BEGIN = "<!-- perf13:begin -->"
MARK_END = "<!-- perf13:end -->"


def write(path: Path, text: str) -> None:
    body = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{MARK_BEGIN}\n{text}\n{MARK_END}"
    if MARK_BEGIN in body:
        head, rest = body.split(MARK_BEGIN, 1)
        body = head + block + rest.split(MARK_END, 1)[1]
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(body, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--loads", default="idle,busy")
    parser.add_argument("--policies", default=",".join(p for p in POLICIES if p != "fixed"))
    parser.add_argument("--no-sim", action="store_true")
    parser.add_argument("--no-containers", action="store_true")
    parser.add_argument("--write", type=Path, metavar="RESULTS_MD")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 4)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_at_start = _loadavg()
    loads: dict[str, dict[str, list[Row]]] = {}
    try:
        for load in [name for name in args.loads.split(",") if name]:
            loops = busy_loops(2) if load == "busy" else []
            at = _loadavg().split()[0]
            print(f"{load} ({len(loops)} busy loops), load average {at}", flush=True)
            try:
                loads[f"{load} (load {at} at start)"] = measure(rounds, args.quick)
            finally:
                for p in loops:
                    p.kill()
                    p.wait()
    finally:
        stop_resource_trackers()
    sims = [] if args.no_sim else sim_rows(args.quick, args.policies.split(","))
    containers = None if args.no_containers else container_rows(3 if args.quick else 5)
    text = (
        f"- **Command:** `{' '.join(['python', *sys.argv])}`\n"
        f"- **Date:** {started}; **machine:** {_cpu_model()}, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}; load average at start {load_at_start} "
        "(a shared machine: other engineers' test runs)\n"
        f"- **Method:** {rounds} rounds per load, shoal and its peer alternating (order "
        "swapped each round), medians over rounds; peer = ProcessPoolExecutor (fork) or "
        "multiprocessing.Pool (fork) for map; *busy* = two `while True: pass` processes "
        "started by the benchmark.\n\n" + table(loads, sims, containers)
    )
    print("\n" + text)
    if args.write is not None:
        write(args.write, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
