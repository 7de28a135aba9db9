"""Why a pool has the size it has: every change of size is recorded with its reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """One change of a pool's size (``starting + idle + busy``), on the pool's clock.

    ``kind`` is one of ``start`` (an agent was asked for), ``start_failed``, ``retire`` (the pool
    let an agent go) and ``lost`` (an agent died on its own).
    """

    time: float
    kind: str
    agent_id: str
    from_size: int
    to_size: int
    reason: str

    def __str__(self) -> str:
        return (
            f"t={self.time:.3f} {self.kind} {self.agent_id}: "
            f"{self.from_size} -> {self.to_size} ({self.reason})"
        )
