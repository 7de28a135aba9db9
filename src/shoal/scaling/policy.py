"""Scaling policies: pure functions from a pool snapshot and a typed state to a decision.

A policy reads no clock and does no I/O: ``now`` arrives as an argument, the pool's state as a
frozen :class:`~shoal.pool.PoolMetrics`, and its own memory as an immutable state object it
returns updated. That makes every policy testable as a plain function and replayable in virtual
time. Generic concerns — bounds, stabilisation, rate limits, bursts, scale to zero, cost caps —
are not a policy's business: :mod:`shoal.scaling.guards` wraps them around any policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from shoal.pool.metrics import PoolMetrics

S = TypeVar("S")


@dataclass(frozen=True)
class Decision(Generic[S]):
    """How many agents to keep warm, the policy's next state, and why (for people)."""

    desired: int
    state: S
    reason: str
    # Set the target again even if ``desired`` equals it, so the pool lets go of idle agents
    # above it now (agents started on demand) instead of after its ``idle_timeout``.
    shed: bool = False


class Policy(Protocol[S]):
    """Anything with a name, an initial state and a pure ``decide``."""

    @property
    def name(self) -> str: ...

    def initial_state(self) -> S: ...

    def decide(self, snapshot: PoolMetrics, state: S, now: float) -> Decision[S]: ...


@dataclass(frozen=True)
class RateState:
    """What a policy remembers to turn cumulative counters into smoothed recent rates."""

    requests_total: int = 0
    time: float | None = None
    rate: float = 0.0  # arrivals per second, smoothed
    busy: float = 0.0  # busy agents plus queued callers, smoothed


def observe(snapshot: PoolMetrics, state: RateState, now: float, *, tau: float = 10.0) -> RateState:
    """Fold one snapshot into exponentially smoothed arrival rate and in-flight count.

    ``tau`` is the smoothing time constant in seconds, so the result does not depend on how
    often the policy is asked.
    """
    # Agents' worth of calls: an agent runs max_concurrency calls at once.
    calls = max(snapshot.in_flight, snapshot.busy)  # (equal when an agent runs one call)
    in_flight = (calls + snapshot.queue_depth) / max(1, snapshot.max_concurrency)
    if state.time is None or now <= state.time:
        return RateState(snapshot.requests_total, now, state.rate, in_flight)
    dt = now - state.time
    instant = (snapshot.requests_total - state.requests_total) / dt
    a = 1.0 - math.exp(-dt / tau)
    return RateState(
        snapshot.requests_total,
        now,
        state.rate + a * (instant - state.rate),
        state.busy + a * (in_flight - state.busy),
    )


@dataclass(frozen=True)
class TargetState:
    """The target policy's memory: the smoothed rates, and since when utilization is low."""

    seen: RateState = RateState()
    low_since: float | None = None


#: How many standard deviations of a smoothed Poisson rate a rise must exceed to be load.
NOISE_Z = 1.5


@dataclass(frozen=True)
class TargetUtilizationPolicy:
    """Keep utilization near a target: ``desired = ceil(demand / target_utilization)``.

    Demand is the larger of the recent arrival rate times the mean execution time (Little's
    law) and the number of calls in flight (busy plus queued), both smoothed over
    ``smoothing_s`` (10 s) so a steady but noisy load does not jitter the size. A real queue is
    the burst guard's business and counts at once there. Within ``tolerance`` of the current
    size nothing changes.

    ``queueing_headroom`` (β, off by default; ``auto`` sets it when no ``target_utilization``
    is given) caps the headroom at what queueing theory says is enough: ``demand + β√demand``
    agents keep the chance that a call waits at a few percent whatever the load (square-root
    staffing, Halfin and Whitt), so a large pool runs hotter than ``target_utilization`` while
    a small one keeps the headroom it needs.

    The seed's thresholds, each off unless given: above ``scale_up_threshold`` utilization,
    or when the caller at the head of the queue will miss the ``sla`` (its wait so far plus the
    mean run time exceeds it), the size grows by at least one whatever the demand says. Then
    fewer agents are recommended only while utilization is below ``scale_down_threshold``,
    and only once it has stayed there for ``idle_time`` seconds.
    """

    target_utilization: float = 0.7
    tolerance: float = 0.1
    smoothing_s: float = 10.0
    queueing_headroom: float | None = None
    scale_up_threshold: float | None = None
    scale_down_threshold: float | None = None
    sla: float | None = None
    idle_time: float | None = None
    name: str = "target"

    def initial_state(self) -> TargetState:
        return TargetState()

    def decide(
        self, snapshot: PoolMetrics, state: TargetState, now: float
    ) -> Decision[TargetState]:
        tracked = self._track(snapshot, state.seen, now)
        current = snapshot.target_size
        util = snapshot.utilization_rate
        up = None
        if self.scale_up_threshold is not None and util > self.scale_up_threshold:
            up = f"utilization {util:.0%} > scale_up_threshold {self.scale_up_threshold:.0%}"
        late = snapshot.oldest_wait + snapshot.avg_execution_time
        if self.sla is not None and snapshot.queue_depth > 0 and late > self.sla:
            up = f"a caller waiting {snapshot.oldest_wait:.2f} s will miss the sla {self.sla:g} s"
        if up is not None and tracked.desired <= current:
            return Decision(current + 1, TargetState(tracked.state), f"{up}: +1")
        if up is not None or tracked.desired >= current:
            return Decision(tracked.desired, TargetState(tracked.state), tracked.reason)
        # The demand says fewer: under the thresholds only from low utilization, held long enough.
        low = self.scale_down_threshold
        if self.idle_time is not None and low is None:
            low = 0.3
        if low is None:
            return Decision(tracked.desired, TargetState(tracked.state), tracked.reason)
        if util >= low:
            return Decision(
                current,
                TargetState(tracked.state),
                f"{tracked.reason}, but utilization {util:.0%} is not below "
                f"scale_down_threshold {low:.0%}",
            )
        since = state.low_since if state.low_since is not None else now
        wait = self.idle_time or 0.0
        if now - since < wait:
            return Decision(
                current,
                TargetState(tracked.state, since),
                f"{tracked.reason}; utilization {util:.0%} low for {now - since:.0f} of "
                f"{wait:.0f} s (idle_time)",
            )
        return Decision(
            tracked.desired,
            TargetState(tracked.state, since),
            f"{tracked.reason}; utilization {util:.0%} < {low:.0%}"
            + (f" for {now - since:.0f} s" if wait else ""),
        )

    def _track(self, snapshot: PoolMetrics, state: RateState, now: float) -> Decision[RateState]:
        """Plain target tracking: the size the smoothed demand needs."""
        seen = observe(snapshot, state, now, tau=self.smoothing_s)
        little = seen.rate * snapshot.avg_execution_time / max(1, snapshot.max_concurrency)
        demand = max(little, seen.busy)
        need = demand / self.target_utilization
        at = f"at {self.target_utilization:.0%} utilization"
        beta = self.queueing_headroom
        if beta is not None and demand + beta * math.sqrt(demand) < need:
            need, at = demand + beta * math.sqrt(demand), f"+ {beta:g} x sqrt(demand)"
        desired = math.ceil(need - 1e-9) if demand > 0 else 0
        current = snapshot.target_size
        basis = (
            f"demand {demand:.2f} ({seen.rate:.2f}/s x {snapshot.avg_execution_time:.3f} s; "
            f"in flight {seen.busy:.1f}) {at}"
        )
        if current and desired and abs(desired - current) / current <= self.tolerance:
            return Decision(current, seen, f"{basis}: within {self.tolerance:.0%} of {current}")
        if current and desired > current:
            # A Poisson rate smoothed over tau wanders by sqrt(rate / 2 tau) around the true
            # one: a rise within NOISE_Z of those is the load's own noise, not more load.
            per_call = snapshot.avg_execution_time / max(1, snapshot.max_concurrency)
            noise = NOISE_Z * math.sqrt(seen.rate / (2 * self.smoothing_s)) * per_call
            if need - current <= noise / self.target_utilization:
                return Decision(current, seen, f"{basis}: within the rate's noise of {current}")
        return Decision(desired, seen, f"{basis} needs {desired}")


@dataclass(frozen=True)
class RuleState:
    low_since: float | None = None
    rate: RateState = RateState()


@dataclass(frozen=True)
class RulePolicy:
    """The seed's rules, as written in its ``AutoScaler.evaluate``.

    Up when utilization is above ``scale_up_threshold``, when callers have waited over
    ``wait_s`` (one second), when more than ``queue_depth`` are queued, or when the response time
    exceeds ``sla``. Down once utilization has stayed below ``scale_down_threshold`` with an
    empty queue for ``idle_time``, then again at every decision while it stays there, so an
    idle pool steps down to its minimum. Each decision moves by ``step_up`` / ``step_down``
    agents. ``idle_time`` is the rule's own scale-down delay: the guards' stabilisation window
    does not apply to it (it would hold every single step for the whole window).
    """

    scale_up_threshold: float = 0.8
    scale_down_threshold: float = 0.3
    queue_depth: int = 5
    wait_s: float = 1.0
    sla: float | None = None
    idle_time: float = 300.0
    step_up: int = 1
    step_down: int = 1
    name: str = "rule"

    def initial_state(self) -> RuleState:
        return RuleState()

    def decide(self, snapshot: PoolMetrics, state: RuleState, now: float) -> Decision[RuleState]:
        current = snapshot.target_size
        util = snapshot.utilization_rate
        response = snapshot.avg_wait_time + snapshot.avg_execution_time
        up = None
        if util > self.scale_up_threshold:
            up = f"utilization {util:.0%} > {self.scale_up_threshold:.0%}"
        elif snapshot.queue_depth > 0 and snapshot.oldest_wait > self.wait_s:
            up = f"a caller has waited {snapshot.oldest_wait:.1f} s > {self.wait_s} s"
        elif snapshot.queue_depth > self.queue_depth:
            up = f"{snapshot.queue_depth} queued > {self.queue_depth}"
        elif self.sla is not None and response > self.sla:
            up = f"response time {response:.3f} s > sla {self.sla} s"
        if up is not None:
            base = max(current, snapshot.size)
            return Decision(base + self.step_up, RuleState(None), f"{up}: +{self.step_up}")
        if util < self.scale_down_threshold and snapshot.queue_depth == 0:
            since = state.low_since if state.low_since is not None else now
            if now - since >= self.idle_time:
                return Decision(
                    current - self.step_down,
                    RuleState(since),
                    f"utilization {util:.0%} < {self.scale_down_threshold:.0%} for "
                    f"{now - since:.0f} s: -{self.step_down}",
                )
            return Decision(
                current,
                RuleState(since),
                f"utilization {util:.0%}, low for {now - since:.0f} of {self.idle_time:.0f} s",
            )
        return Decision(current, RuleState(None), f"utilization {util:.0%}: steady")


@dataclass(frozen=True)
class FixedPolicy:
    """Always the same size."""

    size: int
    name: str = "fixed"

    def initial_state(self) -> None:
        return None

    def decide(self, snapshot: PoolMetrics, state: None, now: float) -> Decision[None]:
        return Decision(self.size, None, f"fixed size {self.size}")


@dataclass(frozen=True)
class FunctionPolicy:
    """Wraps a plain function ``fn(snapshot, state, now) -> Decision`` as a policy."""

    fn: Callable[[PoolMetrics, Any, float], Decision[Any]]
    state0: Any = None
    name: str = "custom"

    def initial_state(self) -> Any:
        return self.state0

    def decide(self, snapshot: PoolMetrics, state: Any, now: float) -> Decision[Any]:
        return self.fn(snapshot, state, now)
