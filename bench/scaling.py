"""The scaling scenario suite: shoal's ``auto`` against the field's autoscalers, in simulation.

Run ``.venv/bin/python bench/scaling.py [--quick] [--plots DIR] [--million]``.

Every scenario is replayed with ``shoal.sim.simulate`` — the production pool and autoscaler on
virtual time — once per policy, all with the same cold start (2 s), bounds (1..200 agents) and
seed. Scenarios (base rate in requests/s, run times exponential with mean 1 s unless said):

* **steady** — Poisson at 20/s;
* **diurnal** — a day squeezed into the run: 4/s at the trough to 36/s at the peak;
* **bursty** — 5/s, with 30-s bursts at 40/s every 5 minutes;
* **flash** — 10/s, then at a third of the run a jump to 100/s decaying with a 2-minute
  time constant;
* **ramp** — 5/s rising linearly to 50/s at half time and back;
* **longtail** — Poisson at 10/s with lognormal run times (mean 1 s, sigma 1.5: p99 ~10 s).

Each scenario lasts an hour (20 minutes with ``--quick``). The table gives, per policy, the p99
and mean wait (arrival to agent), agent-seconds, cold starts (requests that waited for an agent
to start) and reversals (direction changes of the target).

The bar for ``auto`` against each baseline (issue 5): p99 wait and agent-seconds each within 5%
of the baseline's or better, or at least 20% better on one of the two with no more than 10% loss
on the other. Waits within 10 ms of each other count as equal (a 0.001 s p99 is not "infinitely
worse" than 0).

``--million`` also times one run of a million requests (steady, 100/s, ``auto``) and reports
the simulator's requests per second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shoal.clock import perf_counter, wall_time
from shoal.sim import SimResult, simulate, workloads
from shoal.sim.workload import Exponential, Workload

POLICIES = ("auto", "fixed", "hpa", "kpa", "rayserve", "keepalive")
COLD_START = 2.0
MIN_SIZE, MAX_SIZE = 1, 200
SEED = 1
WAIT_EPSILON_S = 0.010


@dataclass(frozen=True)
class Scenario:
    name: str
    make: Callable[[float], Workload]  # duration -> workload


SCENARIOS = (
    Scenario("steady", lambda d: workloads.steady(20, d, seed=SEED)),
    Scenario("diurnal", lambda d: workloads.diurnal(20, d, seed=SEED)),
    Scenario("bursty", lambda d: workloads.bursty(5, d, seed=SEED)),
    Scenario("flash", lambda d: workloads.flash(10, d, seed=SEED)),
    Scenario("ramp", lambda d: workloads.ramp(5, d, seed=SEED)),
    Scenario("longtail", lambda d: workloads.longtail(10, d, service=Exponential(1.0), seed=SEED)),
)


def within(auto: float, base: float, slack: float, epsilon: float = 0.0) -> bool:
    """``auto`` is no more than ``slack`` (a fraction) worse than ``base``."""
    return auto <= base * (1 + slack) + epsilon


def verdict(auto: SimResult, base: SimResult) -> tuple[bool, str]:
    """Whether ``auto`` meets the bar against ``base``, and the two changes in percent."""
    w_a, w_b = auto.p99_wait_s, base.p99_wait_s
    c_a, c_b = auto.agent_seconds, base.agent_seconds
    eps = WAIT_EPSILON_S
    both_close = within(w_a, w_b, 0.05, eps) and within(c_a, c_b, 0.05)
    wait_better = w_a <= w_b * 0.8 and w_b - w_a > eps and within(c_a, c_b, 0.10)
    cost_better = c_a <= c_b * 0.8 and within(w_a, w_b, 0.10, eps)
    ok = both_close or wait_better or cost_better
    dw = "=" if abs(w_a - w_b) <= eps else f"{(w_a - w_b) / w_b:+.0%}" if w_b else "+inf"
    dc = f"{(c_a - c_b) / c_b:+.0%}" if c_b else "+inf"
    return ok, f"p99 wait {dw}, agent-s {dc}"


def run_scenario(scenario: Scenario, duration: float, plots: Path | None) -> list[SimResult]:
    workload = scenario.make(duration)
    results = [
        simulate(
            workload,
            policy,
            cold_start=COLD_START,
            min_size=MIN_SIZE,
            max_size=MAX_SIZE,
            seed=SEED,
        )
        for policy in POLICIES
    ]
    if plots is not None:
        from shoal.sim.plot import plot

        plots.mkdir(parents=True, exist_ok=True)
        plot(results, plots / f"{scenario.name}.png", title=f"{scenario.name}: {workload!r}")
    return results


def million() -> tuple[int, float]:
    workload = workloads.steady(100, 10_000, seed=SEED)
    started = perf_counter()
    result = simulate(workload, "auto", cold_start=COLD_START, max_size=MAX_SIZE, seed=SEED)
    return result.requests, perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20-minute scenarios")
    parser.add_argument("--plots", type=Path, default=None, help="write a PNG per scenario here")
    parser.add_argument("--million", action="store_true", help="time a 1M-request run")
    parser.add_argument("--only", action="append", help="run only these scenarios")
    args = parser.parse_args(argv)
    duration = 1200.0 if args.quick else 3600.0

    when = dt.datetime.fromtimestamp(wall_time(), dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# Scaling scenarios ({'quick, ' if args.quick else ''}{duration / 60:.0f} min each)")
    print(
        f"\n- {when}; {platform.node() or 'host'}: {os.cpu_count()} CPU, "
        f"CPython {platform.python_version()}, {platform.system()} {platform.release()}"
    )
    given = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"- command: `.venv/bin/python bench/scaling.py{' ' + given if given else ''}`")
    print(
        f"- cold start {COLD_START:g} s, pool {MIN_SIZE}..{MAX_SIZE}, seed {SEED}; waits are "
        "arrival -> agent\n"
    )
    failures: list[str] = []
    passes = total = 0
    started = perf_counter()
    simulated = 0
    for scenario in SCENARIOS:
        if args.only and scenario.name not in args.only:
            continue
        results = run_scenario(scenario, duration, args.plots)
        simulated += sum(r.requests for r in results)
        auto = results[0]
        print(f"## {scenario.name} ({auto.requests:,} requests)\n")
        print(
            "| policy | p99 wait (s) | mean wait (s) | agent-s | idle agent-s | cold starts "
            "| reversals | peak | auto meets the bar? |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in results:
            if r is auto:
                mark = ""
            else:
                ok, delta = verdict(auto, r)
                total += 1
                passes += ok
                mark = f"{'yes' if ok else '**no**'} ({delta})"
                if not ok:
                    failures.append(f"{scenario.name} vs {r.policy}: {delta}")
            print(
                f"| {r.policy} | {r.p99_wait_s:.3f} | {r.mean_wait_s:.3f} | "
                f"{r.agent_seconds:,.0f} | {r.idle_agent_seconds:,.0f} | {r.cold_starts:,} | "
                f"{r.reversals} | {r.peak_size} | {mark} |"
            )
        print()
    wall = perf_counter() - started
    print(f"auto meets the bar in {passes} of {total} comparisons.")
    for f in failures:
        print(f"- not met: {f}")
    print(f"\n{simulated:,} requests simulated in {wall:.0f} s ({simulated / wall:,.0f}/s).")
    if args.million:
        n, secs = million()
        print(f"\nOne run of {n:,} requests (steady 100/s, auto): {secs:.1f} s, {n / secs:,.0f}/s.")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
