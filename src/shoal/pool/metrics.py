"""What a pool has been doing: counters on the hot path, frozen snapshots for everyone else."""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_SAMPLES = 2048
_RATE_BUCKET_S = 1.0
_RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class PoolMetrics:
    """A frozen snapshot of one pool (the seed's ``PoolMetrics`` and more).

    Times are float seconds; averages and percentiles cover the most recent calls (up to 2,048);
    rates cover the last minute.
    """

    name: str
    size: int  # starting + idle + busy
    starting: int
    idle: int
    busy: int
    stopping: int
    min_size: int
    max_size: int
    target_size: int
    requests_total: int
    requests_active: int
    requests_failed: int
    queue_depth: int
    oldest_wait: float  # how long the caller at the head of the queue has waited
    avg_wait_time: float
    avg_execution_time: float
    wait_p50: float
    wait_p99: float
    utilization_rate: float
    throughput: float  # completed calls per second
    arrival_rate: float  # calls asked for per second
    warm_hits: int
    cold_starts: int
    agents_started: int
    agents_retired: int
    start_failures: int
    time: float
    checking: int = 0  # idle agents set aside for a health check (not assignable meanwhile)
    in_flight: int = 0  # calls held by callers: busy agents x the calls each runs
    max_concurrency: int = 1  # calls one agent runs at once; utilization counts these slots
    # Started agents (idle, busy, checking) per node, for a backend that places agents on
    # nodes (Ray); empty otherwise.
    nodes: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0  # $ spent on agents so far (agent-hours x their placement's price)
    cost_per_hour: float = 0.0  # the spend rate now: every agent, starting ones included
    cost_cap_size: int | None = None  # the most serving agents the cost ceiling buys (None: no cap)
    preemptions: int = 0  # preemption notices received
    requeued: int = 0  # calls cancelled by a preemption and queued again at the head


_new = object.__new__
_set = object.__setattr__


def frozen_metrics(fields: dict[str, Any]) -> PoolMetrics:
    """A :class:`PoolMetrics` from every one of its fields, by name, at the cost of one dict.

    The pool takes a snapshot every autoscaler tick (a simulation: every simulated second,
    for days); the dataclass's own ``__init__`` sets each field with a call of its own."""
    metrics: PoolMetrics = _new(PoolMetrics)
    _set(metrics, "__dict__", fields)
    return metrics


class RateCounter:
    """Events per second over a sliding window, in one-second buckets.

    The window's total is kept as buckets come and go, so :meth:`rate` costs O(1) amortised.
    """

    __slots__ = ("_buckets", "_current", "_current_start", "_first", "_total")

    def __init__(self) -> None:
        self._buckets: deque[tuple[float, int]] = deque()
        self._current_start = -math.inf
        self._current = 0
        self._total = 0  # the events in _buckets
        self._first: float | None = None

    def add(self, now: float, n: int = 1) -> None:
        if now - self._current_start >= _RATE_BUCKET_S:
            if self._current:
                self._buckets.append((self._current_start, self._current))
                self._total += self._current
            self._current_start = now
            self._current = 0
            if self._first is None:
                self._first = now
        self._current += n

    def rate(self, now: float) -> float:
        horizon = now - _RATE_WINDOW_S
        buckets = self._buckets
        while buckets and buckets[0][0] < horizon:
            self._total -= buckets.popleft()[1]
        if self._first is None:
            return 0.0
        total = self._total
        if self._current_start >= horizon:
            total += self._current
        span = min(_RATE_WINDOW_S, now - self._first)
        return total / span if span > 0 else 0.0


class Window:
    """The most recent ``size`` samples, with their mean and quantiles at O(1) amortised cost.

    :meth:`append` is what the hot path pays: a deque append and a count. Readers bring a
    sorted copy and a running sum up to date with only the samples added since the last read
    (a binary-search insert and removal each, a full rebuild when most of the window changed,
    and a rebuild of the sum every ``size`` samples so rounding never accumulates). A pool
    read once a second therefore costs what its calls since the last read cost, not a sort
    of the whole window: long, quiet traces no longer pay per tick.
    """

    __slots__ = (
        "_added",
        "_plain_zeros",
        "_recent",
        "_shadow",
        "_size",
        "_sorted",
        "_sum",
        "_sum_age",
        "_synced",
    )

    def __init__(self, size: int = _SAMPLES) -> None:
        self._size = size
        self._recent: deque[float] = deque(maxlen=size)
        self._added = 0  # samples ever appended
        self._synced = 0  # ... of which _sorted, _shadow and _sum account for
        self._shadow: deque[float] = deque()  # the window as of the last sync, oldest first
        self._sorted: list[float] = []
        self._sum = 0.0
        self._sum_age = 0  # samples folded into _sum since it was last summed afresh
        self._plain_zeros = True  # no -0.0 has come into the sorted list

    def append(self, value: float) -> None:
        self._recent.append(value)
        self._added += 1

    def __len__(self) -> int:
        return len(self._recent)

    def __iter__(self) -> Iterator[float]:
        return iter(self._recent)

    def _sync(self) -> None:
        new = self._added - self._synced
        if not new:
            return
        self._synced = self._added
        recent, size = self._recent, self._size
        if new * 4 >= size or self._sum_age + new >= size:
            self._shadow = deque(recent)
            self._sorted = ordered = sorted(recent)
            if self._plain_zeros:
                zeros = ordered[
                    bisect.bisect_left(ordered, 0.0) : bisect.bisect_right(ordered, 0.0)
                ]
                self._plain_zeros = not any(map(_negative_zero, zeros))
            self._sum = math.fsum(recent)
            self._sum_age = 0
            return
        shadow, ordered = self._shadow, self._sorted
        copysign = math.copysign
        added = 0.0
        for i in range(len(recent) - new, len(recent)):
            value = recent[i]
            if not value and self._plain_zeros and copysign(1.0, value) < 0.0:  # a -0.0
                self._plain_zeros = False
            if len(shadow) >= size:
                old = shadow.popleft()
                added -= old
                if old == value and (old or self._plain_zeros):
                    # The sample it replaces has the same value (most waits are 0.0): taking
                    # the first of its equals out and putting it after the last leaves the
                    # sorted list as it was, so skip the two moves of its tail. (Not once a
                    # -0.0 came in: then a run of zeros may hold two different floats.)
                    shadow.append(value)
                    added += value
                    continue
                del ordered[bisect.bisect_left(ordered, old)]
            shadow.append(value)
            bisect.insort(ordered, value)
            added += value
        self._sum += added
        self._sum_age += new

    def mean(self) -> float:
        self._sync()
        n = len(self._sorted)
        return self._sum / n if n else 0.0

    def share_at_most(self, x: float) -> float:
        """The share of the samples at most ``x`` (the empirical CDF); 0.0 when there are none."""
        self._sync()
        ordered = self._sorted
        return bisect.bisect_right(ordered, x) / len(ordered) if ordered else 0.0

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0..1) by the nearest-rank method; 0.0 when there are none."""
        self._sync()
        ordered = self._sorted
        if not ordered:
            return 0.0
        rank = max(1, math.ceil(q * len(ordered)))
        return ordered[rank - 1]


def _negative_zero(x: float) -> bool:
    return x == 0.0 and math.copysign(1.0, x) < 0.0


class MetricsRecorder:
    """Counters a pool bumps as calls come and go; cheap enough for every call."""

    __slots__ = (
        "agents_retired",
        "agents_started",
        "arrivals",
        "cold_starts",
        "completions",
        "exec_times",
        "requests_active",
        "requests_failed",
        "requests_total",
        "requeued",
        "start_failures",
        "wait_times",
        "warm_hits",
    )

    def __init__(self) -> None:
        self.requests_total = 0
        self.requests_active = 0
        self.requests_failed = 0
        self.warm_hits = 0
        self.cold_starts = 0
        self.agents_started = 0
        self.agents_retired = 0
        self.start_failures = 0
        self.requeued = 0  # calls re-queued at the head after a preemption
        self.wait_times = Window()
        self.exec_times = Window()
        self.arrivals = RateCounter()
        self.completions = RateCounter()


def mean(values: Window) -> float:
    return values.mean()


def percentile(values: Window, q: float) -> float:
    """The ``q``-quantile (0..1) by the nearest-rank method; 0.0 when there are no samples."""
    return values.quantile(q)
