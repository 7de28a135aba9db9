"""The backend protocol: how an agent is started, called, checked, stopped and killed.

A backend knows nothing of pools. The pool calls these five methods and nothing else, so a local
process, a container and a Ray actor differ only here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class AgentHandle:
    """A backend's reference to one running agent.

    ``exit_code`` is None while the agent lives; backends set it when they notice it is gone.
    """

    __slots__ = ("agent_id", "exit_code", "pid")

    def __init__(self, agent_id: str, pid: int | None = None) -> None:
        self.agent_id = agent_id
        self.pid = pid
        self.exit_code: int | None = None

    @property
    def alive(self) -> bool:
        return self.exit_code is None

    def __repr__(self) -> str:
        state = "alive" if self.alive else f"exited {self.exit_code}"
        return f"<{type(self).__name__} {self.agent_id} pid={self.pid} {state}>"


@dataclass(frozen=True)
class AgentSpec:
    """What a backend needs to start one agent.

    ``setup`` runs once inside the agent as it warms up. ``on_exit`` is called (on the event
    loop) if the agent dies on its own, so the pool can replace an idle agent without waiting
    for its next health check. ``heartbeat_interval`` (seconds; None for none) is how often an
    agent that can shows it is alive while it runs a call. ``max_concurrency`` is how many
    calls the pool may send it before the first is answered. ``placement`` is the pool's say in
    where its agents run and what they reserve (the pool's ``placement`` option; what keys a
    backend understands is its own business: see :class:`~shoal.backends.ray.RayBackend`).
    """

    pool: str
    agent_id: str
    image: str | None = None
    setup: Callable[[], object] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    on_exit: Callable[[AgentHandle], None] | None = None
    heartbeat_interval: float | None = None
    placement: Mapping[str, Any] = field(default_factory=dict)
    max_concurrency: int = 1  # calls the agent must be able to run at once


class Backend(Protocol):
    """Five operations; everything else about an agent is the pool's business.

    - ``start`` returns once the agent is warm (its ``setup`` has run), or raises
      :class:`~shoal.errors.AgentStartError`. Cancelling it leaves nothing running.
    - ``call`` sends ``fn(*args, **kwargs)`` to the agent and returns at once a future for its
      outcome; it is not a coroutine, so the pool can tell a reply that has arrived (the
      future is done) from one still outstanding when a deadline or a cancel lands. The
      future's result is the function's return value. Its exception is one of:

      * the function's own exception, with the remote traceback as ``__cause__`` (an
        :class:`~shoal.errors.AgentLost` raised by the user's code has ``remote=True``: it
        says nothing of this agent);
      * :class:`~shoal.errors.AgentLost` if the agent died or broke the protocol (a reply to
        a call that is not outstanding) before answering — ``delivered=False`` when the call
        certainly never reached it;
      * :class:`~shoal.errors.SerializationError` if the reply cannot be decoded here (any
        exception while unpickling, ``BaseException`` included); the agent is unharmed.

      ``call`` may also raise :class:`~shoal.errors.SerializationError` (the call cannot be
      encoded; the agent is unharmed) or ``AgentLost(delivered=False)`` directly. Every call
      carries an id that its reply echoes. Cancelling the future abandons the call: its late
      reply is ignored, and the pool kills an agent whose call it abandoned.
    - ``check_health`` answers whether an idle agent is alive and responsive.
    - ``stop`` asks the agent to exit, and kills it if it has not within ``grace`` seconds.
    - ``kill`` ends it at once. Both return once the agent is gone; both are idempotent.
    """

    name: str

    async def start(self, spec: AgentSpec) -> AgentHandle: ...

    def call(
        self,
        handle: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> asyncio.Future[Any]: ...

    async def check_health(self, handle: Any) -> bool: ...

    async def stop(self, handle: Any, grace: float) -> None: ...

    async def kill(self, handle: Any) -> None: ...


@runtime_checkable
class ReportsLiveness(Protocol):
    """A backend whose agents show they are alive while they run a call (heartbeats, CPU)."""

    def unresponsive_for(self, handle: Any, now: float) -> float:
        """Seconds (on the loop's clock) since the agent last showed any sign of life: a
        heartbeat, a reply, or progress of its CPU time. 0 for an agent running no call."""
        ...


@runtime_checkable
class SizesPools(Protocol):
    """A backend that knows how many agents it could run (a cluster's capacity): a pool given
    no ``max_size`` takes its default from here rather than from this machine's CPUs."""

    async def default_max_size(self, placement: Mapping[str, Any]) -> int | None:
        """How many agents with ``placement`` to allow by default; None for no opinion."""
        ...


@runtime_checkable
class MeasuresMemory(Protocol):
    """A backend that can read an agent's resident memory."""

    def memory_bytes(self, handle: Any) -> int | None: ...


@runtime_checkable
class Pipelines(Protocol):
    """A backend whose one-call agents take calls in the order sent, so that the pool may send
    an agent its next call while it runs one (prefetch), and take that call back unstarted.

    ``pipelines(handle)`` says whether this agent does; ``recall(handle, future)`` asks it not
    to start the call behind ``future`` (pending or cancelled) if it has not: the call then
    fails with :class:`~shoal.errors.CallRecalled` or ends as it would have; True if it is
    known at once that it will not start. If the agent dies, a call queued behind another
    fails with ``AgentLost(delivered=False)``.
    """

    def pipelines(self, handle: Any) -> bool: ...

    def recall(self, handle: Any, future: Any) -> bool: ...
