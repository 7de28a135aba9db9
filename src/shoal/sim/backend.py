"""A simulated backend: agents that cost a cold start to become ready and calls that only take
time, on the event loop's clock.

On :class:`~shoal.clock.VirtualTimeLoop` a pool on this backend replays hours of traffic in
seconds; it is what ``shoal simulate`` runs the production pool and autoscaler on. It keeps the
books a simulation needs — agent-seconds (live agents integrated over time), the part of them
spent starting, busy seconds, the most agents alive at once — and nothing per request beyond
one float addition, because it sits on the hot path of a million calls.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from shoal.backends.base import AgentHandle, AgentSpec
from shoal.errors import AgentLost, AgentStartError
from shoal.sim.workload import Distribution, Fixed


def serve(duration: float, tag: int | None = None) -> None:
    """The simulated request: ``duration`` seconds of work.

    On a :class:`SimBackend` agent the call takes ``duration`` seconds of loop time and runs
    nothing; on a real agent it sleeps, so the same workload can drive a real pool too.
    ``tag`` names the request to the backend's ``on_served`` (which agent answered it).
    """
    time.sleep(duration)


class SimAgent(AgentHandle):
    """A simulated agent: when it was asked for and when it became ready (loop time).

    ``calls`` holds its calls in flight when its backend ``tracks_calls`` (None otherwise), so
    that killing it fails them, as a reclaimed machine would.
    """

    __slots__ = ("born", "calls", "on_exit", "ready_at")

    def __init__(self, agent_id: str, born: float) -> None:
        super().__init__(agent_id)
        self.born = born
        self.ready_at: float | None = None
        self.calls: set[asyncio.Future[Any]] | None = None
        self.on_exit: Callable[[Any], None] | None = None


class SimBackend:
    """Agents that exist only as bookkeeping, on the running loop's clock.

    ``cold_start`` is how long an agent takes to become ready: a number of seconds, or a
    :class:`~shoal.sim.workload.Distribution` sampled (with ``seed``) for each start. A call
    of :func:`serve` takes its ``duration`` argument of loop time; any other function runs
    here, in this process, as on :class:`~shoal.backends.FakeBackend`. Agents never fail on
    their own, and their ``setup`` is not run.

    With ``tracks_calls`` (the simulator's placements) the backend also keeps its live agents
    in :attr:`agents` and each agent's calls in flight, so that :meth:`kill_at` (a spot
    reclaim) and :meth:`outage` (a region down) can end agents with their calls failing, and
    ``on_live`` (the change in live agents, the loop time) hears every change in the live
    count, for a cost meter; ``on_served`` hears the ``tag`` of each :func:`serve` call that
    finished here.

    ``growth`` makes starts slower while others are under way, as on a real host where they
    share CPU and disk: each agent already starting adds ``growth`` (a fraction) to a start's
    time. Process agents measured 2.09 s alone and 2.49 s with 16-19 starting: about 0.011.
    """

    name = "sim"

    def __init__(
        self,
        cold_start: float | Distribution = 0.0,
        *,
        seed: int = 0,
        tracks_calls: bool = False,
        on_live: Callable[[int, float], None] | None = None,
        on_served: Callable[[int], None] | None = None,
        growth: float = 0.0,
    ) -> None:
        self.cold_start: Distribution = (
            Fixed(float(cold_start)) if isinstance(cold_start, int | float) else cold_start
        )
        self.growth = growth
        self._rng = random.Random(seed)
        self.starts = 0
        self.live = 0  # agents asked for and not yet stopped: starting, idle or busy
        self.starting = 0
        self.peak_live = 0
        self.busy_seconds = 0.0
        self._since = 0.0
        self._live_area = 0.0
        self._starting_area = 0.0
        self.tracks_calls = tracks_calls
        self.agents: dict[str, SimAgent] = {}  # live agents, with tracks_calls
        self._on_live = on_live
        self._on_served = on_served
        self._down: list[tuple[float, float]] = []  # outage windows (loop time)
        self.kills = 0  # agents killed by kill_at or an outage

    # -- the books -------------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Integrate live and starting agents up to ``now``."""
        dt = now - self._since
        if dt > 0:
            self._live_area += self.live * dt
            self._starting_area += self.starting * dt
        self._since = now

    def agent_seconds(self, now: float) -> float:
        """Live agents (starting ones included) integrated over time, up to ``now``."""
        return self._live_area + self.live * max(0.0, now - self._since)

    def starting_seconds(self, now: float) -> float:
        """The part of :meth:`agent_seconds` spent starting."""
        return self._starting_area + self.starting * max(0.0, now - self._since)

    # -- the protocol ----------------------------------------------------------------------------

    async def start(self, spec: AgentSpec) -> SimAgent:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._down and self.down(now):
            raise AgentStartError(f"the simulated region of agent {spec.agent_id} is down")
        self._advance(now)
        self.starts += 1
        self.live += 1
        self.starting += 1
        self.peak_live = max(self.peak_live, self.live)
        if self._on_live is not None:
            self._on_live(1, now)
        agent = SimAgent(spec.agent_id, now)
        others = self.starting - 1  # already under way when this one began
        try:
            await asyncio.sleep(self.cold_start.sample(self._rng) * (1 + self.growth * others))
            if self._down and self.down(loop.time()):
                raise AgentStartError(f"the simulated region of agent {spec.agent_id} went down")
        except BaseException:
            self._advance(loop.time())
            self.starting -= 1
            self.live -= 1
            if self._on_live is not None:
                self._on_live(-1, loop.time())
            raise
        ready = loop.time()
        self._advance(ready)
        self.starting -= 1
        agent.ready_at = ready
        if self.tracks_calls:
            agent.calls = set()
            agent.on_exit = spec.on_exit
            self.agents[agent.agent_id] = agent
        return agent

    # -- what the simulator does to agents --------------------------------------------------------

    def ready_ids(self) -> list[str]:
        """The ids of the live, ready agents (with ``tracks_calls``)."""
        return list(self.agents)

    def kill_at(self, agent_ids: tuple[str, ...] | None, deadline: float) -> None:
        """Kill these agents (None: all live now) at loop time ``deadline``: a spot reclaim."""
        loop = asyncio.get_running_loop()
        ids = tuple(self.agents) if agent_ids is None else agent_ids
        loop.call_at(deadline, self._reclaim, ids)

    def _reclaim(self, ids: tuple[str, ...]) -> None:
        for agent_id in ids:
            agent = self.agents.get(agent_id)
            if agent is not None:
                self.kills += 1
                self._end(agent, -9)
                if agent.on_exit is not None:
                    agent.on_exit(agent)  # the pool hears of it, as from a real backend

    def outage(self, start: float, end: float) -> None:
        """Between loop times ``start`` and ``end`` starts fail, and at ``start`` every live
        agent is killed: the region is down."""
        self._down.append((start, end))
        asyncio.get_running_loop().call_at(start, self._blackout)

    def down(self, now: float) -> bool:
        return any(a <= now < b for a, b in self._down)

    def _blackout(self) -> None:
        self._reclaim(tuple(self.agents))

    def call(
        self,
        handle: SimAgent,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> asyncio.Future[Any]:
        if handle.exit_code is not None:
            raise AgentLost(f"agent {handle.agent_id} is gone", handle.agent_id, delivered=False)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if fn is serve:
            # A plain future and a timer, no task: the simulator runs millions of these.
            duration = args[0] if args else kwargs["duration"]
            self.busy_seconds += duration
            calls = handle.calls
            if calls is not None:
                calls.add(fut)
                fut.add_done_callback(calls.discard)
                tag = kwargs.get("tag", args[1] if len(args) > 1 else None)
                if tag is not None and self._on_served is not None:
                    fut.add_done_callback(functools.partial(_served, self._on_served, tag))
            loop.call_later(duration, _resolve, fut)
            return fut
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            fut.set_exception(_as_remote(exc))
            return fut
        if inspect.isawaitable(result):
            return loop.create_task(_awaited(result))
        fut.set_result(result)
        return fut

    async def check_health(self, handle: SimAgent) -> bool:
        return handle.exit_code is None

    async def stop(self, handle: SimAgent, grace: float) -> None:
        self._end(handle, 0)

    async def kill(self, handle: SimAgent) -> None:
        self._end(handle, -9)

    def _end(self, handle: SimAgent, exit_code: int) -> None:
        if handle.exit_code is None:
            handle.exit_code = exit_code
            now = asyncio.get_running_loop().time()
            self._advance(now)
            self.live -= 1
            if self._on_live is not None:
                self._on_live(-1, now)
            if self.agents.pop(handle.agent_id, None) is not None and handle.calls:
                for fut in list(handle.calls):
                    if not fut.done():
                        fut.set_exception(
                            AgentLost(
                                f"agent {handle.agent_id} was reclaimed",
                                handle.agent_id,
                                delivered=True,
                            )
                        )


def _served(on_served: Callable[[int], None], tag: int, fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        on_served(tag)


def _resolve(fut: asyncio.Future[Any]) -> None:
    if not fut.done():  # a cancelled call stays cancelled
        fut.set_result(None)


def _as_remote(exc: BaseException) -> BaseException:
    if isinstance(exc, AgentLost):
        exc.remote = True  # raised by the user's code: about another agent, not this one
    return exc


async def _awaited(result: Awaitable[Any]) -> Any:
    try:
        return await result
    except AgentLost as exc:
        exc.remote = True
        raise
