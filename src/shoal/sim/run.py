"""One simulation: a workload replayed on the production pool and autoscaler, in virtual time.

:func:`simulate` builds a real :class:`~shoal.pool.AgentPool` on a
:class:`~shoal.sim.backend.SimBackend`, puts a real :class:`~shoal.scaling.AutoScaler` on it
with the policy asked for, and replays the workload on a fresh
:class:`~shoal.clock.VirtualTimeLoop`: each request is a ``pool.call`` of
:func:`~shoal.sim.backend.serve` for its duration, as a user's ``pool.run`` is. Nothing of the pool
or the autoscaler is copied or stubbed; only the agents are simulated.

shoal's own policies run as a shoal pool does in production, starting an agent at once for a
caller who would otherwise wait (``on_demand``); a baseline runs as its own system does, with
capacity that changes only when its policy says so (FaaS keep-alive starts an instance for
every request no warm one can take, as FaaS platforms do: ``on_demand="eager"``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from shoal.clock import VirtualTimeLoop, perf_counter
from shoal.errors import ConfigError, ShoalError
from shoal.pool.metrics import PoolMetrics
from shoal.pool.pool import AgentPool
from shoal.scaling.autoscaler import AutoScaler
from shoal.scaling.baselines import KeepAlivePolicy
from shoal.scaling.config import PRESETS, parse_scaling_policy
from shoal.scaling.policy import Decision, Policy
from shoal.scaling.registry import BASELINES
from shoal.scaling.registry import POLICIES as REGISTRY
from shoal.sim.backend import SimBackend, serve
from shoal.sim.preroll import preroll
from shoal.sim.workload import Distribution, Workload

if TYPE_CHECKING:
    from shoal.sim.placements import PlacementOptions

#: shoal's own policies: the modes, and the policies a ``scaling_policy`` may name.
SHOAL_POLICIES: tuple[str, ...] = (
    *(m for m in PRESETS if m != "fixed"),
    *(p for p in REGISTRY if p not in BASELINES),
)
#: Every name :func:`simulate` accepts (``fixed`` also as ``fixed:N``, ``keepalive`` as
#: ``keepalive:S``, and shoal's own as ``NAME+PREDICTOR``, e.g. ``auto+ml-based``).
POLICIES: tuple[str, ...] = (*SHOAL_POLICIES, *BASELINES)

_NICE_INTERVALS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


@dataclass(frozen=True)
class Series:
    """A run sampled every ``interval`` seconds, for plotting.

    Entry ``k`` covers ``[time[k], time[k] + interval)``: ``load`` is the arrivals per second
    in it and ``mean_wait`` the mean wait of those arrivals (0 when none); ``size`` (live
    agents, starting ones included), ``target``, ``busy`` and ``queue`` are read at ``time[k]``.
    """

    interval: float
    time: tuple[float, ...]
    load: tuple[float, ...]
    size: tuple[int, ...]
    target: tuple[int, ...]
    busy: tuple[int, ...]
    queue: tuple[int, ...]
    mean_wait: tuple[float, ...]


#: The keys of :meth:`SimResult.summary`, in order (``cost_usd`` is added with a price).
SUMMARY_KEYS: tuple[str, ...] = (
    "policy",
    "requests",
    "p50_wait_s",
    "p95_wait_s",
    "p99_wait_s",
    "mean_wait_s",
    "agent_seconds",
    "idle_agent_seconds",
    "cold_starts",
    "scale_events",
    "reversals",
    "peak_size",
    "sla_violation_rate",
)


@dataclass(frozen=True)
class SimResult:
    """What one policy did with one workload.

    Waits run from a request's arrival to the moment it has an agent; responses to the end of
    its call. ``agent_seconds`` integrates the live agents (starting ones included) over the
    run, ``idle_agent_seconds`` is the part of it warm and not serving, ``starting_agent_seconds``
    the part spent starting. ``cold_starts`` counts requests that waited for an agent to start
    (the pool's counter); ``agents_started`` counts agent starts. ``scale_events`` counts
    changes of the pool's target, ``reversals`` the changes of their direction. The run lasts
    from the first instant of the workload until both its horizon has passed and every request
    has been answered (``duration_s``). With a ``warmup``, everything counts from its end; then
    ``peak_size`` is the largest size sampled after it. ``forecast_mase`` is the predictor's
    (see :mod:`shoal.scaling.predict`), None without one.
    """

    policy: str
    workload: str
    requests: int
    p50_wait_s: float
    p95_wait_s: float
    p99_wait_s: float
    mean_wait_s: float
    max_wait_s: float
    mean_response_s: float
    p99_response_s: float
    sla_s: float | None
    sla_violation_rate: float | None
    agent_seconds: float
    idle_agent_seconds: float
    busy_agent_seconds: float
    starting_agent_seconds: float
    cold_starts: int
    agents_started: int
    scale_events: int
    reversals: int
    peak_size: int
    price_per_hour: float | None
    cost_usd: float | None
    duration_s: float
    failed: int
    series: Series = field(repr=False)
    wall_s: float = field(default=0.0, compare=False)  # real seconds the run took
    forecast_mase: float | None = None  # the predictor's MASE over the run (None without one)
    warmup_s: float = 0.0
    placed: Mapping[str, Any] | None = None  # with placements: see shoal.sim.placed.PLACED_KEYS

    def summary(self) -> dict[str, Any]:
        """The figures as a JSON-ready dict: :data:`SUMMARY_KEYS`, then response times, starts
        and, with a price, ``cost_usd``."""
        out: dict[str, Any] = {key: getattr(self, key) for key in SUMMARY_KEYS}
        out.update(
            mean_response_s=self.mean_response_s,
            p99_response_s=self.p99_response_s,
            agents_started=self.agents_started,
            starting_agent_seconds=self.starting_agent_seconds,
            duration_s=self.duration_s,
            forecast_mase=self.forecast_mase,
        )
        if self.sla_s is not None:
            out["sla_s"] = self.sla_s
        if self.cost_usd is not None:
            out["cost_usd"] = self.cost_usd
        if self.placed is not None:
            out.update(self.placed)
        return out


@dataclass(frozen=True)
class _Plan:
    label: str
    scaling_policy: dict[str, Any]
    on_demand: bool | Literal["eager"]
    pool_min: int
    pool_max: int


def plan(
    policy: str | Mapping[str, Any],
    workload: Workload,
    *,
    min_size: int,
    max_size: int,
    on_demand: bool | None = None,
) -> _Plan:
    """Turn a policy name (or a ``scaling_policy`` dict) into the pool and autoscaler to run."""
    if isinstance(policy, Mapping):
        given = dict(policy)
        label = str(given.get("policy") or given.get("mode") or "auto")
    else:
        policy, _, predictor = policy.partition("+")
        name, _, arg = policy.partition(":")
        if (
            name not in POLICIES
            or (arg and name not in ("fixed", "keepalive"))
            or (predictor and name not in SHOAL_POLICIES)
        ):
            raise ConfigError(
                f"unknown policy {policy!r}; known: {', '.join(POLICIES)} (or fixed:N, "
                "keepalive:S, and shoal's with +PREDICTOR)"
            )
        label = name
        given = {"mode": name} if name in PRESETS else {"policy": name}
        if predictor:
            given["predictor"] = predictor
            label = f"{name}+{predictor}"
        if name == "keepalive":
            keep = _seconds(policy, arg) if arg else KeepAlivePolicy.keep_alive_s
            given["idle_terminate"] = keep
            label = f"keepalive:{keep:g}"
        if name == "fixed":
            size = _fixed_size(policy, arg, workload)
            size = max(size, min_size) if arg else min(max(size, min_size), max_size)
            given = {"policy": "fixed", "min": size}
            label = f"fixed:{size}"
    fixed = given.get("policy", "fixed" if given.get("mode") == "fixed" else None) == "fixed"
    if not ({"min", "min_instances"} & given.keys()):
        given["min"] = min_size
    if not fixed and not ({"max", "max_instances"} & given.keys()):
        given["max"] = max_size  # (a fixed pool has one size)
    config = parse_scaling_policy(f"policy {label!r}", given)
    # shoal's policies run as a shoal pool does; a baseline as its own system does, unless
    # told otherwise (then the label says so).
    own = REGISTRY[config.policy_name].on_demand
    if on_demand is None:
        on_demand = own
    elif on_demand != own:
        label += " (on demand)" if on_demand else " (no on-demand)"
    # A FaaS platform starts an instance for every request no warm one can take at once.
    eager: bool | Literal["eager"] = (
        "eager" if on_demand and config.policy_name == "keepalive" else on_demand
    )
    return _Plan(label, given, eager, config.min_instances, config.max_instances)


def _seconds(policy: str, arg: str) -> float:
    try:
        value = float(arg)
    except ValueError:
        raise ConfigError(f"policy {policy!r}: {arg!r} is not a number of seconds") from None
    if not value > 0:
        raise ConfigError(f"policy {policy!r}: the keep-alive must be > 0 seconds")
    return value


def _fixed_size(policy: str, arg: str, workload: Workload) -> int:
    if not arg:
        # Provisioned for the busiest minute at 80% utilization, as a capacity planner with
        # hindsight would.
        return max(1, math.ceil(workload.peak_load() / 0.8))
    try:
        size = int(arg)
    except ValueError:
        raise ConfigError(f"policy {policy!r}: the size {arg!r} is not an integer") from None
    if size < 0:
        raise ConfigError(f"policy {policy!r}: the size must be >= 0")
    return size


def simulate(
    workload: Workload,
    policy: str | Mapping[str, Any] = "auto",
    *,
    cold_start: float | Distribution = 2.0,
    min_size: int = 1,
    max_size: int = 100,
    sla: float | None = None,
    price: float | None = None,
    interval: float | None = None,
    seed: int = 0,
    idle_timeout: float = 300.0,
    on_demand: bool | None = None,
    max_concurrency: int = 1,
    warmup: float = 0.0,
    predictor: str | None = None,
    cold_start_growth: float = 0.0,
    placements: PlacementOptions | None = None,
) -> SimResult:
    """Replay ``workload`` on a pool scaled by ``policy`` and measure what happened.

    ``policy`` is a name from :data:`POLICIES` (``fixed:N`` for a fixed size; plain ``fixed``
    is sized for the workload's busiest minute at 80% utilization) or a ``scaling_policy``
    dict. ``cold_start`` is each agent's start time (seconds, or a distribution sampled with
    ``seed``). The pool holds ``min_size`` to ``max_size`` agents and starts with ``min_size``
    warm. ``sla`` is a response-time bound for ``sla_violation_rate``; ``price`` is $ per
    agent-hour for ``cost_usd``. ``interval`` is the time series' sample period (by default one
    that gives a few hundred points). ``idle_timeout`` is the pool's (production default
    300 s). ``on_demand`` overrides whether the pool starts agents for waiting callers.
    ``max_concurrency`` is how many requests one agent serves at once.
    ``predictor`` sets the ``predictor`` of shoal's own policies (baselines have none; ``auto``
    has ``ml-based`` unless given ``none``, e.g. as ``"auto+none"``).
    ``cold_start_growth`` lengthens each start by that fraction per agent already starting
    (see :class:`~shoal.sim.backend.SimBackend`; about 0.011 for process agents).

    ``warmup`` (seconds) makes the comparison start from a settled state: the pool is first
    grown to the size the opening load needs (its first minute's offered load at 70%
    utilization), then a pre-roll runs the workload's first ``warmup`` seconds drawn anew from
    its shape (:func:`shoal.sim.preroll.preroll`: another random stream of the workload's
    seed, not a replay of the counted arrivals; repeated if it is shorter), so each policy
    settles and fills its windows and histories as a running system would have; nothing of
    the pre-roll is counted. Without it every run starts with ``min_size`` warm agents under
    the full load and empty histories.

    ``placements`` (see :func:`shoal.sim.placements.placement_options`) spreads the pool over
    simulated placements: spot with preemptions, a cost cap, regions and their outages; the
    result's summary then has :data:`shoal.sim.placed.PLACED_KEYS` too.

    Runs synchronously on a fresh virtual-time loop; deterministic for a given ``seed``.
    """
    if min_size < 0 or max_size < max(1, min_size):
        raise ConfigError(
            f"min_size={min_size}, max_size={max_size}: need 0 <= min_size <= max_size, "
            "max_size >= 1"
        )
    if sla is not None and not sla > 0:
        raise ConfigError(f"sla={sla!r} must be a number of seconds > 0")
    if price is not None and not price >= 0:
        raise ConfigError(f"price={price!r} must be a number >= 0 ($ per agent-hour)")
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
        raise ConfigError(f"max_concurrency={max_concurrency!r} must be an integer >= 1")
    if max_concurrency < 1:
        raise ConfigError(f"max_concurrency={max_concurrency!r} must be an integer >= 1")
    if not warmup >= 0:
        raise ConfigError(f"warmup={warmup!r} must be a number of seconds >= 0")
    if not (cold_start_growth >= 0 and math.isfinite(cold_start_growth)):
        raise ConfigError(
            f"cold_start_growth={cold_start_growth!r} must be a fraction >= 0 "
            "(e.g. 0.011: each agent already starting makes a start 1.1% slower)"
        )
    if predictor is not None and isinstance(policy, str) and "+" not in policy:
        base = policy.partition(":")[0]
        # "none" is named only where it turns a default off (auto's ml-based).
        if base in SHOAL_POLICIES and (predictor != "none" or base == "auto"):
            policy = f"{policy}+{predictor}"
    elif predictor is not None and isinstance(policy, Mapping):
        policy = {**policy, "predictor": predictor}
    the_plan = plan(policy, workload, min_size=min_size, max_size=max_size, on_demand=on_demand)
    sample = interval if interval is not None else _nice_interval(workload.horizon)
    if not sample > 0:
        raise ConfigError(f"interval={interval!r} must be a number of seconds > 0")
    args = (the_plan, cold_start, seed, sample, idle_timeout, price, warmup, max_concurrency)
    if placements is None:
        run = _Run(workload, *args, cold_start_growth=cold_start_growth)
    else:
        from shoal.sim.placed import PlacedRun
        from shoal.sim.placements import split_origins

        workload, origins = split_origins(workload, placements, seed)
        # The spot preference and the cost cap go where a user puts them: the scaling policy.
        keys = placements.policy_keys()
        args = (replace(the_plan, scaling_policy={**the_plan.scaling_policy, **keys}), *args[1:])
        run = PlacedRun(
            workload,
            *args,
            options=placements,
            origins=origins,
            cold_start_growth=cold_start_growth,
        )
    started = perf_counter()
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(run.main())
    return run.result(sla, price, perf_counter() - started)


def _nice_interval(horizon: float) -> float:
    for step in _NICE_INTERVALS:
        if horizon / step <= 600:
            return float(step)
    return float(math.ceil(horizon / 600))


def _no_loop_yet() -> float:
    raise RuntimeError("the simulation's loop is not running")


class _Observed:
    """Wraps the autoscaler's policy to note every target it sees, for scale events and
    reversals (the pool's own event log is bounded; this is not)."""

    def __init__(self, inner: Policy[Any]) -> None:
        self.inner = inner
        self.name = inner.name
        self.last_target: int | None = None
        self.events = 0
        self.reversals = 0
        self._direction = 0

    def initial_state(self) -> Any:
        return self.inner.initial_state()

    def note(self, target: int) -> None:
        last = self.last_target
        if last is not None and target != last:
            self.events += 1
            direction = 1 if target > last else -1
            if self._direction and direction != self._direction:
                self.reversals += 1
            self._direction = direction
        self.last_target = target

    def decide(self, snapshot: PoolMetrics, state: Any, now: float) -> Decision[Any]:
        self.note(snapshot.target_size)
        return self.inner.decide(snapshot, state, now)


class _Run:
    """The state of one simulation while it runs on the loop."""

    def __init__(
        self,
        workload: Workload,
        the_plan: _Plan,
        cold_start: float | Distribution,
        seed: int,
        interval: float,
        idle_timeout: float,
        price: float | None,
        warmup: float = 0.0,
        max_concurrency: int = 1,
        *,
        cold_start_growth: float = 0.0,
    ) -> None:
        self.workload = workload
        self.warmup = warmup
        self.seed = seed
        self.plan = the_plan
        self.interval = interval
        n = len(workload)
        self.n = n
        self.arrivals = workload.arrivals
        self.durations = workload.durations
        self.waits = [0.0] * n
        self.cold_start_growth = cold_start_growth
        self.backend, self.pool = self._build(cold_start, idle_timeout, price, max_concurrency)
        self.t0 = 0.0
        self.next = 0  # the next request to arrive
        self._time = _no_loop_yet
        self.completed = 0
        self.failed = 0
        self.samples: list[tuple[float, int, int, int, int]] = []
        self.observed: _Observed | None = None
        self.end = 0.0
        self.finished = False
        self.started = 0
        self.agent_seconds = 0.0
        self.starting_seconds = 0.0
        self.cold_starts = 0
        self.forecast_mase: float | None = None
        self._done: asyncio.Future[None] | None = None
        self._base: tuple[int, float, int] = (0, 0.0, 0)  # cold starts, busy s, starts at t0

    def _build(
        self,
        cold_start: float | Distribution,
        idle_timeout: float,
        price: float | None,
        max_concurrency: int,
    ) -> tuple[Any, AgentPool]:
        """The backend (or what stands for the backends: see :mod:`shoal.sim.placed`) and the
        pool to run."""
        backend = SimBackend(cold_start, seed=self.seed, growth=self.cold_start_growth)
        return backend, self._pool(backend, idle_timeout, price, max_concurrency)

    def _pool(
        self,
        backend: SimBackend,
        idle_timeout: float,
        price: float | None,
        max_concurrency: int,
        placements: list[Any] | None = None,
    ) -> AgentPool:
        """The production pool the run replays, as the plan sizes it."""
        return AgentPool(
            "sim",
            min_size=self.plan.pool_min,
            max_size=self.plan.pool_max,
            idle_timeout=idle_timeout,
            on_demand=self.plan.on_demand,
            price_per_hour=price,
            max_concurrency=max_concurrency,
            backend=backend,
            placements=placements,
        )

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        """At ``t0``, the start of the counted run (placements schedule outages here)."""

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._time = loop.time
        pool = self.pool
        await pool.start()  # min_size agents warm before the first request, as when deployed
        warm_size = self._opening()
        if self.warmup and warm_size > pool.size:
            await pool.resize(warm_size, reason="simulation warm-up: the opening load's size")
        scaler = AutoScaler(pool, self.plan.scaling_policy)
        self.observed = _Observed(scaler.policy)
        scaler.policy = self.observed
        if self.warmup:
            scaler.start()
            self._preroll(loop)
            await asyncio.sleep(self.warmup)
            self.observed.events = self.observed.reversals = 0
            self._base = (pool.snapshot().cold_starts, self.backend.busy_seconds, pool.size)
        self.t0 = t0 = loop.time()
        self._begin(loop)
        at_start = self.backend.agent_seconds(t0)
        starting_at_start = self.backend.starting_seconds(t0)
        starts_at_start = self.backend.starts
        if not self.warmup:
            scaler.start()
        self._sample(loop)
        if self.n:
            loop.call_at(t0 + self.arrivals[0], self._arrive, loop)
            await self._done
        horizon = t0 + self.workload.horizon
        if loop.time() < horizon:
            await asyncio.sleep(horizon - loop.time())
        self.end = end = loop.time()
        self.finished = True
        self.agent_seconds = self.backend.agent_seconds(end) - at_start
        self.starting_seconds = self.backend.starting_seconds(end) - starting_at_start
        self.observed.note(pool.target_size)
        self.cold_starts = pool.snapshot().cold_starts - self._base[0]
        self.started = self.backend.starts - starts_at_start
        self.forecast_mase = scaler.forecast_mase
        await scaler.stop()
        await pool.aclose()

    def _opening(self) -> int:
        """The size the opening load (the first minute's) needs at 70% utilization."""
        span = min(60.0, self.workload.horizon) or 1.0
        rate = bisect.bisect_left(self.arrivals, span) / span
        size = math.ceil(rate * self.workload.mean_duration / 0.7 - 1e-9)
        return min(max(size, self.plan.pool_min), self.plan.pool_max)

    def _preroll(self, loop: asyncio.AbstractEventLoop) -> None:
        """The workload's first ``warmup`` seconds drawn anew (see :mod:`shoal.sim.preroll`),
        run before the counted one, so that every policy's history is that of a running system
        and no forecaster sees the counted run's own arrivals twice."""
        start = loop.time()
        for a, d in preroll(self.workload, self.warmup, self.seed):
            loop.call_at(start + a, self._spawn_preroll, loop, d)

    def _spawn_preroll(self, loop: asyncio.AbstractEventLoop, duration: float) -> None:
        loop.create_task(self._preroll_request(duration))

    async def _preroll_request(self, duration: float) -> None:
        with contextlib.suppress(ShoalError):
            await self.pool.call(serve, (duration,))

    def _arrive(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start every request due by now, then sleep until the next one is."""
        now = loop.time()
        t0, arrivals, n, i = self.t0, self.arrivals, self.n, self.next
        create = loop.create_task
        request = self._request
        while i < n and t0 + arrivals[i] <= now:
            create(request(i))
            i += 1
        self.next = i
        if i < n:
            loop.call_at(t0 + arrivals[i], self._arrive, loop)

    async def _request(self, i: int) -> None:
        # The pool sends the call itself (``call``, as ``run`` and ``map`` do), so it can see
        # the call's agent free up when it ends: what a user's ``pool.run`` is.
        duration = self.durations[i]
        try:
            await self.pool.call(serve, (duration,))
        except ShoalError:
            self.failed += 1
        else:
            wait = self._time() - duration - (self.t0 + self.arrivals[i])
            self.waits[i] = wait if wait > 0 else 0.0  # not -1e-15 from rounding
        self.completed += 1
        if self.completed == self.n and self._done is not None:
            self._done.set_result(None)

    def _sample(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the pool every ``interval`` until the run ends."""
        if self.finished:
            return
        pool = self.pool
        seen = pool.metrics
        queue, busy = seen.queue_depth, seen.requests_active
        self.samples.append((loop.time(), pool.size, pool.target_size, busy, queue))
        loop.call_at(self.t0 + len(self.samples) * self.interval, self._sample, loop)

    def result(self, sla: float | None, price: float | None, wall: float) -> SimResult:
        n = self.n
        waits = self.waits
        ordered = sorted(waits)
        responses = sorted(w + d for w, d in zip(waits, self.durations, strict=True))
        duration = self.end - self.t0
        busy = self.backend.busy_seconds - self._base[1]
        peak = self.backend.peak_live
        if self.warmup:
            peak = max([s[1] for s in self.samples] + [self._base[2]])
        observed = self.observed
        assert observed is not None
        violations = None
        if sla is not None:
            over = n - _count_at_most(responses, sla)
            violations = over / n if n else 0.0
        cost = None
        if price is not None:
            cost = self.agent_seconds / 3600 * price
        return SimResult(
            policy=self.plan.label,
            workload=self.workload.name,
            requests=n,
            p50_wait_s=_nearest_rank(ordered, 0.50),
            p95_wait_s=_nearest_rank(ordered, 0.95),
            p99_wait_s=_nearest_rank(ordered, 0.99),
            mean_wait_s=math.fsum(waits) / n if n else 0.0,
            max_wait_s=ordered[-1] if n else 0.0,
            mean_response_s=math.fsum(responses) / n if n else 0.0,
            p99_response_s=_nearest_rank(responses, 0.99),
            sla_s=sla,
            sla_violation_rate=violations,
            agent_seconds=self.agent_seconds,
            idle_agent_seconds=max(0.0, self.agent_seconds - busy - self.starting_seconds),
            busy_agent_seconds=busy,
            starting_agent_seconds=self.starting_seconds,
            cold_starts=self.cold_starts,
            agents_started=self.started,
            scale_events=observed.events,
            reversals=observed.reversals,
            peak_size=peak,
            price_per_hour=price,
            cost_usd=cost,
            duration_s=duration,
            failed=self.failed,
            series=self._series(),
            wall_s=wall,
            forecast_mase=self.forecast_mase,
            warmup_s=self.warmup,
        )

    def _series(self) -> Series:
        iv = self.interval
        k = len(self.samples)
        arrivals_in = [0] * k
        wait_sum = [0.0] * k
        last = k - 1
        for a, w in zip(self.arrivals, self.waits, strict=True):
            b = min(int(a / iv), last)
            arrivals_in[b] += 1
            wait_sum[b] += w
        return Series(
            interval=iv,
            time=tuple(s[0] - self.t0 for s in self.samples),
            load=tuple(c / iv for c in arrivals_in),
            size=tuple(s[1] for s in self.samples),
            target=tuple(s[2] for s in self.samples),
            busy=tuple(s[3] for s in self.samples),
            queue=tuple(s[4] for s in self.samples),
            mean_wait=tuple(
                ws / c if c else 0.0 for ws, c in zip(wait_sum, arrivals_in, strict=True)
            ),
        )


def _nearest_rank(ordered: list[float], q: float) -> float:
    """The ``q``-quantile of sorted values by the nearest-rank method (as the pool's metrics)."""
    if not ordered:
        return 0.0
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def _count_at_most(ordered: list[float], bound: float) -> int:
    return bisect.bisect_right(ordered, bound)


__all__ = [
    "POLICIES",
    "SHOAL_POLICIES",
    "SUMMARY_KEYS",
    "Series",
    "SimResult",
    "plan",
    "simulate",
]
