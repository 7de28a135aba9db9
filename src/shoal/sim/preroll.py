"""The warm-up pre-roll: a fair history of the workload before the counted run.

A pre-roll that replayed the workload's own first seconds would show a forecaster a false
period (the copy) and the same noise twice. :func:`preroll` draws the pre-roll anew from the
workload's shape instead: a generated workload redraws itself from another random stream of
its seed (:attr:`~shoal.sim.workload.Workload.redraw`); a trace, which has no shape but its
arrivals, is redrawn as a Poisson process at the rate of each of its minutes, with run times
drawn from its own. Pure and seeded: the same workload, warm-up and seed give the same pre-roll.
"""

from __future__ import annotations

import bisect
import random

from shoal.sim.workload import Workload, poisson

#: A trace's rate shape is read per bucket of this many seconds.
TRACE_BUCKET_S = 60.0


class _Empirical:
    """Run times drawn (with replacement) from a workload's own."""

    def __init__(self, durations: tuple[float, ...]) -> None:
        self._durations = durations
        self.mean = sum(durations) / len(durations)

    def sample(self, rng: random.Random) -> float:
        return rng.choice(self._durations)


def _trace_shape(workload: Workload, span: float, seed: int) -> Workload:
    """A trace's first ``span`` seconds redrawn: Poisson arrivals at each bucket's rate."""
    arrivals = workload.arrivals
    buckets = max(1, int(-(-span // TRACE_BUCKET_S)))
    edges = [k * TRACE_BUCKET_S for k in range(buckets + 1)]
    counts = [
        bisect.bisect_left(arrivals, edges[k + 1]) - bisect.bisect_left(arrivals, edges[k])
        for k in range(buckets)
    ]
    rates = [c / TRACE_BUCKET_S for c in counts]
    peak = max(rates)
    if not peak > 0:
        return Workload(workload.name, (), (), span)

    def rate(t: float) -> float:
        return rates[min(int(t // TRACE_BUCKET_S), buckets - 1)]

    return poisson(workload.name, rate, peak, span, _Empirical(workload.durations), seed)


def preroll(workload: Workload, warmup: float, seed: int) -> list[tuple[float, float]]:
    """``(arrival, duration)`` pairs for a pre-roll of ``warmup`` seconds: the workload's first
    ``warmup`` seconds drawn anew (its whole horizon, drawn anew each time, repeated if it is
    shorter). ``seed`` picks the trace's stream; a generated workload uses its own seed's."""
    if not workload.arrivals or not warmup > 0:
        return []
    span = min(workload.horizon or 1.0, warmup)
    out: list[tuple[float, float]] = []
    offset, stream = 0.0, 1
    while offset < warmup:
        if workload.redraw is not None:
            drawn = workload.redraw(span, stream)
        else:
            drawn = _trace_shape(workload, span, seed * 1_000_003 + 2 + stream)
        for a, d in drawn:
            if offset + a >= warmup:
                break
            out.append((offset + a, d))
        offset += span
        stream += 1
    return out
