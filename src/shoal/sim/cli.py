"""``shoal simulate``: replay a trace or a generated workload against several scaling policies.

Prints one row per policy (waits, agent-seconds, cold starts, scale events, reversals, peak
size, and SLA violations and cost when asked); ``--json`` prints a JSON list of the same
figures instead; ``--plot out.png`` draws load, pool size, queue depth and wait over time.

Registered in :mod:`shoal.cli` with :func:`add_parser` and :func:`run`; also runnable alone as
``python -m shoal.sim``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from shoal.clock import perf_counter
from shoal.errors import ConfigError, ShoalError
from shoal.scaling.predict import PREDICTORS
from shoal.sim.placements import PlacementOptions, load_regions, parse_outage, placement_options
from shoal.sim.run import POLICIES, SimResult, plan, simulate
from shoal.sim.workload import (
    DISTRIBUTIONS,
    GENERATORS,
    Workload,
    distribution,
    generate,
    load_trace,
)

EXIT_USAGE = 2
DEFAULT_POLICIES = ("auto", "hpa", "kpa", "rayserve", "keepalive", "fixed")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``simulate`` to the ``shoal`` command's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="replay a workload against scaling policies, in virtual time",
        description=(
            "Replay a trace or a generated workload on shoal's own pool and autoscaler in "
            "virtual time, once per policy, and compare waits, cost and churn."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--trace",
        metavar="FILE",
        help="a CSV of time_s,duration_s rows, or an Azure Functions invocations-per-minute file",
    )
    source.add_argument(
        "--workload", metavar="NAME", help=f"a generated workload: {', '.join(GENERATORS)}"
    )
    p.add_argument(
        "--duration", type=float, default=3600.0, metavar="S", help="generated: seconds (3600)"
    )
    p.add_argument(
        "--rate", type=float, default=10.0, metavar="R", help="generated: base requests/s (10)"
    )
    p.add_argument(
        "--service",
        type=float,
        default=1.0,
        metavar="S",
        help="mean run time of a request when the workload does not give it (1.0)",
    )
    p.add_argument(
        "--service-dist",
        default="exponential",
        choices=sorted(DISTRIBUTIONS),
        help="how run times vary around --service (exponential)",
    )
    p.add_argument(
        "--policy",
        action="append",
        metavar="NAME",
        help=(
            f"a policy to run, repeatable: {', '.join(POLICIES)}, fixed:N, keepalive:S, "
            "auto+PREDICTOR "
            f"(default: {' '.join(DEFAULT_POLICIES)})"
        ),
    )
    p.add_argument("--cold-start", type=float, default=2.0, metavar="S", help="agent start (2.0)")
    p.add_argument(
        "--cold-start-growth",
        type=float,
        default=0.0,
        metavar="F",
        help="each agent already starting makes a start this fraction slower (0; ~0.011 "
        "measured on process agents)",
    )
    p.add_argument("--min-size", type=int, default=1, metavar="N", help="fewest agents (1)")
    p.add_argument("--max-size", type=int, default=100, metavar="N", help="most agents (100)")
    p.add_argument(
        "--max-concurrency", type=int, default=1, metavar="N", help="calls per agent at once (1)"
    )
    p.add_argument("--sla", type=float, default=None, metavar="S", help="response-time bound")
    p.add_argument("--price", type=float, default=None, metavar="P", help="$ per agent-hour")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="for every random draw (0)")
    p.add_argument(
        "--interval", type=float, default=None, metavar="S", help="time-series sample period"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        metavar="S",
        help=(
            "start every policy at the opening load's size after a pre-roll of the workload's "
            "first S seconds drawn anew, not counted (0: min-size warm agents under the full load, "
            "empty histories)"
        ),
    )
    p.add_argument(
        "--predictor",
        choices=PREDICTORS,
        default=None,
        help=(
            "the predictor of shoal's own policies (default: ml-based for auto, none for the "
            "others; 'none' turns auto's off, as the policy name auto+none does)"
        ),
    )
    p.add_argument(
        "--on-demand",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "start an agent at once for a caller who would wait (--on-demand), or never "
            "(--no-on-demand), whatever the policy; default: as each policy's own system does "
            "(shoal's and keepalive: yes; the other baselines: no). --on-demand on a baseline "
            "predicts a shoal pool configured with that policy"
        ),
    )
    _placement_args(p)
    p.add_argument("--json", action="store_true", help="print a JSON list and nothing else")
    p.add_argument("--plot", metavar="OUT.png", help="draw load, size, queue and wait over time")
    return p


def _placement_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "spot, cost and regions",
        "Run the pool over simulated placements (any of these flags turns them on). The spot "
        "market, the preemptions and the regions' distances are simulated. The JSON then adds: "
        "cost_usd (each placement's agent-seconds, starting ones included, x its price / 3600), "
        "usd_per_1000_requests, spot_agent_seconds and on_demand_agent_seconds (live agents "
        "integrated over time), preemptions (notices sent, one per agent), requeued (calls the "
        "pool cancelled at a reclaim and ran again), lost (requests never answered), "
        "cost_cap_exceeded_s (seconds the spend rate of live agents was over --cost-cap); "
        "p99_response_s becomes wait + run time + the round trip from the request's region to "
        "the placement that answered, and waits run to the start of the run that answered.",
    )
    g.add_argument("--prefer-spot", action="store_true", help="put agents on spot first")
    g.add_argument(
        "--spot-price",
        type=float,
        default=None,
        metavar="P",
        help="$ per spot agent-hour (default: 0.3 x --price)",
    )
    g.add_argument(
        "--spot-fraction",
        type=float,
        default=0.8,
        metavar="F",
        help="with --prefer-spot, the share of agents above --min-size on spot (0.8)",
    )
    g.add_argument(
        "--preemptions-per-hour",
        type=float,
        default=0.0,
        metavar="R",
        help="preemption notices per spot agent-hour, drawn with --seed (0)",
    )
    g.add_argument(
        "--notice",
        type=float,
        default=None,
        metavar="S",
        help="seconds from a notice to the reclaim (120, as AWS; GCP gives 30)",
    )
    g.add_argument(
        "--cost-cap", type=float, default=None, metavar="D", help="the most $ per hour to spend"
    )
    g.add_argument(
        "--regions",
        metavar="FILE.json",
        help=(
            'a JSON list of placements, each {"region", "capacity": "on_demand"|"spot", '
            '"price_per_hour", "max_size", "rtt_ms", "notice_s", "load_share", "shift_h"}: '
            "load_share is the share of requests from that region (default: equal), shift_h "
            "shifts that share's arrivals by hours (wrapping at the end), rtt_ms is the round "
            "trip from callers in the same region (from another region: +70 ms unless "
            '"rtt_from": {"region": ms} says)'
        ),
    )
    g.add_argument(
        "--region-outage",
        action="append",
        default=[],
        metavar="NAME:START_S:END_S",
        help="region NAME fails its starts and loses its agents in that window (repeatable)",
    )


def _placements(args: argparse.Namespace) -> PlacementOptions | None:
    if not 0 <= args.spot_fraction <= 1:
        raise ConfigError(f"--spot-fraction {args.spot_fraction!r} must be within [0, 1]")
    return placement_options(
        price=args.price,
        spot_price=args.spot_price,
        prefer_spot=args.prefer_spot,
        preemptions_per_hour=args.preemptions_per_hour,
        notice=args.notice,
        cost_cap=args.cost_cap,
        regions=load_regions(args.regions) if args.regions else None,
        outages=[parse_outage(o) for o in args.region_outage],
        spot_fraction=args.spot_fraction,
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Carry out ``shoal simulate``; returns the exit status."""
    out = out or sys.stdout
    policies: list[str] = args.policy or list(DEFAULT_POLICIES)
    try:
        if args.plot:
            from shoal.sim.plot import require_matplotlib

            require_matplotlib()  # before minutes of simulating, not after
        placements = _placements(args)
        workload = _workload(args)
        for name in policies:
            plan(name, workload, min_size=max(0, args.min_size), max_size=max(1, args.max_size))
        results = []
        started = perf_counter()
        for name in policies:
            results.append(
                simulate(
                    workload,
                    name,
                    cold_start=args.cold_start,
                    min_size=args.min_size,
                    max_size=args.max_size,
                    sla=args.sla,
                    price=args.price,
                    interval=args.interval,
                    seed=args.seed,
                    max_concurrency=args.max_concurrency,
                    warmup=args.warmup,
                    predictor=args.predictor,
                    on_demand=args.on_demand,
                    cold_start_growth=args.cold_start_growth,
                    placements=placements,
                )
            )
        wall = perf_counter() - started
        if args.plot:
            from shoal.sim.plot import plot

            plot(results, args.plot, title=_title(workload, args))
    except (ShoalError, OSError) as exc:  # bad input, a trace error, a missing extra, a bad path
        print(f"shoal simulate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps([r.summary() for r in results]), file=out)
        return 0
    print(_title(workload, args), file=out)
    print(table(results), file=out)
    simulated = len(workload) * len(results)
    note = f"{simulated:,} requests simulated in {wall:.1f} s ({simulated / wall:,.0f}/s)"
    if args.plot:
        note += f"; plot: {args.plot}"
    print(note, file=out)
    return 0


def _workload(args: argparse.Namespace) -> Workload:
    service = distribution(args.service_dist, args.service)
    if args.trace:
        return load_trace(args.trace, service=service, seed=args.seed)
    if args.workload not in GENERATORS:
        raise ConfigError(f"unknown workload {args.workload!r}; known: {', '.join(GENERATORS)}")
    return generate(args.workload, args.rate, args.duration, service=service, seed=args.seed)


def _title(workload: Workload, args: argparse.Namespace) -> str:
    return (
        f"workload {workload.name}: {len(workload):,} requests over {workload.horizon:,.0f} s, "
        f"mean run time {workload.mean_duration:.3g} s | cold start {args.cold_start:g} s, "
        f"pool {args.min_size}..{args.max_size}, seed {args.seed}"
        + (f", warm-up {args.warmup:g} s" if args.warmup else "")
        + (f", predictor {args.predictor}" if args.predictor else "")
    )


def table(results: Sequence[SimResult]) -> str:
    """The results as an aligned text table, one row per policy."""
    sla = any(r.sla_violation_rate is not None for r in results)
    cost = any(r.cost_usd is not None for r in results)
    head = [
        "policy",
        "requests",
        "wait p50",
        "p95",
        "p99",
        "mean",
        "agent-s",
        "idle agent-s",
        "cold starts",
        "scale events",
        "reversals",
        "peak",
    ]
    if sla:
        head.append("SLA missed")
    if cost:
        head.append("cost $")
    mase = any(r.forecast_mase is not None for r in results)
    if mase:
        head.append("forecast MASE")
    placed = any(r.placed is not None for r in results)
    if placed:
        head += ["spot agent-s", "preempted", "requeued", "lost", "over cap s", "p99 resp"]
    rows = [head]
    for r in results:
        row = [
            r.policy,
            f"{r.requests:,}",
            _s(r.p50_wait_s),
            _s(r.p95_wait_s),
            _s(r.p99_wait_s),
            _s(r.mean_wait_s),
            f"{r.agent_seconds:,.0f}",
            f"{r.idle_agent_seconds:,.0f}",
            f"{r.cold_starts:,}",
            f"{r.scale_events:,}",
            f"{r.reversals:,}",
            f"{r.peak_size}",
        ]
        if sla:
            rate = r.sla_violation_rate
            row.append("-" if rate is None else f"{rate:.2%}")
        if cost:
            row.append("-" if r.cost_usd is None else f"{r.cost_usd:,.2f}")
        if mase:
            row.append("-" if r.forecast_mase is None else f"{r.forecast_mase:.2f}")
        if placed:
            x = r.placed or {}
            row += [
                f"{x.get('spot_agent_seconds', 0):,.0f}",
                f"{x.get('preemptions', 0):,}",
                f"{x.get('requeued', 0):,}",
                f"{x.get('lost', 0):,}",
                f"{x.get('cost_cap_exceeded_s', 0):,.0f}",
                _s(r.p99_response_s),
            ]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _s(seconds: float) -> str:
    """A wait, readable from microseconds to minutes."""
    if seconds == 0:
        return "0"
    if seconds < 0.01:
        return f"{seconds * 1000:.2f}ms"
    if seconds < 100:
        return f"{seconds:.2f}s"
    return f"{seconds:,.0f}s"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shoal.sim``: ``shoal simulate`` on its own."""
    parser = argparse.ArgumentParser(prog="shoal")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return run(parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)]))
