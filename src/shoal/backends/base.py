"""The backend protocol: how an agent is started, called, checked, stopped and killed.

A backend knows nothing of pools. The pool calls these five methods and nothing else, so a local
process, a container and a Ray actor differ only here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


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
    for its next health check.
    """

    pool: str
    agent_id: str
    image: str | None = None
    setup: Callable[[], object] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    on_exit: Callable[[AgentHandle], None] | None = None


class Backend(Protocol):
    """Five operations; everything else about an agent is the pool's business.

    - ``start`` returns once the agent is warm (its ``setup`` has run), or raises
      :class:`~shoal.errors.AgentStartError`. Cancelling it leaves nothing running.
    - ``call`` runs ``fn(*args, **kwargs)`` on the agent and returns its result or raises its
      exception (with the remote traceback as ``__cause__``). It raises
      :class:`~shoal.errors.AgentLost` if the agent dies first, and
      :class:`~shoal.errors.SerializationError` if something cannot be shipped — in that case the
      agent is unharmed. The pool sends one call at a time to an agent, and kills an agent whose
      call was cancelled.
    - ``check_health`` answers whether an idle agent is alive and responsive.
    - ``stop`` asks the agent to exit, and kills it if it has not within ``grace`` seconds.
    - ``kill`` ends it at once. Both return once the agent is gone; both are idempotent.
    """

    name: str

    async def start(self, spec: AgentSpec) -> AgentHandle: ...

    async def call(
        self,
        handle: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> Any: ...

    async def check_health(self, handle: Any) -> bool: ...

    async def stop(self, handle: Any, grace: float) -> None: ...

    async def kill(self, handle: Any) -> None: ...
