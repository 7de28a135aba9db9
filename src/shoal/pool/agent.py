"""A pooled agent: one backend agent plus the pool's bookkeeping about it."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from shoal.pool.pool import AgentPool

T = TypeVar("T")


class AgentState(enum.Enum):
    """Where an agent is in its life. ``STOPPED`` agents have left the pool."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    STOPPED = "stopped"


class PooledAgent:
    """The seed's ``PooledAgent``: an agent, when it was last used, how often, and its state.

    Obtained from :meth:`AgentPool.get_agent` or :meth:`AgentPool.acquire`; run calls on it with
    :meth:`run` and give it back with :meth:`AgentPool.release_agent`.
    """

    __slots__ = (
        "acquired_at",
        "acquired_stack",
        "agent_id",
        "created_at",
        "expires_at",
        "handle",
        "last_checked",
        "last_used",
        "leak_reported",
        "pool",
        "ready_at",
        "reserved",
        "retire_reason",
        "state",
        "usage_count",
    )

    def __init__(self, pool: AgentPool, agent_id: str, now: float) -> None:
        self.pool = pool
        self.agent_id = agent_id
        self.handle: Any = None
        self.state = AgentState.STARTING
        self.created_at = now
        self.ready_at: float | None = None
        self.last_used = now
        self.last_checked = now
        self.acquired_at: float | None = None
        self.usage_count = 0
        # True while the pool holds an idle agent aside (health check); it is not assignable.
        self.reserved = False
        self.retire_reason: str | None = None
        self.expires_at = float("inf")  # when max_lifetime (with its jitter) retires it
        self.acquired_stack: str | None = None  # where it was taken, when leaks are watched
        self.leak_reported = False

    @property
    def agent(self) -> Any:
        """The backend's handle (the seed's ``PooledAgent.Agent``)."""
        return self.handle

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on this agent, which the caller must hold."""
        return await self.pool._call(self, fn, args, kwargs)

    async def call(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> T:
        """:meth:`run` with a ``timeout`` for the call (the agent is killed when it expires)."""
        return await self.pool._call(self, fn, args, kwargs or {}, timeout)

    def __repr__(self) -> str:
        return (
            f"<PooledAgent {self.agent_id} {self.state.value} uses={self.usage_count}"
            f"{' reserved' if self.reserved else ''}>"
        )
