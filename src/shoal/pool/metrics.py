"""What a pool has been doing: counters on the hot path, frozen snapshots for everyone else."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

_SAMPLES = 2048
_RATE_BUCKET_S = 1.0
_RATE_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
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


class RateCounter:
    """Events per second over a sliding window, in one-second buckets."""

    __slots__ = ("_buckets", "_current", "_current_start", "_first")

    def __init__(self) -> None:
        self._buckets: deque[tuple[float, int]] = deque()
        self._current_start = -math.inf
        self._current = 0
        self._first: float | None = None

    def add(self, now: float, n: int = 1) -> None:
        if now - self._current_start >= _RATE_BUCKET_S:
            if self._current:
                self._buckets.append((self._current_start, self._current))
            self._current_start = now
            self._current = 0
            if self._first is None:
                self._first = now
        self._current += n

    def rate(self, now: float) -> float:
        horizon = now - _RATE_WINDOW_S
        while self._buckets and self._buckets[0][0] < horizon:
            self._buckets.popleft()
        if self._first is None:
            return 0.0
        total = sum(n for _, n in self._buckets)
        if self._current_start >= horizon:
            total += self._current
        span = min(_RATE_WINDOW_S, now - self._first)
        return total / span if span > 0 else 0.0


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
        self.wait_times: deque[float] = deque(maxlen=_SAMPLES)
        self.exec_times: deque[float] = deque(maxlen=_SAMPLES)
        self.arrivals = RateCounter()
        self.completions = RateCounter()


def mean(values: deque[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def percentile(values: deque[float], q: float) -> float:
    """The ``q``-quantile (0..1) by the nearest-rank method; 0.0 when there are no samples."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]
