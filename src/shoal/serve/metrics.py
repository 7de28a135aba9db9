"""shoal's Prometheus metrics, for ``shoal serve`` and for programs that embed a runtime.

Two sources, chosen by what each metric needs:

- **Gauges and counters are read from the pools at scrape time** (:class:`ShoalCollector`):
  agents by state, target, queue depth, calls by outcome, scaling events by kind, cost. A
  pool's counters only grow, so exporting them as they are is exact; scaling events are counted
  by watching ``pool.events`` for new entries (a bounded deque: more changes between two looks
  than it holds would be undercounted, which takes thousands of changes per scrape interval).
- **Histograms are observed by the serve layer as each run finishes** (:class:`ServeMetrics`),
  from the run's own step records: a histogram needs every observation, and a pool's
  ``PoolMetrics`` only summarises its recent calls (averages and two percentiles), so
  re-deriving buckets from it at each scrape would double-count or lose calls. The wait is the
  time from admission to the run's first step starting (for an auto-scaled workflow, the wait for
  an instance); the execution is each step's time on its pool. A parallel step's items are
  timed as the step, not one by one.

``register(rt, registry)`` adds the collector to your own ``prometheus_client`` registry;
``start_metrics_server(rt, port)`` serves it on its own port, without ``shoal serve``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shoal.errors import BackendError

try:
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client import Counter as PromCounter
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise BackendError(
        "shoal's HTTP service and metrics need the 'serve' extra: pip install 'shoal[serve]'"
    ) from exc

if TYPE_CHECKING:
    from shoal.pool import AgentPool
    from shoal.pool.events import ScalingEvent
    from shoal.runtime import RunHandle, Runtime

_STATES = ("starting", "idle", "busy", "stopping")
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class EventTally:
    """Counts each pool's scaling events by kind, finding new ones in the bounded ``events``."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {}
        self._last: dict[str, ScalingEvent] = {}

    def new_events(self, pool: AgentPool) -> list[ScalingEvent]:
        """The events ``pool`` recorded since the last call (counted as they are returned)."""
        for _ in range(3):
            try:
                events = list(pool.events)
                break
            except RuntimeError:  # mutated while copied from another thread: look again
                continue
        else:
            return []
        last = self._last.get(pool.name)
        start = 0
        if last is not None:
            # Events are compared by identity: the deque drops old ones, so indexes shift.
            for i in range(len(events) - 1, -1, -1):
                if events[i] is last:
                    start = i + 1
                    break
        fresh = events[start:]
        if fresh:
            self._last[pool.name] = fresh[-1]
            tally = self.counts.setdefault(pool.name, Counter())
            for e in fresh:
                tally[e.kind] += 1
        return fresh


class ShoalCollector(Collector):
    """Reads every pool of ``rt`` at scrape time (see the module docstring).

    ``tally`` is shared with a watcher that publishes the events (``shoal serve``); without one
    the collector finds new events itself. ``count_runs`` exports ``shoal_runs_total`` from the
    runtime's own run handles, for embedded use.
    """

    def __init__(
        self, rt: Runtime, tally: EventTally | None = None, *, count_runs: bool = True
    ) -> None:
        self.rt = rt
        self.tally = tally or EventTally()
        self._watched = tally is not None
        self._count_runs = count_runs
        self._calls: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Metric]:
        agents = GaugeMetricFamily(
            "shoal_pool_agents", "Agents in the pool, by state", labels=["pool", "state"]
        )
        target = GaugeMetricFamily("shoal_pool_target", "The pool's warm target", labels=["pool"])
        bounds = GaugeMetricFamily(
            "shoal_pool_max_size", "Most agents the pool may hold", labels=["pool"]
        )
        queue = GaugeMetricFamily(
            "shoal_pool_queue_depth", "Callers waiting for an agent", labels=["pool"]
        )
        util = GaugeMetricFamily(
            "shoal_pool_utilization_ratio", "Busy agents over live agents", labels=["pool"]
        )
        calls = CounterMetricFamily(
            "shoal_calls", "Calls finished by the pool, by outcome", labels=["pool", "outcome"]
        )
        starts = CounterMetricFamily(
            "shoal_agents_started", "Agents the pool started", labels=["pool"]
        )
        cold = CounterMetricFamily(
            "shoal_cold_starts", "Calls that waited for an agent to start", labels=["pool"]
        )
        events = CounterMetricFamily(
            "shoal_scaling_events", "Changes of size or target, by kind", labels=["pool", "kind"]
        )
        cost = GaugeMetricFamily(
            "shoal_pool_cost_dollars_per_hour",
            "What the pool's agents cost per hour (starting ones included), at their "
            "placements' prices (the documented default where none is set)",
            labels=["pool"],
        )
        spent = CounterMetricFamily(
            "shoal_pool_cost_dollars", "$ spent on the pool's agents so far", labels=["pool"]
        )
        preempted = CounterMetricFamily(
            "shoal_pool_preemptions", "Spot preemption notices the pool received", labels=["pool"]
        )
        requeued = CounterMetricFamily(
            "shoal_pool_requeued_calls",
            "Calls cancelled by a preemption and re-queued at the head",
            labels=["pool"],
        )
        for pool in list(self.rt.pools):
            m = pool.snapshot()
            name = pool.name
            for state in _STATES:
                agents.add_metric([name, state], getattr(m, state))
            target.add_metric([name], pool.target_size)
            bounds.add_metric([name], m.max_size)
            queue.add_metric([name], m.queue_depth)
            util.add_metric([name], m.utilization_rate)
            ok = m.requests_total - m.requests_active - m.queue_depth - m.requests_failed
            for outcome, value in (("ok", ok), ("failed", m.requests_failed)):
                # Never let a counter step back (a caller that gave up while queued, say).
                key = (name, outcome)
                self._calls[key] = max(self._calls.get(key, 0), value)
                calls.add_metric([name, outcome], self._calls[key])
            starts.add_metric([name], m.agents_started)
            cold.add_metric([name], m.cold_starts)
            if not self._watched:
                self.tally.new_events(pool)
            for kind, n in sorted(self.tally.counts.get(name, Counter()).items()):
                events.add_metric([name, kind], n)
            cost.add_metric([name], m.cost_per_hour)
            spent.add_metric([name], m.cost_usd)
            preempted.add_metric([name], m.preemptions)
            requeued.add_metric([name], m.requeued)
        yield from (agents, target, bounds, queue, util, calls, starts, cold, events, cost)
        yield from (spent, preempted, requeued)
        if self._count_runs:
            runs = CounterMetricFamily(
                "shoal_runs", "Runs finished, by status", labels=["workflow", "status"]
            )
            done = Counter((h.workflow, h.status) for h in self.rt.runs if h.done)
            for (workflow, status), n in sorted(done.items()):
                runs.add_metric([workflow, status], n)
            yield runs


class ServeMetrics:
    """The registry ``shoal serve`` exposes: the pool collector plus run-level observations."""

    def __init__(self, rt: Runtime, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.tally = EventTally()
        self.collector = ShoalCollector(rt, self.tally, count_runs=False)
        self.registry.register(self.collector)
        self.wait = Histogram(
            "shoal_pool_wait_seconds",
            "From a run's admission to its first step starting on the pool",
            ["pool"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.execution = Histogram(
            "shoal_pool_execution_seconds",
            "A step's time on its pool",
            ["pool"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "shoal_run_seconds",
            "A run's time from admission to its end",
            ["workflow"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.runs_total = PromCounter(
            "shoal_runs",
            "Runs by final status (rejected: refused by admission control)",
            ["workflow", "status"],
            registry=self.registry,
        )

    def observe_run(self, handle: RunHandle, submitted: float) -> None:
        self.runs_total.labels(handle.workflow, handle.status).inc()
        if handle.finished is not None:
            self.run_seconds.labels(handle.workflow).observe(max(0.0, handle.finished - submitted))
        first = next((s for s in handle.progress.steps if s.started is not None), None)
        if first is not None and first.started is not None:
            pool = first.pool or (handle.pools[0] if handle.pools else handle.workflow)
            self.wait.labels(pool).observe(max(0.0, first.started - submitted))
        for s in handle.progress.steps:
            if s.pool is not None and s.seconds is not None and s.finished is not None:
                self.execution.labels(s.pool).observe(s.seconds)


def register(rt: Runtime, registry: CollectorRegistry | None = None) -> ShoalCollector:
    """Export ``rt``'s pools (and runs) through ``registry`` (the default global registry)."""
    from prometheus_client import REGISTRY

    collector = ShoalCollector(rt)
    (registry or REGISTRY).register(collector)
    return collector


def start_metrics_server(rt: Runtime, port: int = 0, addr: str = "127.0.0.1") -> tuple[Any, int]:
    """Serve ``rt``'s metrics at ``http://addr:port/metrics`` on a thread; returns the server and
    its port (give ``port=0`` for a free one). ``server.shutdown()`` stops it."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    register(rt, registry)
    server, _thread = start_http_server(port, addr, registry)
    return server, int(server.server_port)
