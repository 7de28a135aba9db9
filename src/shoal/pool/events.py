"""Why a pool has the size it has: every change of size is recorded with its reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.pool.metrics import PoolMetrics


@dataclass(frozen=True, slots=True)
class ScalingEvent:
    """One change of a pool's size or target, on the pool's clock.

    ``kind`` is ``scale`` (the warm target moved: an autoscaler decision or a resize; sizes are
    targets), ``start`` (an agent was asked for: on demand, to reach the target, or to replace
    one), ``start_failed``, ``retire`` (the pool let an agent go) or ``lost`` (an agent died on
    its own); for the last four the sizes are the pool's live agents before and after.
    ``metrics`` is the snapshot the decision was taken on, for ``scale`` events.
    """

    time: float
    kind: str
    agent_id: str
    from_size: int
    to_size: int
    reason: str
    metrics: PoolMetrics | None = None

    def __str__(self) -> str:
        who = f" {self.agent_id}" if self.agent_id else ""
        sizes = f"{self.from_size} -> {self.to_size}"
        return f"t={self.time:.3f} {self.kind}{who}: {sizes} ({self.reason})"
