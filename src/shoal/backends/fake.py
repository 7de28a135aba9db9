"""A scriptable in-process backend for tests: slow starts, failed starts, crashes and hangs.

Calls run in this process on the event loop, so with :class:`~shoal.clock.VirtualTimeLoop` a
pool's whole life — cold starts, long calls, idle timeouts — plays out in no real time. The
backend records what happened (agents started, calls per agent, the most agents alive at once)
for tests to assert on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

from shoal.backends.base import AgentHandle, AgentSpec
from shoal.errors import AgentLost, AgentStartError

CRASH_EXIT_CODE = -9


class FakeAgent(AgentHandle):
    __slots__ = ("calls", "died", "spec")

    def __init__(self, spec: AgentSpec) -> None:
        super().__init__(spec.agent_id)
        self.spec = spec
        self.calls = 0
        self.died: asyncio.Event = asyncio.Event()


class FakeBackend:
    """Agents that live in this process.

    ``start_time`` is how long a start takes (on the loop's clock), ``call_time`` how long each
    call takes before ``fn`` runs. Script faults with :meth:`fail_next_starts`,
    :meth:`crash_next_calls` and :meth:`hang_next_calls`, or kill an agent from outside with
    :meth:`crash`.
    """

    name = "fake"

    def __init__(self, *, start_time: float = 0.0, call_time: float = 0.0) -> None:
        self.start_time = start_time
        self.call_time = call_time
        self.agents: dict[str, FakeAgent] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.calls_by_agent: Counter[str] = Counter()
        self.health_checks = 0
        self.max_alive = 0
        self._start_faults: deque[BaseException] = deque()
        self._call_faults: deque[str] = deque()
        self._unhealthy: set[str] = set()
        self.memory: dict[str, int] = {}  # scripted resident memory per agent, in bytes

    # -- scripting ----------------------------------------------------------------------------

    def fail_next_starts(self, n: int = 1, error: BaseException | None = None) -> None:
        """Make the next ``n`` starts raise (an :class:`AgentStartError` by default)."""
        for _ in range(n):
            self._start_faults.append(error or AgentStartError("scripted start failure"))

    def crash_next_calls(self, n: int = 1) -> None:
        """Make the next ``n`` calls kill their agent midway (after ``call_time / 2``)."""
        self._call_faults.extend(["crash"] * n)

    def hang_next_calls(self, n: int = 1) -> None:
        """Make the next ``n`` calls never return until their agent is killed."""
        self._call_faults.extend(["hang"] * n)

    def memory_bytes(self, handle: FakeAgent) -> int | None:
        """What :attr:`memory` says for the agent (scripted), else None."""
        return self.memory.get(handle.agent_id)

    def make_unhealthy(self, agent_id: str) -> None:
        """The agent stays alive but fails its health checks."""
        self._unhealthy.add(agent_id)

    def crash(self, agent_id: str, exit_code: int = CRASH_EXIT_CODE) -> None:
        """Kill an agent from outside, as the OOM killer would."""
        agent = self.agents[agent_id]
        self._die(agent, exit_code)
        if agent.spec.on_exit is not None:
            agent.spec.on_exit(agent)

    @property
    def alive(self) -> list[str]:
        return [a for a, h in self.agents.items() if h.alive]

    # -- the protocol -------------------------------------------------------------------------

    async def start(self, spec: AgentSpec) -> FakeAgent:
        if self.start_time:
            await asyncio.sleep(self.start_time)
        if self._start_faults:
            raise self._start_faults.popleft()
        if spec.setup is not None:
            try:
                result = spec.setup()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                raise AgentStartError(f"setup failed in agent {spec.agent_id}: {exc}") from exc
        agent = FakeAgent(spec)
        self.agents[spec.agent_id] = agent
        self.started.append(spec.agent_id)
        self.max_alive = max(self.max_alive, len(self.alive))
        return agent

    async def call(
        self,
        handle: FakeAgent,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> Any:
        if not handle.alive:
            raise AgentLost(f"agent {handle.agent_id} is gone", handle.agent_id, delivered=False)
        fault = self._call_faults.popleft() if self._call_faults else None
        handle.calls += 1
        self.calls_by_agent[handle.agent_id] += 1
        if fault == "hang":
            await handle.died.wait()
        elif fault == "crash":
            await asyncio.sleep(self.call_time / 2)
            self._die(handle, CRASH_EXIT_CODE)
        elif self.call_time:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(handle.died.wait(), self.call_time)
        if not handle.alive:
            raise AgentLost(
                f"agent {handle.agent_id} died with exit code {handle.exit_code} during a call",
                handle.agent_id,
                exit_code=handle.exit_code,
            )
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def check_health(self, handle: FakeAgent) -> bool:
        self.health_checks += 1
        return handle.alive and handle.agent_id not in self._unhealthy

    async def stop(self, handle: FakeAgent, grace: float) -> None:
        if handle.alive:
            self._die(handle, 0)

    async def kill(self, handle: FakeAgent) -> None:
        if handle.alive:
            self._die(handle, CRASH_EXIT_CODE)

    def _die(self, handle: FakeAgent, exit_code: int) -> None:
        handle.exit_code = exit_code
        handle.died.set()
        self.stopped.append(handle.agent_id)
