"""Guards: what every policy needs and none should write again, wrapped around any policy.

:class:`GuardedPolicy` is itself a pure policy. It asks the inner policy for a size, then
applies, in this order:

1. **burst** — when ``queue_depth`` or more callers are waiting, and more than the busy agents
   will clear before the next decision (``busy * interval / mean run time``), jump straight to
   the size that serves everyone in flight (busy + queued), at most ``burst_capacity`` above
   the current size (no cap when unset); a burst skips the up rate limit.
2. **zero path** — when nothing has arrived for ``idle_terminate`` seconds and nothing is running,
   go to ``min_instances`` (0 for scale to zero). The first call after zero starts an agent at
   once and waits for it: the pool does that, not the autoscaler.
3. **stabilisation** — up is immediate; down goes only to the *highest* size recommended over the
   last ``cooldown_period`` seconds, so a brief lull never sheds capacity a moment before the
   next wave (Kubernetes' scale-down stabilisation window, with an up window of zero).
4. **rate limits** — at most ``scale_up_rate`` added and ``scale_down_rate`` removed per decision.
5. **cost cap** — never more agents than ``cost_threshold`` $/h buys: the pool's own count
   (``cost_cap_size``: its agents at their placements' prices, plus what the rest buys at the
   cheapest open placement) when it reports one, else ``cost_threshold / price_per_hour`` (the
   pool's price, or :data:`~shoal.scaling.config.DEFAULT_PRICE_PER_HOUR`). Headroom goes first
   (the pool runs hotter); when even the calls in flight need more, it refuses to grow and says
   by how many agents.
6. **bounds** — within ``[min_instances, max_instances]``.

Every decision carries the reason of each guard that changed it.

The field's autoscalers (``hpa``, ``kpa``, ``rayserve``, ``keepalive``) bring their own
windows and delays, so they get only the last two (``guards="bounds"``), as does ``fixed``; the
``rule`` policy's ``idle_time`` is its scale-down delay, so it skips the window
(``guards="no-window"``). Which policy gets which is :mod:`shoal.scaling.registry`'s.

:class:`ShedSurplus` wraps the result once more, for the autoscaler: agents the pool started on
demand above the policy's size are let go once they have been surplus for a while.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from shoal.errors import ConfigError
from shoal.pool.metrics import PoolMetrics
from shoal.scaling.config import DEFAULT_PRICE_PER_HOUR, ScalingPolicyConfig
from shoal.scaling.policy import Decision, Policy, TargetUtilizationPolicy
from shoal.scaling.registry import Guards, entry


@dataclass(frozen=True)
class GuardState:
    inner: Any
    # (time, recommended size) over the stabilisation window, oldest first: only those above
    # every later one (the others can no longer be the window's highest)
    history: tuple[tuple[float, int], ...] = ()
    last_total: int = -1
    last_arrival: float | None = None


@dataclass(frozen=True)
class GuardedPolicy:
    """Any policy, with the guards of :mod:`shoal.scaling.guards` around it."""

    inner: Policy[Any]
    config: ScalingPolicyConfig
    price_per_hour: float | None = None
    name: str = field(default="")
    # "all"; "no-window" without the stabilisation window; "bounds" for a policy that brings
    # its own windows: only the cost cap and bounds.
    guards: Guards = "all"

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.inner.name)
        cap = self.cost_cap
        if cap is not None and cap < self.config.min_instances:
            raise ConfigError(
                f"scaling_policy: cost_threshold={self.config.cost_threshold} $/h at "
                f"{self.price} $/agent-hour affords {cap} agents, fewer than "
                f"min_instances={self.config.min_instances}; raise cost_threshold or lower "
                "min_instances"
            )

    @property
    def price(self) -> float:
        """$ per agent-hour: the pool's price, or the documented default."""
        return self.price_per_hour if self.price_per_hour is not None else DEFAULT_PRICE_PER_HOUR

    @property
    def cost_cap(self) -> int | None:
        cfg = self.config
        if cfg.cost_threshold is None or self.price == 0:
            return None  # free agents: no number of them exceeds a budget
        return math.floor(cfg.cost_threshold / self.price + 1e-9)

    def initial_state(self) -> GuardState:
        return GuardState(self.inner.initial_state())

    def decide(self, snapshot: PoolMetrics, state: GuardState, now: float) -> Decision[GuardState]:
        cfg = self.config
        current = snapshot.target_size
        raw = self.inner.decide(snapshot, state.inner, now)
        desired, reasons = raw.desired, [raw.reason]
        if self.guards == "bounds":
            desired = self._capped(desired, reasons, snapshot)
            return Decision(desired, GuardState(raw.state), "; ".join(reasons))

        # 1. burst
        burst = False
        need = max(desired, snapshot.busy + snapshot.queue_depth)
        # A queue the busy agents clear before the next decision is noise, not a burst: a pool
        # of 30 running 1-s calls frees 30 agents a second, so 7 callers waiting a moment is
        # what a well-sized pool sees now and then (the smoothed demand takes care of it).
        exec_s = snapshot.avg_execution_time
        drained = snapshot.busy * cfg.interval / exec_s if exec_s > 0 else 0.0
        if snapshot.queue_depth >= max(cfg.queue_depth, drained) and need > current:
            jump = need if cfg.burst_capacity is None else min(need, current + cfg.burst_capacity)
            if jump > current:
                desired, burst = jump, True
                reasons.append(f"burst: {snapshot.queue_depth} queued, jump to {jump}")

        # 2. zero path
        arrived = snapshot.requests_total != state.last_total
        last_arrival = now if arrived or state.last_arrival is None else state.last_arrival
        idle_for = now - last_arrival
        zeroed = False
        quiet = snapshot.busy == 0 and snapshot.queue_depth == 0
        if cfg.idle_terminate is not None and quiet:
            if idle_for >= cfg.idle_terminate:
                if max(desired, current) > cfg.min_instances:
                    desired, zeroed = cfg.min_instances, True
                    reasons.append(f"no requests for {idle_for:.0f} s (idle_terminate)")
            elif desired == 0:
                # Zero is reached only by the zero path: one agent stays warm until then.
                desired = 1
                reasons.append(
                    f"one agent kept warm until {cfg.idle_terminate:.0f} s without requests"
                )

        # 3. stabilisation: down only to the highest recommendation in the window. The history
        # keeps only the recommendations that may still be that highest one — each above every
        # later one (a monotonic queue) — so its head is the window's maximum, in O(1) amortised.
        window = cfg.cooldown_period
        history = state.history
        cutoff = now - window
        expired = 0
        while expired < len(history) and history[expired][0] <= cutoff:
            expired += 1
        if expired:
            history = history[expired:]
        floor = max(history[0][1], desired) if history else desired
        kept = len(history)
        while kept and history[kept - 1][1] <= desired:
            kept -= 1
        history = (*history[:kept], (now, desired))
        if (
            desired < current
            and window > 0
            and not zeroed
            and self.guards == "all"
            and floor > desired
        ):
            reasons.append(
                f"held at {min(floor, current)}: the last {window:.0f} s recommended up to {floor}"
            )
            desired = min(floor, current)

        # 4. rate limits
        up_rate, down_rate = cfg.scale_up_rate, cfg.scale_down_rate
        if up_rate is not None and not burst and desired - current > up_rate:
            desired = current + up_rate
            reasons.append(f"scale_up_rate {up_rate}")
        if down_rate is not None and current - desired > down_rate:
            desired = current - down_rate
            reasons.append(f"scale_down_rate {down_rate}")

        desired = self._capped(desired, reasons, snapshot)
        next_state = GuardState(raw.state, history, snapshot.requests_total, last_arrival)
        return Decision(desired, next_state, "; ".join(reasons))

    def _capped(self, desired: int, reasons: list[str], snapshot: PoolMetrics) -> int:
        """5. the cost cap, then 6. the bounds."""
        cfg = self.config
        cap = self.cost_cap
        if snapshot.cost_cap_size is not None and snapshot.cost_per_hour > 0:
            # The pool's own count, at its placements' prices (it knows the mix).
            cap = snapshot.cost_cap_size if cap is None else min(cap, snapshot.cost_cap_size)
        if cap is not None and desired > cap:
            slots = max(1, snapshot.max_concurrency)
            need = -(-(snapshot.in_flight + snapshot.queue_depth) // slots)
            if need <= cap:
                why = f"headroom given up, running hotter (wanted {desired})"
            else:
                why = f"refusing to grow: wanted {desired}, {need - cap} over what it buys"
            desired = cap
            reasons.append(f"cost cap {cap} agents ({cfg.cost_threshold} $/h): {why}")
        bounded = min(max(desired, cfg.min_instances), cfg.max_instances)
        if bounded != desired:
            reasons.append(f"bounds [{cfg.min_instances}, {cfg.max_instances}]")
        return bounded


#: ``auto``'s square-root-staffing headroom (β): ``demand + 2.5√demand`` agents keep the chance
#: that a call waits near 1% (Erlang C) from tens of agents up. The smaller of the two sizes is
#: kept: below ~35 agents of demand that is ``target_utilization``'s (70%), above it this one's
#: (a large pool runs hotter). Chosen on bench/scaling.py.
QUEUEING_HEADROOM = 2.5


def target_policy(config: ScalingPolicyConfig) -> TargetUtilizationPolicy:
    """The target policy a mode's config describes, thresholds included where given."""
    # Smooth over a sixth of the scale-down window (10 s for the default 60 s): a user who
    # asks for a short cooldown gets a policy that forgets a burst as quickly.
    smoothing = min(10.0, max(config.interval, config.cooldown_period / 6))
    # Unless the user asked for a utilization, let queueing theory trim the headroom of
    # large pools (see TargetUtilizationPolicy.queueing_headroom).
    beta = None if config.given("target_utilization") else QUEUEING_HEADROOM
    return TargetUtilizationPolicy(
        config.target_utilization,
        smoothing_s=smoothing,
        queueing_headroom=beta,
        scale_up_threshold=(
            config.scale_up_threshold if config.given("scale_up_threshold") else None
        ),
        scale_down_threshold=(
            config.scale_down_threshold if config.given("scale_down_threshold") else None
        ),
        sla=config.sla,
        idle_time=config.idle_time,
    )


def build_policy(
    config: ScalingPolicyConfig, *, price_per_hour: float | None = None
) -> GuardedPolicy:
    """The guarded policy a ``scaling_policy`` names (by ``policy``, or by ``mode``).

    ``price_per_hour`` is the pool's price of an agent-hour, for ``cost_threshold``; without one
    :data:`~shoal.scaling.config.DEFAULT_PRICE_PER_HOUR` is assumed.
    """
    chosen = entry(config.policy_name)
    inner = chosen.build(config)
    if config.predictor_name != "none":
        inner = predictive(inner, config)
        if config.min_instances == 0 and config.idle_terminate is None:
            from shoal.scaling.keepwarm import KeepWarm

            inner = KeepWarm(inner)  # scale to zero between calls, pre-warmed from the gaps
    return GuardedPolicy(inner, config, price_per_hour, guards=chosen.guards)


def predictive(inner: Policy[Any], config: ScalingPolicyConfig) -> Policy[Any]:
    """``inner`` with the config's predictor around it (inside the guards, which bind it)."""
    from shoal.scaling.predict import Forecaster
    from shoal.scaling.predictive import PredictivePolicy

    # Bins of 10 s (or the interval, if longer): short enough to see a 30-s burst's phase,
    # long enough that a bin of a light load holds more than noise.
    forecaster = Forecaster(kind=config.predictor_name, bin_s=max(10.0, config.interval))
    beta = None if config.given("target_utilization") else QUEUEING_HEADROOM
    return PredictivePolicy(
        inner,
        forecaster,
        interval=config.interval,
        target_utilization=config.target_utilization,
        queueing_headroom=beta,
        cold_start=config.cold_start,
        forecast_only=config.forecast_only,
    )


@dataclass(frozen=True)
class SurplusState:
    inner: Any
    since: float | None = None  # when idle agents above the policy's size were first seen


@dataclass(frozen=True)
class ShedSurplus:
    """Let go of idle agents above the policy's size once they have been surplus for ``hold_s``.

    Agents the pool started on demand sit above the target. Once the pool has had idle agents
    beyond what the policy wants for ``hold_s`` seconds, the decision asks the autoscaler to set
    the target again (``shed``), which retires them as a lower recommendation would, rather than
    after the pool's ``idle_timeout``. Busy agents are never retired.
    """

    inner: Policy[Any]
    hold_s: float

    @property
    def name(self) -> str:
        return self.inner.name

    def initial_state(self) -> SurplusState:
        return SurplusState(self.inner.initial_state())

    def decide(
        self, snapshot: PoolMetrics, state: SurplusState, now: float
    ) -> Decision[SurplusState]:
        raw = self.inner.decide(snapshot, state.inner, now)
        desired = min(max(raw.desired, snapshot.min_size), snapshot.max_size)
        if not (snapshot.idle > 0 and snapshot.size > desired):
            return Decision(raw.desired, SurplusState(raw.state), raw.reason)
        since = state.since if state.since is not None else now
        if now - since < self.hold_s:
            return Decision(raw.desired, SurplusState(raw.state, since), raw.reason)
        return Decision(raw.desired, SurplusState(raw.state), raw.reason, shed=True)
