"""Benchmark: shoal's AgentPool against ProcessPoolExecutor and loky, on local worker processes.

Run ``.venv/bin/python bench/pool_bench.py [--quick] [--workers N] [--json out.json]``.

Contenders, each with the same number of workers (``--workers``, default: the CPUs this process
may run on):

* **shoal** — ``AgentPool(min_size=N, max_size=N)``, driven from an asyncio event loop;
* **shoal, spin=0** — the same with ``ProcessBackend(spin=0)``: agents go to sleep right after
  each reply instead of polling for the next call for 100 µs, so this row shows what that buys;
* **PPE** — ``concurrent.futures.ProcessPoolExecutor(N)`` with the platform's default start
  method (``fork`` on Linux before Python 3.14), driven synchronously;
* **loky** — ``loky.get_reusable_executor(N)`` (loky's own fork+exec start), driven synchronously.

What is measured:

a. *Round trip of one no-op call*, one call at a time: shoal ``await pool.run(noop)``, the
   executors ``executor.submit(noop).result()``; ``time.perf_counter()`` around each call. All
   samples of a contender, over all rounds, are pooled and reported as p50 / p99 / mean in µs.
b. *No-op throughput*: 10,000 calls in flight at once — shoal
   ``await asyncio.gather(*(pool.run(noop) for _ in range(10_000)))``; the executors submit all
   10,000 and then wait for every result. One calls/s figure per round.
c. *CPU-bound throughput*: calls of ``busy(0.010)``, a pure-Python loop that spins for 10 ms of
   wall time measured inside the worker, all in flight at once. Efficiency is achieved calls/s
   divided by the ideal ``workers / 0.010``. One figure per round.
d. *Warm call vs cold start* of an agent whose setup imports numpy: cold = entering
   ``async with AgentPool("cold", min_size=1, max_size=1, setup=import_numpy)`` (a process
   spawned and warmed) plus its first call; ``pool.start`` alone is recorded too. Warm = p50 of
   the no-op round trips that follow on the same pool. The peer is a fresh
   ``ProcessPoolExecutor(1, initializer=import_numpy)``: construction plus its first
   ``submit(noop).result()`` versus the warm round trips after it. Shoal and the peer alternate,
   after one unrecorded start of each that brings numpy's files into the OS cache.

Method: the throughput-and-latency contenders are alternated in blocks — in each of ``--rounds``
rounds every contender runs once, the order rotated from round to round, so drift on a shared
machine hits all of them alike. Each pool or executor is created once per round, outside the timed
sections, and warmed up first (sequential and concurrent no-op calls, plus a few ``busy`` calls so
every worker has the functions). ``gc.collect()`` runs before each timed section. Throughput
figures are reported as the median over rounds with the range; goals are judged on the medians.

The functions shipped to workers live in ``bench/_work.py``, an importable module, so all three
contenders send them by reference. Every pool is closed and every executor shut down (loky's with
``kill_workers=True``, and loky's resource tracker stopped); at the end the benchmark lists any
child process still alive and exits with status 1 if there is one.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import datetime as dt
import gc
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import resource_tracker as mp_resource_tracker
from pathlib import Path
from typing import Any, TypeVar

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    # Workers import the shipped functions from here: shoal agents get the parent's sys.path,
    # forked PPE workers inherit it and loky passes it on to the processes it spawns.
    sys.path.insert(0, str(BENCH_DIR))


import _work  # noqa: E402
import loky  # noqa: E402
from loky.backend import resource_tracker as loky_resource_tracker  # noqa: E402

from shoal import AgentPool, ProcessBackend  # noqa: E402

T = TypeVar("T")

CPU_SECONDS = 0.010

# Goals, shoal against its peers.
GOAL_P50_VS_PPE = 0.5  # warm no-op p50 at most half of PPE's
GOAL_TPUT_VS_PPE = 2.0  # no-op throughput at least twice PPE's
GOAL_CPU_EFFICIENCY = 0.97  # CPU-bound efficiency
GOAL_COLD_OVER_WARM = 1000.0  # a warm call at least 1000x faster than a cold start


@dataclass(frozen=True)
class Plan:
    """How much of each measurement to do."""

    workers: int
    rounds: int
    warmup_calls: int
    latency_samples: int
    throughput_calls: int
    cpu_calls: int
    cold_starts: int
    warm_samples_per_cold: int


def make_plan(*, quick: bool, workers: int, rounds: int | None) -> Plan:
    if quick:
        plan = Plan(workers, 3, 200, 1000, 10_000, 100, 3, 300)
    else:
        plan = Plan(workers, 5, 300, 3000, 10_000, 300, 5, 1000)
    if rounds is not None:
        plan = replace(plan, rounds=rounds)
    return plan


# -- statistics -------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 1]) of unsorted samples."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure per round."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values), tuple(values))


# -- one round of one contender -----------------------------------------------------------------


@dataclass
class RoundResult:
    """What one contender measured in one round (times in seconds)."""

    ready_s: float  # create the pool or executor and warm it up (not part of any metric)
    latencies: list[float]
    noop_elapsed: float
    cpu_elapsed: float
    cpu_work: list[float]  # busy() time measured inside the workers, per call


@dataclass
class ContenderResults:
    name: str
    label: str
    rounds: list[RoundResult] = field(default_factory=list)


async def _shoal_round(plan: Plan, spin: float | None = None) -> RoundResult:
    noop, busy = _work.noop, _work.busy
    backend = ProcessBackend() if spin is None else ProcessBackend(spin=spin)
    t0 = time.perf_counter()
    async with AgentPool(
        "bench", min_size=plan.workers, max_size=plan.workers, backend=backend
    ) as pool:
        for _ in range(plan.warmup_calls):
            await pool.run(noop)
        await asyncio.gather(*(pool.run(noop) for _ in range(plan.warmup_calls)))
        await asyncio.gather(*(pool.run(busy, 0.001) for _ in range(2 * plan.workers)))
        ready_s = time.perf_counter() - t0

        gc.collect()
        latencies: list[float] = []
        for _ in range(plan.latency_samples):
            t = time.perf_counter()
            await pool.run(noop)
            latencies.append(time.perf_counter() - t)

        gc.collect()
        t = time.perf_counter()
        results = await asyncio.gather(*(pool.run(noop) for _ in range(plan.throughput_calls)))
        noop_elapsed = time.perf_counter() - t
        assert len(results) == plan.throughput_calls

        gc.collect()
        t = time.perf_counter()
        cpu_work = await asyncio.gather(
            *(pool.run(busy, CPU_SECONDS) for _ in range(plan.cpu_calls))
        )
        cpu_elapsed = time.perf_counter() - t

        m = pool.metrics
        assert m.requests_failed == 0, m
        assert m.agents_started == plan.workers, m  # nothing was restarted mid-round
    return RoundResult(ready_s, latencies, noop_elapsed, cpu_elapsed, list(cpu_work))


def shoal_round(plan: Plan) -> RoundResult:
    return asyncio.run(_shoal_round(plan))


def shoal_nospin_round(plan: Plan) -> RoundResult:
    """shoal with agents that sleep at once after each reply (what the spin buys, in one row)."""
    return asyncio.run(_shoal_round(plan, spin=0.0))


def _results(futures: Sequence[cf.Future[T]]) -> list[T]:
    """Wait for every future, in submission order, and return the results."""
    return [f.result() for f in futures]


def _executor_round(
    make: Callable[[], cf.Executor], shutdown: Callable[[cf.Executor], None], plan: Plan
) -> RoundResult:
    noop, busy = _work.noop, _work.busy
    t0 = time.perf_counter()
    executor = make()
    try:
        for _ in range(plan.warmup_calls):
            executor.submit(noop).result()
        _results([executor.submit(noop) for _ in range(plan.warmup_calls)])
        _results([executor.submit(busy, 0.001) for _ in range(2 * plan.workers)])
        ready_s = time.perf_counter() - t0

        gc.collect()
        latencies: list[float] = []
        for _ in range(plan.latency_samples):
            t = time.perf_counter()
            executor.submit(noop).result()
            latencies.append(time.perf_counter() - t)

        gc.collect()
        t = time.perf_counter()
        _results([executor.submit(noop) for _ in range(plan.throughput_calls)])
        noop_elapsed = time.perf_counter() - t

        gc.collect()
        t = time.perf_counter()
        cpu_work = _results([executor.submit(busy, CPU_SECONDS) for _ in range(plan.cpu_calls)])
        cpu_elapsed = time.perf_counter() - t
    finally:
        shutdown(executor)
    return RoundResult(ready_s, latencies, noop_elapsed, cpu_elapsed, cpu_work)


def ppe_round(plan: Plan) -> RoundResult:
    return _executor_round(
        lambda: cf.ProcessPoolExecutor(max_workers=plan.workers),
        lambda ex: ex.shutdown(wait=True, cancel_futures=True),
        plan,
    )


def _loky_executor(workers: int) -> cf.Executor:
    # A long idle timeout so loky never retires a worker in the middle of a round.
    executor: cf.Executor = loky.get_reusable_executor(max_workers=workers, timeout=600)
    return executor


def _loky_shutdown(executor: cf.Executor) -> None:
    executor.shutdown(wait=True, kill_workers=True)  # type: ignore[call-arg]


def loky_round(plan: Plan) -> RoundResult:
    return _executor_round(lambda: _loky_executor(plan.workers), _loky_shutdown, plan)


# -- cold starts --------------------------------------------------------------------------------


@dataclass
class ColdResult:
    start_s: float  # shoal: pool.start (entering the async with); PPE: constructing it
    cold_s: float  # ... plus the first call
    warm: list[float]  # the round trips that followed


async def _shoal_cold(plan: Plan) -> ColdResult:
    noop = _work.noop
    t0 = time.perf_counter()
    async with AgentPool("cold", min_size=1, max_size=1, setup=_work.import_numpy) as pool:
        t_started = time.perf_counter()
        await pool.run(noop)
        t_first = time.perf_counter()
        warm: list[float] = []
        for _ in range(plan.warm_samples_per_cold):
            t = time.perf_counter()
            await pool.run(noop)
            warm.append(time.perf_counter() - t)
        m = pool.metrics
        assert m.agents_started == 1 and m.requests_failed == 0, m
    return ColdResult(t_started - t0, t_first - t0, warm)


def shoal_cold(plan: Plan) -> ColdResult:
    return asyncio.run(_shoal_cold(plan))


def ppe_cold(plan: Plan) -> ColdResult:
    noop = _work.noop
    t0 = time.perf_counter()
    executor = cf.ProcessPoolExecutor(max_workers=1, initializer=_work.import_numpy)
    try:
        t_made = time.perf_counter()
        executor.submit(noop).result()
        t_first = time.perf_counter()
        warm: list[float] = []
        for _ in range(plan.warm_samples_per_cold):
            t = time.perf_counter()
            executor.submit(noop).result()
            warm.append(time.perf_counter() - t)
    finally:
        executor.shutdown(wait=True)
    return ColdResult(t_made - t0, t_first - t0, warm)


# -- machine facts and cleanup ------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_facts() -> dict[str, str]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": _cpu_model(),
        "nproc": f"{usable_cpus()} usable of {os.cpu_count()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
        "shoal": f"{_version('shoal')} (git {_git_revision()})",
        "loky": _version("loky"),
        "numpy": _version("numpy"),
        "PPE start method": multiprocessing.get_start_method(),
        "load average at start": _loadavg(),
    }


def child_processes() -> list[str]:
    """Live children of this process, as ``"pid command"``; zombies are reaped first."""
    multiprocessing.active_children()  # joins finished multiprocessing children
    me = os.getpid()
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        # The command in field 2 may hold spaces: the fields after it follow the last ")".
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == me:
            found.append(f"{entry.name} [{state}] {cmdline}")
    return found


def stop_resource_trackers() -> None:
    """Stop the resource-tracker processes that loky (its own and the standard library's) leaves
    running for the life of the interpreter.

    ``_stop`` is private, with the same meaning in both; should a release drop it, the trackers
    still exit when this interpreter does (their pipe from it closes).
    """
    for module in (loky_resource_tracker, mp_resource_tracker):
        stop = getattr(getattr(module, "_resource_tracker", None), "_stop", None)
        if stop is not None:
            stop()


class CpuMeter:
    """How much CPU the rest of the machine used while the benchmark ran (Linux only).

    Machine-wide busy time from ``/proc/stat`` minus this process's and its reaped children's
    (every worker is reaped by the time it is read), in CPUs on average over the wall time.
    """

    def __init__(self) -> None:
        self._start = self._sample()
        self._t0 = time.perf_counter()

    @staticmethod
    def _sample() -> tuple[float, float] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return busy / os.sysconf("SC_CLK_TCK"), own

    def others(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None:
            return None
        wall = time.perf_counter() - self._t0
        return max(0.0, (end[0] - self._start[0]) - (end[1] - self._start[1])) / wall


# -- the run ------------------------------------------------------------------------------------


CONTENDERS: list[tuple[str, str, Callable[[Plan], RoundResult]]] = [
    ("shoal", "shoal AgentPool", shoal_round),
    ("shoal_nospin", "shoal, spin=0", shoal_nospin_round),
    ("ppe", "ProcessPoolExecutor", ppe_round),
    ("loky", "loky reusable executor", loky_round),
]


def run_rounds(plan: Plan) -> dict[str, ContenderResults]:
    results = {name: ContenderResults(name, label) for name, label, _ in CONTENDERS}
    for r in range(plan.rounds):
        shift = r % len(CONTENDERS)
        order = CONTENDERS[shift:] + CONTENDERS[:shift]
        done: list[str] = []
        for name, _, run in order:
            rr = run(plan)
            results[name].rounds.append(rr)
            done.append(
                f"{name} {statistics.median(rr.latencies) * 1e6:.0f} µs, "
                f"{plan.throughput_calls / rr.noop_elapsed:,.0f}/s"
            )
        print(f"  round {r + 1}/{plan.rounds}: " + " | ".join(done), flush=True)
    return results


def run_cold(plan: Plan) -> tuple[list[ColdResult], list[ColdResult]]:
    # Unrecorded: bring numpy's files into the OS cache so every recorded start sees it warm.
    shoal_cold(replace(plan, warm_samples_per_cold=0))
    ppe_cold(replace(plan, warm_samples_per_cold=0))
    shoal_runs: list[ColdResult] = []
    ppe_runs: list[ColdResult] = []
    for i in range(plan.cold_starts):
        pair: list[tuple[list[ColdResult], Callable[[Plan], ColdResult]]] = [
            (shoal_runs, shoal_cold),
            (ppe_runs, ppe_cold),
        ]
        for runs, cold in pair if i % 2 == 0 else reversed(pair):
            runs.append(cold(plan))
    return shoal_runs, ppe_runs


# -- report -------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(headers), "  ".join("-" * w for w in widths), *(line(row) for row in rows)]
    return "\n".join("  " + text for text in lines)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(
    plan: Plan,
    results: dict[str, ContenderResults],
    cold: tuple[list[ColdResult], list[ColdResult]],
) -> dict[str, Any]:
    """Print the tables and return everything as plain data (for ``--json``)."""
    out: dict[str, Any] = {}
    names = [name for name, _, _ in CONTENDERS]
    labels = {name: label for name, label, _ in CONTENDERS}

    # a. latency
    lat: dict[str, dict[str, float]] = {}
    for name in names:
        samples = [s for rr in results[name].rounds for s in rr.latencies]
        lat[name] = {
            "p50_us": percentile(samples, 0.50) * 1e6,
            "p99_us": percentile(samples, 0.99) * 1e6,
            "mean_us": statistics.fmean(samples) * 1e6,
            "samples": len(samples),
        }
    n = int(lat["shoal"]["samples"])
    print(f"\n[a] No-op round trip, one call at a time (µs; {n:,} samples per contender)")
    rows = []
    for name in names:
        d = lat[name]
        ratio = "" if name == "shoal" else f"{lat['shoal']['p50_us'] / d['p50_us']:.2f}x"
        rows.append(
            [labels[name], f"{d['p50_us']:.1f}", f"{d['p99_us']:.1f}", f"{d['mean_us']:.1f}", ratio]
        )
    print(_table(["contender", "p50", "p99", "mean", "shoal p50 / peer p50"], rows))
    out["noop_latency"] = lat

    # b. no-op throughput
    tput = {
        name: Spread.of([plan.throughput_calls / rr.noop_elapsed for rr in results[name].rounds])
        for name in names
    }
    print(
        f"\n[b] No-op throughput, {plan.throughput_calls:,} calls in flight "
        f"(calls/s; median of {plan.rounds} rounds)"
    )
    rows = []
    for name in names:
        s = tput[name]
        ratio = "" if name == "shoal" else f"{tput['shoal'].median / s.median:.2f}x"
        rows.append([labels[name], f"{s.median:,.0f}", f"{s.low:,.0f} - {s.high:,.0f}", ratio])
    print(_table(["contender", "median", "range", "shoal / peer"], rows))
    out["noop_throughput"] = {name: asdict(s) for name, s in tput.items()}

    # c. CPU-bound throughput
    ideal = plan.workers / CPU_SECONDS
    cpu = {
        name: Spread.of([plan.cpu_calls / rr.cpu_elapsed for rr in results[name].rounds])
        for name in names
    }
    work = {
        name: statistics.fmean(w for rr in results[name].rounds for w in rr.cpu_work)
        for name in names
    }
    print(
        f"\n[c] CPU-bound throughput, {plan.cpu_calls} calls of {CPU_SECONDS * 1e3:.0f} ms "
        f"on {plan.workers} workers (ideal {ideal:,.0f} calls/s; median of {plan.rounds} rounds)"
    )
    rows = []
    for name in names:
        s = cpu[name]
        ratio = "" if name == "shoal" else f"{cpu['shoal'].median / s.median:.3f}x"
        rows.append(
            [
                labels[name],
                f"{s.median:.1f}",
                f"{s.median / ideal:.1%}",
                f"{s.low / ideal:.1%} - {s.high / ideal:.1%}",
                f"{work[name] * 1e3:.3f}",
                ratio,
            ]
        )
    print(
        _table(
            ["contender", "calls/s", "efficiency", "range", "ms of work/call", "shoal / peer"],
            rows,
        )
    )
    out["cpu_throughput"] = {
        name: {**asdict(cpu[name]), "efficiency": cpu[name].median / ideal, "work_s": work[name]}
        for name in names
    }

    # d. cold start vs warm call
    shoal_runs, ppe_runs = cold
    cold_rows: dict[str, dict[str, Any]] = {}
    for name, runs in (("shoal", shoal_runs), ("ppe", ppe_runs)):
        warm_p50 = percentile([s for c in runs for s in c.warm], 0.50)
        cold_med = statistics.median(c.cold_s for c in runs)
        cold_rows[name] = {
            "start_ms": [c.start_s * 1e3 for c in runs],
            "cold_ms": [c.cold_s * 1e3 for c in runs],
            "cold_median_ms": cold_med * 1e3,
            "start_median_ms": statistics.median(c.start_s for c in runs) * 1e3,
            "warm_p50_us": warm_p50 * 1e6,
            "cold_over_warm": cold_med / warm_p50,
        }
    print(
        f"\n[d] Cold start (setup imports numpy) vs warm no-op call "
        f"(median of {plan.cold_starts} cold starts; warm = p50 of the calls after each)"
    )
    rows = []
    for name, label, start_label in (
        ("shoal", "shoal AgentPool(min_size=1)", "pool.start"),
        ("ppe", "ProcessPoolExecutor(1) + initializer", "constructor"),
    ):
        cr = cold_rows[name]
        rows.append(
            [
                label,
                f"{cr['start_median_ms']:.1f} ({start_label})",
                f"{cr['cold_median_ms']:.1f}",
                f"{min(cr['cold_ms']):.1f} - {max(cr['cold_ms']):.1f}",
                f"{cr['warm_p50_us']:.1f}",
                f"{cr['cold_over_warm']:,.0f}x",
            ]
        )
    print(
        _table(
            ["contender", "start ms", "cold ms", "cold range", "warm p50 µs", "cold / warm"], rows
        )
    )
    out["cold_start"] = cold_rows

    # goals
    p50_ratio = lat["shoal"]["p50_us"] / lat["ppe"]["p50_us"]
    tput_ratio = tput["shoal"].median / tput["ppe"].median
    efficiency = cpu["shoal"].median / ideal
    cold_ratio = cold_rows["shoal"]["cold_over_warm"]
    goals = [
        ("warm no-op p50 <= 0.5x PPE's", f"{p50_ratio:.2f}x", p50_ratio <= GOAL_P50_VS_PPE),
        ("no-op throughput >= 2x PPE's", f"{tput_ratio:.2f}x", tput_ratio >= GOAL_TPUT_VS_PPE),
        (
            "CPU-bound efficiency >= 97%",
            f"{efficiency:.1%}",
            efficiency >= GOAL_CPU_EFFICIENCY,
        ),
        (
            "warm call >= 1000x faster than cold start",
            f"{cold_ratio:,.0f}x",
            cold_ratio >= GOAL_COLD_OVER_WARM,
        ),
    ]
    print("\nGoals (shoal)")
    print(_table(["goal", "measured", "verdict"], [[g, m, _verdict(ok)] for g, m, ok in goals]))
    out["goals"] = [{"goal": g, "measured": m, "pass": ok} for g, m, ok in goals]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (well under a minute)")
    parser.add_argument(
        "--workers",
        type=int,
        default=usable_cpus(),
        help="workers per contender (default: usable CPUs)",
    )
    parser.add_argument("--rounds", type=int, help="override the number of alternating rounds")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    if args.workers < 1 or (args.rounds is not None and args.rounds < 1):
        parser.error("--workers and --rounds must be at least 1")
    plan = make_plan(quick=args.quick, workers=args.workers, rounds=args.rounds)

    began = time.perf_counter()
    meter = CpuMeter()
    facts = machine_facts()
    print("shoal pool benchmark" + (" (--quick)" if args.quick else ""))
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"  {key.ljust(width)}  {value}")
    print(
        f"  {'plan'.ljust(width)}  {plan.workers} workers, {plan.rounds} rounds "
        f"(order rotated each round), {plan.warmup_calls} warm-up calls, "
        f"{plan.latency_samples} round trips/round, {plan.throughput_calls:,} no-op calls/round, "
        f"{plan.cpu_calls} CPU calls/round, {plan.cold_starts} cold starts"
    )
    print(
        f"  PPE uses the default start method ({multiprocessing.get_start_method()}); "
        "loky its own (fork+exec); shoal spawns fresh interpreters"
    )
    print(flush=True)

    try:
        print("Alternating rounds (p50 round trip, no-op throughput):", flush=True)
        results = run_rounds(plan)
        print("Cold starts ...", flush=True)
        cold = run_cold(plan)
    finally:
        stop_resource_trackers()
    data = report(plan, results, cold)

    leftovers = child_processes()
    elapsed = time.perf_counter() - began
    others = meter.others()
    background = "n/a" if others is None else f"{others:.2f} CPUs on average"
    print(
        f"\nOther processes' CPU use during the run: {background}; "
        f"load average at end {_loadavg()}; total time {elapsed:.1f} s"
    )
    if leftovers:
        print("child processes still alive:\n  " + "\n  ".join(leftovers))
    else:
        print("child processes left: none")

    if args.json is not None:
        data = {
            "machine": facts,
            "plan": asdict(plan),
            "results": data,
            "rounds": {
                name: [
                    {
                        "ready_s": rr.ready_s,
                        "noop_elapsed_s": rr.noop_elapsed,
                        "cpu_elapsed_s": rr.cpu_elapsed,
                        "latency_p50_us": statistics.median(rr.latencies) * 1e6,
                    }
                    for rr in res.rounds
                ]
                for name, res in results.items()
            },
            "background_cpus": others,
            "leftover_children": leftovers,
            "total_s": elapsed,
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
