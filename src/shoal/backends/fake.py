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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from shoal.backends.base import AgentHandle, AgentSpec
from shoal.errors import AgentLost, AgentStartError

CRASH_EXIT_CODE = -9


class FakeAgent(AgentHandle):
    """A fake agent. ``running_since`` is the loop time its current call began (None when it
    runs none); ``frozen_since`` the loop time :meth:`FakeBackend.freeze` froze it."""

    __slots__ = ("calls", "died", "frozen_since", "running_since", "spec", "thawed")

    def __init__(self, spec: AgentSpec) -> None:
        super().__init__(spec.agent_id)
        self.spec = spec
        self.calls = 0
        self.died: asyncio.Event = asyncio.Event()
        self.running_since: float | None = None
        self.frozen_since: float | None = None
        self.thawed = asyncio.Event()
        self.thawed.set()


class FakeBackend:
    """Agents that live in this process.

    ``start_time`` is how long a start takes (on the loop's clock), ``call_time`` how long each
    call takes before ``fn`` runs. Script faults with :meth:`fail_next_starts`,
    :meth:`crash_next_calls` and :meth:`hang_next_calls`, or kill an agent from outside with
    :meth:`crash`. Liveness is scripted too: :meth:`freeze` stops an agent as SIGSTOP would, and
    :meth:`unresponsive_for` then grows on the loop's clock while it holds a call.
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

    def freeze(self, agent_id: str) -> None:
        """Stop the agent as SIGSTOP would: its call does not finish and it shows no sign of
        life (:meth:`unresponsive_for` grows) until :meth:`thaw` or its death."""
        agent = self.agents[agent_id]
        if agent.frozen_since is None:
            agent.frozen_since = asyncio.get_running_loop().time()
            agent.thawed.clear()

    def thaw(self, agent_id: str) -> None:
        """Let a frozen agent go on."""
        agent = self.agents[agent_id]
        agent.frozen_since = None
        agent.thawed.set()

    def unresponsive_for(self, handle: FakeAgent, now: float) -> float:
        """Seconds the agent has been frozen during its current call; 0 when it is not frozen
        or runs no call (an unfrozen fake agent is always seen alive)."""
        if handle.running_since is None or handle.frozen_since is None:
            return 0.0
        return max(0.0, now - max(handle.running_since, handle.frozen_since))

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

    def call(
        self,
        handle: FakeAgent,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> asyncio.Future[Any]:
        if not handle.alive:
            raise AgentLost(f"agent {handle.agent_id} is gone", handle.agent_id, delivered=False)
        fault = self._call_faults.popleft() if self._call_faults else None
        handle.calls += 1
        self.calls_by_agent[handle.agent_id] += 1
        loop = asyncio.get_running_loop()
        if fault is None and not self.call_time and handle.thawed.is_set():
            # Nothing to wait for: run it now, as a call that takes no time would.
            fut: asyncio.Future[Any] = loop.create_future()
            try:
                result = fn(*args, **kwargs)
            except AgentLost as exc:
                exc.remote = True  # raised by the user's code: about another agent
                fut.set_exception(exc)
                return fut
            except BaseException as exc:
                fut.set_exception(exc)
                return fut
            if not inspect.isawaitable(result):
                fut.set_result(result)
                return fut
            return loop.create_task(self._awaited(handle, result))
        return loop.create_task(self._run(handle, fault, fn, args, kwargs))

    async def _awaited(self, handle: FakeAgent, result: Awaitable[Any]) -> Any:
        handle.running_since = asyncio.get_running_loop().time()
        try:
            return await result
        except AgentLost as exc:
            exc.remote = True
            raise
        finally:
            handle.running_since = None

    async def _run(
        self,
        handle: FakeAgent,
        fault: str | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> Any:
        handle.running_since = asyncio.get_running_loop().time()
        try:
            if fault == "hang":
                await handle.died.wait()
            elif fault == "crash":
                await asyncio.sleep(self.call_time / 2)
                self._die(handle, CRASH_EXIT_CODE)
            elif self.call_time:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(handle.died.wait(), self.call_time)
            if handle.alive and not handle.thawed.is_set():
                await _first(handle.thawed, handle.died)
            if not handle.alive:
                raise AgentLost(
                    f"agent {handle.agent_id} died with exit code {handle.exit_code} during a call",
                    handle.agent_id,
                    exit_code=handle.exit_code,
                )
            try:
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
            except AgentLost as exc:
                exc.remote = True  # raised by the user's code: about another agent, not this one
                raise
            return result
        finally:
            handle.running_since = None

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


async def _first(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
