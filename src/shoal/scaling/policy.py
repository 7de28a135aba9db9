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
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

from shoal.pool.metrics import PoolMetrics

S = TypeVar("S")


@dataclass(frozen=True)
class Decision(Generic[S]):
    """How many agents to keep warm, the policy's next state, and why (for people)."""

    desired: int
    state: S
    reason: str


class Policy(Protocol[S]):
    """Anything with a name, an initial state and a pure ``decide``."""

    name: str

    def initial_state(self) -> S: ...

    def decide(self, snapshot: PoolMetrics, state: S, now: float) -> Decision[S]: ...


@dataclass(frozen=True)
class RateState:
    """What a policy remembers to turn cumulative counters into a recent arrival rate."""

    requests_total: int = 0
    time: float | None = None
    rate: float = 0.0


def arrival_rate(
    snapshot: PoolMetrics, state: RateState, now: float, *, smoothing: float = 0.5
) -> RateState:
    """Arrivals per second since the last decision, smoothed (exponentially) with earlier ones."""
    if state.time is None or now <= state.time:
        return RateState(snapshot.requests_total, now, state.rate)
    instant = (snapshot.requests_total - state.requests_total) / (now - state.time)
    rate = smoothing * instant + (1 - smoothing) * state.rate
    return RateState(snapshot.requests_total, now, rate)


@dataclass(frozen=True)
class TargetUtilizationPolicy:
    """Keep utilization near a target: ``desired = ceil(demand / target_utilization)``.

    Demand is the larger of what is in flight now (busy agents plus queued callers) and what the
    recent arrival rate needs by Little's law (arrivals/s x mean execution time). Within
    ``tolerance`` of the current size nothing changes, so a steady load does not jitter.
    """

    target_utilization: float = 0.7
    tolerance: float = 0.1
    name: str = "target"

    def initial_state(self) -> RateState:
        return RateState()

    def decide(self, snapshot: PoolMetrics, state: RateState, now: float) -> Decision[RateState]:
        rate = arrival_rate(snapshot, state, now)
        in_flight = snapshot.busy + snapshot.queue_depth
        little = rate.rate * snapshot.avg_execution_time
        demand = max(float(in_flight), little)
        desired = math.ceil(demand / self.target_utilization - 1e-9) if demand > 0 else 0
        current = snapshot.target_size
        basis = (
            f"demand {demand:.2f} (busy {snapshot.busy} + queued {snapshot.queue_depth}; "
            f"{rate.rate:.2f}/s x {snapshot.avg_execution_time:.3f} s) "
            f"at {self.target_utilization:.0%} utilization"
        )
        if current and desired and abs(desired - current) / current <= self.tolerance:
            return Decision(current, rate, f"{basis}: within {self.tolerance:.0%} of {current}")
        return Decision(desired, rate, f"{basis} needs {desired}")


@dataclass(frozen=True)
class RuleState:
    low_since: float | None = None
    rate: RateState = RateState()


@dataclass(frozen=True)
class RulePolicy:
    """The seed's rules, as written in its ``AutoScaler.evaluate``.

    Up when utilization is above ``scale_up_threshold``, when callers have waited over
    ``wait_s`` (one second), when more than ``queue_depth`` are queued, or when the response time
    exceeds ``sla``. Down when utilization has stayed below ``scale_down_threshold`` with an empty
    queue for ``idle_time``. Each decision moves by ``step_up`` / ``step_down`` agents.
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
                    RuleState(now),
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


def with_name(policy: Any, name: str) -> Any:
    """A copy of a dataclass policy under another name (for tables and events)."""
    return replace(policy, name=name)
