"""The agent pool: warm agents, a FIFO queue of waiting calls, and the bookkeeping between them.

All bookkeeping is synchronous and runs on the event loop (no locks): which waiting call gets
which agent, which agents to start and which to retire. The slow parts — starting and stopping
agents — run as tasks owned by the pool, so a caller that is cancelled never interrupts them.

Assignment: an idle agent if there is one (most recently used first by default, so spare agents
age out; ``assignment="round_robin"`` takes the least recently used); otherwise the caller waits in
FIFO order and, if the pool is under ``max_size``, an agent is started for it at once — never more
agents than there are callers left uncovered by agents already starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import random
import traceback
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal, TypeVar

from shoal.backends.base import AgentHandle, AgentSpec, Backend
from shoal.clock import Clock, LoopClock
from shoal.config import PoolConfig
from shoal.errors import (
    AgentLost,
    AgentStartError,
    CallTimeout,
    ConfigError,
    PoolAtCapacity,
    PoolBroken,
    PoolClosed,
    PoolError,
    PoolTimeout,
    agent_failed,
)
from shoal.pool.agent import AgentState, PooledAgent
from shoal.pool.events import ScalingEvent
from shoal.pool.metrics import MetricsRecorder, PoolMetrics, mean, percentile

T = TypeVar("T")
log = logging.getLogger("shoal.pool")

_STARTING, _IDLE, _BUSY, _STOPPING, _STOPPED = (
    AgentState.STARTING,
    AgentState.IDLE,
    AgentState.BUSY,
    AgentState.STOPPING,
    AgentState.STOPPED,
)
_MAX_START_BACKOFF_S = 5.0
_UNDELIVERED_RETRIES = 3


def _where() -> str:
    """Where the caller took an agent: the stack outside asyncio and shoal's own frames."""
    frames = [
        f
        for f in traceback.extract_stack()[:-2]
        if "/asyncio/" not in f.filename and "/shoal/pool/" not in f.filename
    ]
    return "".join(traceback.format_list(frames[-8:]))


class _Waiter:
    __slots__ = ("enqueued_at", "fut", "live")

    def __init__(self, fut: asyncio.Future[PooledAgent], now: float) -> None:
        self.fut = fut
        self.enqueued_at = now
        self.live = True


class AgentPool:
    """A pool of warm agents (the seed's ``AgentPool``).

    ``async with pool:`` starts ``min_size`` agents and waits until they are warm; leaving the
    block closes the pool (in-flight calls get ``stop_grace`` seconds to finish). Calls go through
    :meth:`run`, :meth:`acquire` or :meth:`get_agent` / :meth:`release_agent`.

    ``backend`` defaults to local worker processes; ``setup`` runs once in every agent as it
    warms up. See :class:`~shoal.config.PoolConfig` for every option.
    """

    def __init__(
        self,
        name: str,
        image: str | None = None,
        *,
        min_size: int = 1,
        max_size: int | None = None,
        idle_timeout: float = 300.0,
        max_queue: int | None = None,
        max_uses: int | None = None,
        max_lifetime: float | None = None,
        assignment: Literal["mru", "round_robin"] = "mru",
        health_check_interval: float = 30.0,
        health_check_timeout: float = 5.0,
        start_timeout: float = 120.0,
        stop_grace: float = 10.0,
        price_per_hour: float | None = None,
        on_demand: bool = True,
        crash_loop_starts: int = 5,
        crash_loop_window: float = 60.0,
        leak_threshold: float | None = None,
        max_memory_mb: float | None = None,
        lifetime_jitter: float = 0.1,
        setup: Callable[[], object] | None = None,
        backend: Backend | None = None,
        clock: Clock | None = None,
        max_events: int = 1000,
    ) -> None:
        options: dict[str, Any] = {
            "name": name,
            "image": image,
            "min_size": min_size,
            "idle_timeout": idle_timeout,
            "max_queue": max_queue,
            "max_uses": max_uses,
            "max_lifetime": max_lifetime,
            "assignment": assignment,
            "health_check_interval": health_check_interval,
            "health_check_timeout": health_check_timeout,
            "start_timeout": start_timeout,
            "stop_grace": stop_grace,
            "price_per_hour": price_per_hour,
            "on_demand": on_demand,
            "crash_loop_starts": crash_loop_starts,
            "crash_loop_window": crash_loop_window,
            "leak_threshold": leak_threshold,
            "max_memory_mb": max_memory_mb,
            "lifetime_jitter": lifetime_jitter,
            "setup": setup,
        }
        if max_size is not None:
            options["max_size"] = max_size
        self.config = PoolConfig.build(f"pool {name!r}", options)
        if backend is None:
            from shoal.backends.process import ProcessBackend

            backend = ProcessBackend()
        self._backend = backend
        self._clock = clock or LoopClock()
        self._now: Callable[[], float] = self._clock.now
        self._agents: dict[str, PooledAgent] = {}
        self._idle: deque[PooledAgent] = deque()
        self._lifo = self.config.assignment == "mru"
        self._waiters: deque[_Waiter] = deque()
        self._n_waiting = 0
        self._n_dead = 0  # abandoned waiters still in the deque, dropped lazily
        self._counts = dict.fromkeys(AgentState, 0)
        self._target = self.config.min_size
        self._ceiling = self.config.max_size
        self._shrink = 0
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._status: Literal["new", "running", "closing", "closed"] = "new"
        self._maintenance: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._wake_at = math.inf
        self._drained: asyncio.Event | None = None
        self._closing: asyncio.Task[None] | None = None
        self._backoff = 0.0
        self._backoff_until = 0.0
        self.last_start_error: BaseException | None = None
        self._failed_starts: deque[float] = deque()
        self._broken: PoolBroken | None = None
        # Seeded by name: lifetimes are spread, yet a simulation replays identically.
        self._rng = random.Random(zlib.crc32(name.encode()))
        self._start_errors: list[BaseException] = []
        self._m = MetricsRecorder()
        self.events: deque[ScalingEvent] = deque(maxlen=max_events)

    @classmethod
    def from_config(
        cls,
        name: str,
        pool_config: Mapping[str, Any] | None = None,
        *,
        backend: Backend | None = None,
        clock: Clock | None = None,
    ) -> AgentPool:
        """Build a pool from a seed-style ``pool_config`` dict, e.g. ``{"min_size": 2}``."""
        where = f"pool {name!r} pool_config"
        if pool_config is not None and not isinstance(pool_config, Mapping):
            raise ConfigError(
                f"{where}: expected a mapping of options, got {type(pool_config).__name__}"
            )
        config = PoolConfig.build(where, {"name": name, **(pool_config or {})})
        options = config.model_dump()
        del options["name"]
        return cls(name, backend=backend, clock=clock, **options)

    # -- public API ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def min_size(self) -> int:
        return self.config.min_size

    @property
    def max_size(self) -> int:
        return self.config.max_size

    @property
    def size(self) -> int:
        """Live agents: starting, idle and busy (not those being stopped)."""
        c = self._counts
        return c[_STARTING] + c[_IDLE] + c[_BUSY]

    @property
    def target_size(self) -> int:
        """How many agents the pool keeps warm; :meth:`resize` moves it."""
        return self._target

    @property
    def started(self) -> bool:
        return self._status != "new"

    @property
    def closed(self) -> bool:
        return self._status in ("closing", "closed")

    @property
    def agents(self) -> list[PooledAgent]:
        """Every agent the pool has, in any state but stopped."""
        return list(self._agents.values())

    async def __aenter__(self) -> AgentPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start ``min_size`` agents and wait until they are warm.

        Raises :class:`AgentStartError` (and closes the pool) if any of them fails to start.
        """
        if self._status != "new":
            raise PoolError(f"pool {self.name!r} was already started")
        self._status = "running"
        loop = asyncio.get_running_loop()
        if isinstance(self._clock, LoopClock):
            self._now = loop.time  # the same clock, without a lookup on every call
        self._drained = asyncio.Event()
        self._maintenance = loop.create_task(
            self._maintain(), name=f"shoal-pool-{self.name}-maintenance"
        )
        self._start_errors = []
        try:
            starts = self._start_needed()
            if starts:
                await asyncio.wait(starts)
        except BaseException:
            await asyncio.shield(self.aclose())
            raise
        if self._start_errors:
            err = self._start_errors[0]
            await self.aclose()
            raise err

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on a warm agent and return its result.

        A call that never reached its agent (the agent died while idle) is retried on another;
        one that did reach it fails with :class:`AgentLost` and is not retried here.
        """
        return await self.call(fn, args, kwargs)

    async def call(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        acquire_timeout: float | None = None,
    ) -> T:
        """:meth:`run` with options: ``timeout`` for the call itself (the agent is killed and
        replaced when it expires) and ``acquire_timeout`` for the wait for an agent."""
        kw = kwargs or {}
        for attempt in itertools.count(1):
            agent = await self.get_agent(acquire_timeout)
            try:
                return await self._call(agent, fn, args, kw, timeout)
            except AgentLost as exc:
                if exc.delivered or attempt >= _UNDELIVERED_RETRIES or not agent_failed(exc):
                    raise
            finally:
                self._release(agent)
        raise AssertionError("unreachable")

    async def get_agent(self, timeout: float | None = None) -> PooledAgent:
        """Take an agent (the seed's ``GetAgent``); give it back with :meth:`release_agent`.

        Waits up to ``timeout`` seconds (forever if None) for one. Raises :class:`PoolTimeout`
        when the wait expires, :class:`PoolAtCapacity` when the pool is at ``max_size`` and its
        queue is full, :class:`PoolClosed` once the pool is closing.
        """
        if self._status != "running":
            raise self._not_running()
        m = self._m
        now = self._now()
        m.requests_total += 1
        m.arrivals.add(now)
        if not self._n_waiting and self._idle:
            agent = self._checkout(now)
            if agent is not None:
                m.warm_hits += 1
                m.wait_times.append(0.0)
                if self.config.leak_threshold is not None:
                    agent.acquired_stack = _where()
                return agent
        if self._broken is not None:
            raise self._broken_error()
        agent = await self._wait(now, timeout)
        if self.config.leak_threshold is not None:
            agent.acquired_stack = _where()
        return agent

    async def release_agent(self, agent: PooledAgent) -> None:
        """Give back an agent taken with :meth:`get_agent` (the seed's ``ReleaseAgent``)."""
        self._release(agent)

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: float | None = None) -> AsyncIterator[PooledAgent]:
        """``async with pool.acquire() as agent: await agent.run(fn, *args)``."""
        agent = await self.get_agent(timeout)
        try:
            yield agent
        finally:
            self._release(agent)

    async def resize(self, size: int, *, wait: bool = True, reason: str | None = None) -> None:
        """Set how many agents the pool keeps warm, within ``[min_size, max_size]``.

        Growing starts agents concurrently (and, with ``wait``, returns once they are warm).
        Shrinking retires idle agents, least recently used first; busy agents are never
        interrupted — the excess is retired as calls finish.
        """
        starts = self.set_target(size, reason or f"resize to {size}")
        if wait and starts:
            await asyncio.wait(starts)  # a cancelled caller leaves the starts running

    def set_target(
        self, size: int, reason: str, metrics: PoolMetrics | None = None
    ) -> list[asyncio.Task[None]]:
        """:meth:`resize` without waiting (the autoscaler's way in); returns the starts begun.

        The change is recorded in :attr:`events` as a ``scale`` event with ``reason`` and the
        ``metrics`` it was decided on.
        """
        lo, hi = self.config.min_size, self.config.max_size
        if isinstance(size, bool) or not isinstance(size, int) or not lo <= size <= hi:
            raise ConfigError(
                f"pool {self.name!r}: cannot resize to {size!r}; "
                f"the size must be an integer in [min_size={lo}, max_size={hi}]"
            )
        if self._status != "running":
            raise self._not_running()
        now = self._now()
        if size != self._target:
            self.events.append(ScalingEvent(now, "scale", "", self._target, size, reason, metrics))
        self._target = size
        self._shrink = max(0, self.size - size)
        while self._shrink and self._idle and not self._n_waiting:
            self._shrink -= 1
            self._retire(self._pop_idle_lru(), reason, now)
        starts = self._start_needed(reason)
        self._poke()
        return starts

    @property
    def metrics(self) -> PoolMetrics:
        """A frozen snapshot of the pool's state and recent performance."""
        return self.snapshot()

    def snapshot(self) -> PoolMetrics:
        now = self._now()
        m, c = self._m, self._counts
        size = self.size
        return PoolMetrics(
            name=self.name,
            size=size,
            starting=c[_STARTING],
            idle=c[_IDLE],
            busy=c[_BUSY],
            stopping=c[_STOPPING],
            min_size=self.config.min_size,
            max_size=self.config.max_size,
            target_size=self._target,
            requests_total=m.requests_total,
            requests_active=m.requests_active,
            requests_failed=m.requests_failed,
            queue_depth=self._n_waiting,
            oldest_wait=self._oldest_wait(now),
            avg_wait_time=mean(m.wait_times),
            avg_execution_time=mean(m.exec_times),
            wait_p50=percentile(m.wait_times, 0.50),
            wait_p99=percentile(m.wait_times, 0.99),
            utilization_rate=c[_BUSY] / size if size else 0.0,
            throughput=m.completions.rate(now),
            arrival_rate=m.arrivals.rate(now),
            warm_hits=m.warm_hits,
            cold_starts=m.cold_starts,
            agents_started=m.agents_started,
            agents_retired=m.agents_retired,
            start_failures=m.start_failures,
            time=now,
        )

    @property
    def broken(self) -> bool:
        """True while agents keep failing to start (see :class:`PoolBroken`)."""
        return self._broken is not None

    def _broken_error(self) -> PoolBroken:
        assert self._broken is not None
        err = PoolBroken(str(self._broken), self.state_line())
        err.__cause__ = self._broken.__cause__
        return err

    @property
    def ceiling(self) -> int:
        """The most agents the pool may have: ``max_size``, or less under a cost cap."""
        return self._ceiling

    def set_ceiling(self, size: int, reason: str) -> None:
        """Lower (or restore) the most agents the pool may start, on demand or otherwise."""
        size = max(self.config.min_size, min(size, self.config.max_size))
        if size != self._ceiling:
            self._ceiling = size
            self.note(f"at most {size} agents: {reason}")
            if self._target > size:
                self.set_target(size, reason)

    def note(self, reason: str) -> None:
        """Record something a person should know about the pool's size, without changing it."""
        size = self._target
        self.events.append(ScalingEvent(self._now(), "note", "", size, size, reason))

    def _oldest_wait(self, now: float) -> float:
        waiters = self._waiters
        while waiters and not waiters[0].live:
            waiters.popleft()
            self._n_dead -= 1
        return now - waiters[0].enqueued_at if waiters else 0.0

    def state_line(self) -> str:
        """The pool's state in one line, as carried by its errors."""
        c = self._counts
        queue = "" if self.config.max_queue is None else f"/{self.config.max_queue}"
        return (
            f"[pool {self.name!r}: size {self.size}/{self.config.max_size} "
            f"({c[_BUSY]} busy, {c[_IDLE]} idle, {c[_STARTING]} starting, "
            f"{c[_STOPPING]} stopping) | waiting {self._n_waiting}{queue}]"
        )

    def __repr__(self) -> str:
        c = self._counts
        return (
            f"<AgentPool {self.name!r} [agents: {c[_BUSY]} busy, {c[_IDLE]} idle, "
            f"{c[_STARTING]} starting | queue: {self._n_waiting}]>"
        )

    async def aclose(self) -> None:
        """Close in stages: refuse new calls, fail waiting ones, stop idle agents, give busy
        ones ``stop_grace`` seconds to finish their calls, then kill what is left.

        The closing runs in a task of the pool's own: cancelling ``aclose()`` does not stop it,
        and a second ``aclose()`` waits for the same one.
        """
        if self._status == "new":
            self._status = "closed"
            return
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._close(), name=f"shoal-pool-{self.name}-close"
            )
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._status = "closing"
        closed = PoolClosed(f"pool {self.name!r} closed while the call waited for an agent")
        while (waiter := self._next_waiter()) is not None:
            waiter.fut.set_exception(closed)
        if self._maintenance is not None:
            self._maintenance.cancel()
        now = self._now()
        while self._idle:
            self._retire(self._idle.popleft(), "pool closing", now)
        for agent in list(self._agents.values()):
            if agent.state is _IDLE:  # held aside for a health check
                self._retire(agent, "pool closing", now)
        if self._counts[_BUSY] and self._drained is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.config.stop_grace)
        for agent in list(self._agents.values()):
            if agent.state is _BUSY:
                self._retire(agent, "pool closing: call outlived stop_grace", now, kill=True)
        while self._tasks:
            tasks = list(self._tasks)
            for t in tasks:
                if t.get_name().startswith("shoal-start"):
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._maintenance is not None:
            await asyncio.gather(self._maintenance, return_exceptions=True)
        self._status = "closed"

    # -- calls --------------------------------------------------------------------------------

    async def _call(
        self,
        agent: PooledAgent,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        timeout: float | None = None,
    ) -> T:
        if agent.pool is not self or agent.state is not _BUSY:
            raise PoolError(
                f"agent {agent.agent_id} is not held from pool {self.name!r} "
                f"(it is {agent.state.value}); take one with get_agent() or acquire()"
            )
        if agent.retire_reason is not None:
            raise AgentLost(
                f"agent {agent.agent_id} cannot take another call: {agent.retire_reason}; "
                "release it and take another",
                agent.agent_id,
                delivered=False,
            )
        m = self._m
        m.requests_active += 1
        started = self._now()
        try:
            if timeout is None:
                result: T = await self._backend.call(agent.handle, fn, args, kwargs)
            else:
                deadline = asyncio.timeout(timeout)
                try:
                    async with deadline:
                        result = await self._backend.call(agent.handle, fn, args, kwargs)
                except TimeoutError:
                    if not deadline.expired():
                        raise
                    agent.retire_reason = f"call ran past its timeout of {timeout} s"
                    raise CallTimeout(
                        f"call to {getattr(fn, '__qualname__', fn)!r} on agent {agent.agent_id} "
                        f"ran past its timeout of {timeout} s; the agent was killed and is "
                        "replaced",
                        agent.agent_id,
                    ) from None
        except AgentLost:
            m.requests_failed += 1
            agent.retire_reason = "agent lost"
            raise
        except Exception:
            m.requests_failed += 1
            raise
        except BaseException:
            # Cancelled mid-call: the agent is still running the abandoned call, so it
            # cannot be trusted with the next one. Kill it now, not at release.
            agent.retire_reason = "its call was cancelled"
            self._spawn(self._backend.kill(agent.handle), f"shoal-kill-{agent.agent_id}")
            raise
        finally:
            m.requests_active -= 1
            now = self._now()
            m.exec_times.append(now - started)
            m.completions.add(now)
        return result

    async def _wait(self, now: float, timeout: float | None) -> PooledAgent:
        c = self._counts
        if (
            self.config.max_queue is not None
            and self._n_waiting >= self.config.max_queue
            and c[_STARTING] + c[_IDLE] + c[_BUSY] + c[_STOPPING] >= self._ceiling
        ):
            raise PoolAtCapacity(
                f"pool {self.name!r} is at capacity: max_size={self.config.max_size} agents "
                f"are in use and max_queue={self.config.max_queue} callers are waiting; "
                "raise max_size or max_queue, or retry later.",
                self.state_line(),
            )
        fut: asyncio.Future[PooledAgent] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(fut, now)
        self._waiters.append(waiter)
        self._n_waiting += 1
        if self._idle or c[_STARTING] + c[_IDLE] + c[_BUSY] + c[_STOPPING] < self._ceiling:
            self._pump()
        try:
            if timeout is None:
                agent = await fut
            else:
                async with asyncio.timeout(timeout):
                    agent = await fut
        except TimeoutError:
            self._abandon(waiter)
            raise PoolTimeout(
                f"no agent of pool {self.name!r} became free within {timeout} s;",
                self.state_line(),
            ) from None
        except BaseException:
            self._abandon(waiter)
            raise
        m = self._m
        done = self._now()
        m.wait_times.append(done - now)
        if agent.ready_at is not None and agent.ready_at >= now and agent.usage_count == 0:
            m.cold_starts += 1
        else:
            m.warm_hits += 1
        return agent

    def _abandon(self, waiter: _Waiter) -> None:
        """The waiting caller is gone: free its queue slot, or the agent it was just handed."""
        fut = waiter.fut
        if waiter.live:
            waiter.live = False
            self._n_waiting -= 1
            self._n_dead += 1
            fut.cancel()
            if self._n_dead > 1024 and self._n_dead * 2 > len(self._waiters):
                # Many callers gave up while nobody was served: keep the queue's memory bounded.
                self._waiters = deque(w for w in self._waiters if w.live)
                self._n_dead = 0
        elif fut.done() and not fut.cancelled() and fut.exception() is None:
            self._release(fut.result(), used=False)

    # -- bookkeeping (synchronous: no awaits below this line until the tasks) --------------------

    def _set_state(self, agent: PooledAgent, state: AgentState) -> None:
        c = self._counts
        c[agent.state] -= 1
        c[state] += 1
        agent.state = state

    def _checkout(self, now: float) -> PooledAgent | None:
        """Take an idle agent for a call, retiring the ones found stale on the way."""
        idle = self._idle
        cfg = self.config
        while idle:
            agent = idle.pop() if self._lifo else idle.popleft()
            if agent.expires_at <= now:
                self._retire(agent, f"reached max_lifetime={cfg.max_lifetime} s", now)
                continue
            if agent.last_used + cfg.idle_timeout <= now and self.size > self._target:
                self._retire(agent, f"idle past idle_timeout={cfg.idle_timeout} s", now)
                continue
            self._set_state(agent, _BUSY)
            agent.acquired_at = now
            return agent
        return None

    def _next_waiter(self) -> _Waiter | None:
        """The oldest caller still waiting; skips (and uncounts) any already cancelled."""
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            if w.live:
                w.live = False
                self._n_waiting -= 1
                if not w.fut.done():  # cancelled, its task not yet told: not a taker
                    return w
            else:
                self._n_dead -= 1
        return None

    def _pump(self) -> None:
        """Hand idle agents to waiting callers, then start what demand and the floor ask for."""
        now = self._now()
        while self._n_waiting and self._idle:
            agent = self._checkout(now)
            if agent is None:
                break
            waiter = self._next_waiter()
            if waiter is None:  # cannot happen: _n_waiting counts live waiters
                self._set_state(agent, _IDLE)
                self._reinsert_idle(agent)
                break
            waiter.fut.set_result(agent)
        while self._shrink and self._idle and not self._n_waiting and self.size > self._target:
            self._shrink -= 1
            self._retire(self._pop_idle_lru(), f"resize to {self._target}", now)
        self._start_needed()

    def _start_needed(self, reason: str | None = None) -> list[asyncio.Task[None]]:
        if self._status != "running":
            return []
        c = self._counts
        size = c[_STARTING] + c[_IDLE] + c[_BUSY]
        room = self._ceiling - size - c[_STOPPING]
        if room <= 0:
            return []
        now = self._now()
        if now < self._backoff_until:
            return []
        demand = self._n_waiting - c[_STARTING] if self.config.on_demand else 0
        floor = self._target - size
        if self._broken is not None and not c[_STARTING]:
            floor = max(floor, 1)  # keep probing, one start per backoff, to notice recovery
        n = min(max(demand, floor), room)
        if n <= 0:
            return []
        why = reason or (
            f"{self._n_waiting} caller(s) waiting, {c[_STARTING]} agent(s) starting"
            if demand >= floor
            else f"below target size {self._target}"
        )
        return [self._start_one(why, now) for _ in range(n)]

    def _start_one(self, reason: str, now: float) -> asyncio.Task[None]:
        agent = PooledAgent(self, f"{self.name}-{next(self._ids)}", now)
        before = self.size
        self._agents[agent.agent_id] = agent
        self._counts[_STARTING] += 1
        self._event("start", agent, before, reason, now)
        return self._spawn(self._start(agent), f"shoal-start-{agent.agent_id}")

    def _push_idle(self, agent: PooledAgent) -> None:
        if not self._idle or agent.expires_at < self._wake_at:
            self._poke()  # a deadline earlier than the one maintenance sleeps until
        self._idle.append(agent)

    def _pop_idle_lru(self) -> PooledAgent:
        return self._idle.popleft()

    def _release(self, agent: PooledAgent, *, used: bool = True) -> None:
        if agent.pool is not self:
            raise PoolError(f"agent {agent.agent_id} belongs to pool {agent.pool.name!r}")
        if agent.state is not _BUSY:
            if agent.state in (_STOPPING, _STOPPED):
                return  # retired while held (pool closing, agent lost)
            raise PoolError(f"agent {agent.agent_id} is not held (it is {agent.state.value})")
        now = self._now()
        if used:
            agent.usage_count += 1
            agent.last_used = now
            agent.last_checked = now  # it just answered: as good as a health check
        agent.acquired_at = None
        reason = self._retire_reason(agent, now)
        if reason is not None:
            self._retire(agent, reason, now, kill=agent.retire_reason is not None)
            self._pump()
            return
        waiter = self._next_waiter()
        if waiter is not None:
            agent.acquired_at = now
            waiter.fut.set_result(agent)
            return
        self._set_state(agent, _IDLE)
        self._push_idle(agent)

    def _retire_reason(self, agent: PooledAgent, now: float) -> str | None:
        cfg = self.config
        handle: AgentHandle | None = agent.handle
        if handle is not None and not handle.alive:
            return f"agent lost (exit code {handle.exit_code})"
        if agent.retire_reason is not None:
            return agent.retire_reason
        if self._status != "running":
            return "pool closing"
        if cfg.max_uses is not None and agent.usage_count >= cfg.max_uses:
            return f"served max_uses={cfg.max_uses} calls"
        if agent.expires_at <= now:
            return f"reached max_lifetime={cfg.max_lifetime} s"
        if cfg.max_memory_mb is not None:
            rss = self._memory_mb(agent)
            if rss is not None and rss > cfg.max_memory_mb:
                return f"memory {rss:.0f} MiB above max_memory_mb={cfg.max_memory_mb:.0f}"
        if self._shrink and not self._n_waiting and self.size > self._target:
            self._shrink -= 1
            return f"resize to {self._target}"
        return None

    def _retire(self, agent: PooledAgent, reason: str, now: float, *, kill: bool = False) -> None:
        """Take an idle or busy agent out of service and stop it in the background."""
        before = self.size
        self._set_state(agent, _STOPPING)
        self._m.agents_retired += 1
        handle: AgentHandle | None = agent.handle
        lost = handle is not None and not handle.alive
        self._event("lost" if lost else "retire", agent, before, reason, now)
        self._spawn(self._stop(agent, kill), f"shoal-stop-{agent.agent_id}")
        if self._status == "closing" and not self._counts[_BUSY] and self._drained is not None:
            self._drained.set()

    def _remove(self, agent: PooledAgent) -> None:
        self._set_state(agent, _STOPPED)
        self._agents.pop(agent.agent_id, None)

    def _on_agent_exit(self, agent: PooledAgent, handle: AgentHandle) -> None:
        """The backend noticed an agent die on its own."""
        if agent.state is _IDLE:
            with contextlib.suppress(ValueError):
                self._idle.remove(agent)
            now = self._now()
            self._retire(agent, f"agent died while idle (exit code {handle.exit_code})", now)
            self._pump()
        # A busy agent's call fails with AgentLost and the caller's release retires it; a
        # starting agent's start fails.

    def _event(self, kind: str, agent: PooledAgent, before: int, reason: str, now: float) -> None:
        self.events.append(ScalingEvent(now, kind, agent.agent_id, before, self.size, reason))

    def _not_running(self) -> PoolError:
        if self._status == "new":
            return PoolError(
                f"pool {self.name!r} is not started; use 'async with pool:' or 'await pool.start()'"
            )
        return PoolClosed(f"pool {self.name!r} is closed and takes no more calls")

    # -- tasks --------------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _poke(self) -> None:
        """Wake the maintenance task: a deadline may have moved closer."""
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _start(self, agent: PooledAgent) -> None:
        cfg = self.config
        spec = AgentSpec(
            pool=self.name,
            agent_id=agent.agent_id,
            image=cfg.image,
            setup=cfg.setup,
            on_exit=functools.partial(self._on_agent_exit, agent),
        )
        try:
            agent.handle = await asyncio.wait_for(self._backend.start(spec), cfg.start_timeout)
        except asyncio.CancelledError:
            self._start_failed(agent, None)
            raise
        except BaseException as exc:
            self._start_failed(agent, exc)
            return
        now = self._now()
        self._m.agents_started += 1
        self._backoff = 0.0
        self.last_start_error = None
        self._failed_starts.clear()
        if self._broken is not None:
            self._broken = None
            self.note("recovered: an agent started")
            log.warning("pool %r recovered: an agent started", self.name)
        if cfg.max_lifetime is not None:
            jitter = cfg.lifetime_jitter * self._rng.random()
            agent.expires_at = now + cfg.max_lifetime * (1.0 - jitter)
        agent.ready_at = agent.last_used = agent.last_checked = now
        if self._status != "running":
            self._retire(agent, "pool closing", now)
            return
        self._set_state(agent, _IDLE)
        self._push_idle(agent)
        self._pump()

    def _start_failed(self, agent: PooledAgent, exc: BaseException | None) -> None:
        now = self._now()
        before = self.size
        self._remove(agent)
        if exc is None:
            self._event("start_failed", agent, before, "start cancelled", now)
            return
        if isinstance(exc, TimeoutError):
            err: BaseException = AgentStartError(
                f"pool {self.name!r}: agent {agent.agent_id} was not warm within "
                f"start_timeout={self.config.start_timeout} s",
                agent.agent_id,
            )
        elif isinstance(exc, AgentStartError):
            err = exc
        else:
            err = AgentStartError(
                f"pool {self.name!r}: agent {agent.agent_id} failed to start: "
                f"{type(exc).__name__}: {exc}",
                agent.agent_id,
            )
            err.__cause__ = exc
        self._m.start_failures += 1
        self.last_start_error = err
        self._start_errors.append(err)
        self._event("start_failed", agent, before, str(err), now)
        self._backoff = min(max(self._backoff * 2, 0.1), _MAX_START_BACKOFF_S)
        self._backoff_until = now + self._backoff
        cfg = self.config
        failures = self._failed_starts
        failures.append(now)
        while failures and failures[0] <= now - cfg.crash_loop_window:
            failures.popleft()
        if self._broken is None and len(failures) >= cfg.crash_loop_starts:
            self._broken = PoolBroken(
                f"pool {self.name!r} is broken: {len(failures)} agent starts failed within "
                f"{cfg.crash_loop_window:.0f} s (crash_loop_starts={cfg.crash_loop_starts}); "
                f"the last: {err}. It keeps retrying and recovers when a start succeeds."
            )
            self._broken.__cause__ = err
            self.note(f"broken: {len(failures)} failed starts in {cfg.crash_loop_window:.0f} s")
            log.error("%s", self._broken)
        c = self._counts
        if self._broken is not None:
            # Nobody waits on a crash loop: every waiting caller learns at once.
            while (waiter := self._next_waiter()) is not None:
                waiter.fut.set_exception(self._broken_error())
        elif self._n_waiting > c[_STARTING] + c[_BUSY]:
            # A caller that nothing in flight can serve gets the error rather than waiting.
            waiter = self._next_waiter()
            if waiter is not None:
                waiter.fut.set_exception(err)
        self._poke()
        self._pump()

    async def _stop(self, agent: PooledAgent, kill: bool) -> None:
        try:
            if agent.handle is not None:
                if kill:
                    await self._backend.kill(agent.handle)
                else:
                    try:
                        await self._backend.stop(agent.handle, self.config.stop_grace)
                    except Exception:
                        await self._backend.kill(agent.handle)
        finally:
            self._remove(agent)
            self._pump()

    async def _maintain(self) -> None:
        """Retire agents idle past ``idle_timeout``, health-check idle agents, retry the floor.

        Sleeps until the earliest of those deadlines; :meth:`_poke` wakes it when one moves
        closer.
        """
        loop = asyncio.get_running_loop()
        while True:
            now = self._now()
            self._reap(now)
            self._health_check(now)
            self._pump()
            deadline = self._next_deadline(now)
            self._wake_at = deadline
            self._wake = loop.create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - now)):
                    await self._wake
            self._wake = None
            self._wake_at = math.inf

    def _next_deadline(self, now: float) -> float:
        cfg = self.config
        deadline = now + cfg.health_check_interval
        for agent in self._idle:
            deadline = min(deadline, agent.last_checked + cfg.health_check_interval)
            deadline = min(deadline, agent.expires_at)
        if self._idle and self.size > self._target:
            deadline = min(deadline, self._idle[0].last_used + cfg.idle_timeout)
        if self._backoff_until > now:
            deadline = min(deadline, self._backoff_until)
        if cfg.leak_threshold is not None:
            for agent in self._agents.values():
                if agent.state is _BUSY and not agent.leak_reported and agent.acquired_at:
                    deadline = min(deadline, agent.acquired_at + cfg.leak_threshold)
        return deadline

    def _reap(self, now: float) -> None:
        cfg = self.config
        idle = self._idle
        while idle and self.size > self._target and idle[0].last_used + cfg.idle_timeout <= now:
            agent = idle.popleft()
            self._retire(agent, f"idle for {now - agent.last_used:.1f} s (idle_timeout)", now)
        if cfg.max_lifetime is not None:
            for agent in [a for a in idle if a.expires_at <= now]:
                idle.remove(agent)
                self._retire(agent, f"reached max_lifetime={cfg.max_lifetime} s", now)
        if cfg.leak_threshold is not None:
            self._report_leaks(now)

    def _report_leaks(self, now: float) -> None:
        threshold = self.config.leak_threshold
        assert threshold is not None
        for agent in self._agents.values():
            held = agent.acquired_at
            if agent.state is not _BUSY or held is None or agent.leak_reported:
                continue
            if held + threshold <= now:
                agent.leak_reported = True
                where = agent.acquired_stack or "(unknown)"
                log.warning(
                    "pool %r: agent %s has been held for %.1f s (leak_threshold=%s s); "
                    "it was taken at:\n%s",
                    self.name,
                    agent.agent_id,
                    now - held,
                    threshold,
                    where,
                )
                self.note(f"agent {agent.agent_id} held {now - held:.0f} s: possible leak")

    def _memory_mb(self, agent: PooledAgent) -> float | None:
        measure = getattr(self._backend, "memory_bytes", None)
        if measure is None or agent.handle is None:
            return None
        rss = measure(agent.handle)
        return None if rss is None else rss / 2**20

    def _health_check(self, now: float) -> None:
        """Check each idle agent due for it, in a task of its own: one slow check holds up
        neither the others nor the rest of maintenance."""
        interval = self.config.health_check_interval
        for agent in [a for a in self._idle if a.last_checked + interval <= now]:
            self._idle.remove(agent)
            agent.reserved = True
            self._spawn(self._check_one(agent), f"shoal-check-{agent.agent_id}")

    async def _check_one(self, agent: PooledAgent) -> None:
        try:
            ok: bool | BaseException = await self._check(agent)
        except Exception as exc:
            ok = exc
        agent.reserved = False
        now = self._now()
        agent.last_checked = now
        if agent.state is not _IDLE:
            return  # died meanwhile and was already retired
        if ok is True and self._status == "running":
            self._reinsert_idle(agent)
        else:
            why = "failed its health check" if ok is False else f"health check error: {ok}"
            self._retire(agent, why, now, kill=True)
        self._pump()

    async def _check(self, agent: PooledAgent) -> bool:
        try:
            async with asyncio.timeout(self.config.health_check_timeout):
                return await self._backend.check_health(agent.handle)
        except TimeoutError:
            return False

    def _reinsert_idle(self, agent: PooledAgent) -> None:
        """Put an agent back among the idle ones, keeping them ordered by last use."""
        idle = self._idle
        i = len(idle)
        while i and idle[i - 1].last_used > agent.last_used:
            i -= 1
        if not idle:
            self._poke()
        idle.insert(i, agent)
