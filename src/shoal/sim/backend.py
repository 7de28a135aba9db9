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
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from shoal.backends.base import AgentHandle, AgentSpec
from shoal.errors import AgentLost
from shoal.sim.workload import Distribution, Fixed


def serve(duration: float) -> None:
    """The simulated request: ``duration`` seconds of work.

    On a :class:`SimBackend` agent the call takes ``duration`` seconds of loop time and runs
    nothing; on a real agent it sleeps, so the same workload can drive a real pool too.
    """
    time.sleep(duration)


class SimAgent(AgentHandle):
    """A simulated agent: when it was asked for and when it became ready (loop time)."""

    __slots__ = ("born", "ready_at")

    def __init__(self, agent_id: str, born: float) -> None:
        super().__init__(agent_id)
        self.born = born
        self.ready_at: float | None = None


class SimBackend:
    """Agents that exist only as bookkeeping, on the running loop's clock.

    ``cold_start`` is how long an agent takes to become ready: a number of seconds, or a
    :class:`~shoal.sim.workload.Distribution` sampled (with ``seed``) for each start. A call
    of :func:`serve` takes its ``duration`` argument of loop time; any other function runs
    here, in this process, as on :class:`~shoal.backends.FakeBackend`. Agents never fail, and
    their ``setup`` is not run.

    ``growth`` makes starts slower while others are under way, as on a real host where they
    share CPU and disk: each agent already starting adds ``growth`` (a fraction) to a start's
    time. Process agents measured 2.09 s alone and 2.49 s with 16-19 starting: about 0.011.
    """

    name = "sim"

    def __init__(
        self, cold_start: float | Distribution = 0.0, *, seed: int = 0, growth: float = 0.0
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
        self._advance(now)
        self.starts += 1
        self.live += 1
        self.starting += 1
        self.peak_live = max(self.peak_live, self.live)
        agent = SimAgent(spec.agent_id, now)
        others = self.starting - 1  # already under way when this one began
        try:
            await asyncio.sleep(self.cold_start.sample(self._rng) * (1 + self.growth * others))
        except BaseException:
            self._advance(loop.time())
            self.starting -= 1
            self.live -= 1
            raise
        ready = loop.time()
        self._advance(ready)
        self.starting -= 1
        agent.ready_at = ready
        return agent

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
            self._advance(asyncio.get_running_loop().time())
            self.live -= 1


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
