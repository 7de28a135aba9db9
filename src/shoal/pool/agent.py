"""A pooled agent (one backend agent plus the pool's bookkeeping about it) and the lease under
which a caller holds it."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from shoal.pool.depth import RunTimes

if TYPE_CHECKING:
    from shoal.pool.pool import AgentPool
    from shoal.pool.waitqueue import Waiter

T = TypeVar("T")


class AgentState(enum.Enum):
    """Where an agent is in its life. ``STOPPED`` agents have left the pool.

    ``CHECKING`` is an idle agent set aside for a health check: alive, but not assignable.
    """

    STARTING = "starting"
    IDLE = "idle"
    CHECKING = "checking"
    BUSY = "busy"
    STOPPING = "stopping"
    STOPPED = "stopped"

    # Members are singletons: hash them by identity, in C, not by name in Python (Enum's
    # default), since the pool counts agents in a dict keyed by state on every call.
    __hash__ = object.__hash__


class PooledAgent:
    """The seed's ``PooledAgent``: an agent, when it was last used, how often, and its state.

    Callers do not hold a ``PooledAgent`` directly: :meth:`AgentPool.get_agent` returns a
    :class:`Lease` on one.
    """

    __slots__ = (
        "agent_id",
        "calls",
        "created_at",
        "draining",
        "expires_at",
        "handle",
        "last_checked",
        "last_used",
        "leases",
        "lost_at",
        "placement",
        "preempt_deadline",
        "preempted",
        "queued_calls",
        "ready_at",
        "retire_reason",
        "runs",
        "site",
        "state",
        "swap",
        "swap_from",
        "usage_count",
    )

    def __init__(self, agent_id: str, now: float, placement: Any = None, site: Any = None) -> None:
        self.agent_id = agent_id
        # Where it lives (a shoal.pool.placement.Placement; the pool's one placement if it
        # was given none), and the pool's tally of that placement.
        self.placement = placement
        self.site = site
        # Set by a preemption notice: the loop time its capacity is reclaimed. It takes no new
        # call; one still running then is cancelled (``preempted``) and re-queued.
        self.preempt_deadline: float | None = None
        self.preempted = False
        self.lost_at: float | None = None  # when the pool heard it was lost (once)
        self.swap = False  # started on spot to replace an on-demand agent
        self.swap_from: Any = None  # ... or on a cheaper placement, to replace one of this Site
        self.handle: Any = None
        self.state = AgentState.STARTING
        self.created_at = now
        self.ready_at: float | None = None
        self.last_used = now
        self.last_checked = now
        self.usage_count = 0
        # The leases of the callers holding it: one at most, or up to max_concurrency. BUSY
        # while there is any.
        self.leases: set[Lease] = set()
        self.calls = 0  # calls outstanding on it (sent, not yet answered)
        self.queued_calls = 0  # its leases whose calls are prefetched, queued behind another
        # Set when the agent must not take another call (lost, timed out, unresponsive): it is
        # killed, and the last holder's release retires it with this reason.
        self.retire_reason: str | None = None
        # Set when it should take no new lease but may finish its calls (max_uses reached,
        # lifetime over, ...): the last holder's release retires it gracefully.
        self.draining: str | None = None
        self.expires_at = float("inf")  # when max_lifetime (with its jitter) retires it
        # Its recent service times: how many calls may queue behind its running one (prefetch).
        self.runs = RunTimes()

    @property
    def agent(self) -> Any:
        """The backend's handle (the seed's ``PooledAgent.Agent``)."""
        return self.handle

    @property
    def node(self) -> str | None:
        """The address of the node the agent runs on, for a backend that places agents on
        nodes (Ray: the node's IP); None otherwise, or before it has started."""
        node = getattr(self.handle, "node_ip", None)
        return None if node is None else str(node)

    @property
    def alive(self) -> bool:
        """False once the backend has seen the agent exit."""
        handle = self.handle
        return handle is None or handle.exit_code is None

    def expired(self, now: float) -> bool:
        """Past its ``max_lifetime`` (with jitter)."""
        return self.expires_at <= now

    def idle_past(self, timeout: float, now: float) -> bool:
        """Unused for ``timeout`` seconds or more."""
        return self.last_used + timeout <= now

    def health_due(self, interval: float, now: float) -> bool:
        return self.last_checked + interval <= now

    def __repr__(self) -> str:
        return f"<PooledAgent {self.agent_id} {self.state.value} uses={self.usage_count}>"


class Lease:
    """One caller's hold on one agent, from :meth:`AgentPool.get_agent` until it is released.

    Run calls with :meth:`run` / :meth:`call` and give it back with
    :meth:`AgentPool.release_agent` (or use :meth:`AgentPool.acquire`). A lease carries one call
    at a time (an agent with ``max_concurrency`` > 1 is held under several leases at once). A
    lease is good for one hold only: once released, its calls raise
    :class:`~shoal.errors.PoolError` and a second release does nothing, so a stale release can
    never hand someone else's agent on.
    """

    __slots__ = (
        "_pool",
        "acquired_at",
        "agent",
        "future",
        "in_call",
        "leak_reported",
        "lease_id",
        "owned",
        "prefetched",
        "recalled",
        "released",
        "rewait",
        "stack",
        "waited_from",
    )

    def __init__(self, pool: AgentPool, agent: PooledAgent, lease_id: int, now: float) -> None:
        self._pool = pool
        self.agent = agent
        self.lease_id = lease_id
        self.acquired_at = now
        self.released = False
        self.in_call = False  # a call is outstanding under this lease
        self.stack: str | None = None  # where it was taken, when leaks are watched
        self.leak_reported = False
        # Prefetch: taken on an agent still running another call (its call queues behind it);
        # recalled when the pool takes that call back; future is the outstanding call's.
        self.prefetched = False
        self.recalled = False
        self.future: Any = None
        self.owned = False  # the pool sends its call (run/call/map), not a get_agent() holder
        self.waited_from = now  # when its caller began to wait for an agent
        # A recalled call's place in the queue: its caller waits there for another agent.
        self.rewait: Waiter | None = None

    @property
    def pool(self) -> AgentPool:
        return self._pool

    @property
    def agent_id(self) -> str:
        return self.agent.agent_id

    @property
    def handle(self) -> Any:
        """The backend's handle of the agent held."""
        return self.agent.handle

    @property
    def usage_count(self) -> int:
        return self.agent.usage_count

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the agent held."""
        return await self._pool._call(self, fn, args, kwargs, None)

    async def call(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> T:
        """:meth:`run` with a ``timeout`` for the call (the agent is killed if it expires and
        the reply has not arrived)."""
        return await self._pool._call(self, fn, args, kwargs or {}, timeout)

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Lease {self.lease_id} on {self.agent.agent_id} {state}>"
