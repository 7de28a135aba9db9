"""One simulation with placements: the production pool spread over simulated placements.

Each placement gets its own :class:`~shoal.sim.backend.SimBackend`; a spot placement with a
preemption rate or trace gets a :class:`~shoal.spot.SimulatedPreemptions` as its
``preemption`` source, which the pool itself watches (as it would a provider's), and the
placement's backend kills the noticed agent at the deadline. The spot preference and the cost
cap are the scaling policy's keys (``prefer_spot``, ``spot_fraction``, ``on_demand_base``,
``cost_threshold``), which the autoscaler hands to the pool. Requests go through
:meth:`~shoal.pool.AgentPool.call`, so a call cut short by a preemption is re-queued by the
pool, not by the simulator.

Figures added to the result (:data:`PLACED_KEYS`), all over the counted run:

- ``cost_usd``: Σ over placements of its agent-seconds (starting agents included) x its
  price ÷ 3600; ``usd_per_1000_requests``: that per thousand requests;
- ``spot_agent_seconds`` / ``on_demand_agent_seconds``: live agents integrated over time on
  spot / on-demand placements;
- ``preemptions``: notices sent (one per agent); ``requeued``: calls the pool cancelled at a
  deadline (or at the notice, when it could not finish by then) or lost with its region, and
  queued again; ``lost``: requests never answered (their call raised);
- ``cost_cap_exceeded_s``: seconds during which the spend rate of the agents alive (starting
  included) was over ``--cost-cap``;
- ``p99_response_s`` / ``mean_response_s`` become wait + run time + the round trip from the
  request's region to the placement that answered it; ``p99_wait_s`` etc. are the time from
  arrival to the start of the run that answered (re-queues and lost partial runs included).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from typing import Any

from shoal.errors import ShoalError
from shoal.pool.pool import AgentPool
from shoal.sim.backend import SimBackend, serve
from shoal.sim.placements import CostMeter, PlacementOptions, on_live
from shoal.sim.run import SimResult, _count_at_most, _nearest_rank, _Run
from shoal.sim.workload import Distribution
from shoal.spot.simulated import SimulatedPreemptions

#: The keys a simulation with placements adds to :meth:`SimResult.summary`.
PLACED_KEYS: tuple[str, ...] = (
    "cost_usd",
    "usd_per_1000_requests",
    "spot_agent_seconds",
    "on_demand_agent_seconds",
    "preemptions",
    "requeued",
    "lost",
    "cost_cap_exceeded_s",
)


class Fleet:
    """The placements' backends read as one, for the plain simulator's books."""

    def __init__(self, backends: list[SimBackend], meter: CostMeter) -> None:
        self.backends = backends
        self.meter = meter

    def agent_seconds(self, now: float) -> float:
        return math.fsum(b.agent_seconds(now) for b in self.backends)

    def starting_seconds(self, now: float) -> float:
        return math.fsum(b.starting_seconds(now) for b in self.backends)

    @property
    def starts(self) -> int:
        return sum(b.starts for b in self.backends)

    @property
    def busy_seconds(self) -> float:
        return math.fsum(b.busy_seconds for b in self.backends)

    @property
    def peak_live(self) -> int:
        return self.meter.peak


class PlacedRun(_Run):
    """:class:`~shoal.sim.run._Run` on a pool with placements; ``origins[i]`` is the index in
    ``options.regions`` of request ``i``'s region."""

    def __init__(
        self,
        *args: Any,
        options: PlacementOptions,
        origins: tuple[int, ...],
        **kwargs: Any,
    ) -> None:
        self.options = options
        self.origins = origins
        self.served_by: list[int] = [-1] * len(origins)
        self.meter = CostMeter(options.cost_cap)
        self.sources: list[SimulatedPreemptions | None] = []
        self.backends: list[SimBackend] = []
        super().__init__(*args, **kwargs)
        self._at_t0: dict[str, Any] = {}

    def _build(
        self,
        cold_start: float | Distribution,
        idle_timeout: float,
        price: float | None,
        max_concurrency: int,
    ) -> tuple[Any, AgentPool]:
        opts = self.options
        placements = []
        for k, entry in enumerate(opts.entries):
            p = entry.placement
            cost = p.price_per_hour if p.price_per_hour is not None else 0.0
            backend = SimBackend(
                cold_start,
                seed=self.seed * 101 + k,
                tracks_calls=True,
                on_live=on_live(self.meter, cost),
                on_served=lambda i, k=k: self._served(i, k),  # type: ignore[misc]
                growth=self.cold_start_growth,
            )
            source = None
            if p.spot and (opts.preemptions_per_hour > 0 or opts.preemption_trace):
                source = SimulatedPreemptions(
                    backend.ready_ids,
                    rate_per_hour=opts.preemptions_per_hour,
                    trace=opts.preemption_trace,
                    seed=self.seed * 1_009 + k,
                    reclaim=lambda n, b=backend: b.kill_at(n.agent_ids, n.deadline),  # type: ignore[misc]
                )
            self.backends.append(backend)
            self.sources.append(source)
            placements.append(p.model_copy(update={"backend": backend, "preemption": source}))
        pool = self._pool(self.backends[0], idle_timeout, price, max_concurrency, placements)
        return Fleet(self.backends, self.meter), pool

    def _served(self, request: int, placement: int) -> None:
        self.served_by[request] = placement

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        t0 = self.t0
        self.meter.reset(t0)
        snap = self.pool.snapshot()
        self._at_t0 = {
            "seconds": [b.agent_seconds(t0) for b in self.backends],
            "sent": [s.sent if s else 0 for s in self.sources],
            "requeued": snap.requeued,
        }
        regions = self.options.regions
        for outage in self.options.outages:
            for entry, backend in zip(self.options.entries, self.backends, strict=True):
                if entry.placement.region == outage.region:
                    backend.outage(t0 + outage.start, t0 + outage.end)
        del regions

    async def _request(self, i: int) -> None:
        arrival = self.t0 + self.arrivals[i]
        duration = self.durations[i]
        try:
            await self.pool.call(serve, (duration, i))
        except ShoalError:
            self.failed += 1
        else:
            wait = self._time() - duration - arrival
            self.waits[i] = wait if wait > 0 else 0.0
        self.completed += 1
        if self.completed == self.n and self._done is not None:
            self._done.set_result(None)

    def _sample(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.finished:
            return
        snap = self.pool.snapshot()
        self.samples.append((loop.time(), snap.size, snap.target_size, snap.busy, snap.queue_depth))
        loop.call_at(self.t0 + len(self.samples) * self.interval, self._sample, loop)

    def result(self, sla: float | None, price: float | None, wall: float) -> SimResult:
        base = super().result(sla, price, wall)
        opts, end = self.options, self.end
        regions = opts.regions
        responses = []
        for i, (w, d) in enumerate(zip(self.waits, self.durations, strict=True)):
            k = self.served_by[i]
            rtt = opts.rtt_s(regions[self.origins[i]], opts.entries[k]) if k >= 0 else 0.0
            responses.append(w + d + rtt)
        answered = sorted(r for r, k in zip(responses, self.served_by, strict=True) if k >= 0)
        seconds = [
            b.agent_seconds(end) - s0
            for b, s0 in zip(self.backends, self._at_t0["seconds"], strict=True)
        ]
        spot = math.fsum(s for s, e in zip(seconds, opts.entries, strict=True) if e.placement.spot)
        on_demand = math.fsum(seconds) - spot
        cost = math.fsum(
            s * (e.placement.price_per_hour or 0.0) / 3600
            for s, e in zip(seconds, opts.entries, strict=True)
        )
        sent = sum(
            (s.sent if s else 0) - s0
            for s, s0 in zip(self.sources, self._at_t0["sent"], strict=True)
        )
        n = self.n
        violations = base.sla_violation_rate
        if sla is not None:
            violations = (n - _count_at_most(answered, sla)) / n if n else 0.0
        placed = {
            "cost_usd": cost,
            "usd_per_1000_requests": cost / n * 1000 if n else 0.0,
            "spot_agent_seconds": spot,
            "on_demand_agent_seconds": on_demand,
            "preemptions": sent,
            "requeued": self.pool.snapshot().requeued - self._at_t0["requeued"],
            "lost": self.failed,
            "cost_cap_exceeded_s": self.meter.over_until(end),
        }
        return replace(
            base,
            cost_usd=cost,
            p99_response_s=_nearest_rank(answered, 0.99),
            mean_response_s=math.fsum(answered) / len(answered) if answered else 0.0,
            sla_violation_rate=violations,
            placed=placed,
        )
