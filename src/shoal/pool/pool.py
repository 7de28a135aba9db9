"""The agent pool: the async shell around :class:`~shoal.pool.state.PoolState`.

Every decision — which waiting caller gets which agent, which agents to start, retire or check —
is taken synchronously by the state, which answers with actions. This shell performs them: it
resolves waiters' futures, runs starts, stops and health checks as tasks the pool owns (so a
cancelled caller never interrupts them), sends calls to the backend and reads their outcome.

Assignment: an idle agent if there is one (most recently used first by default, so spare agents
age out; ``assignment="round_robin"`` takes the least recently used); otherwise the caller waits in
FIFO order and, if the pool is under ``max_size``, an agent is started for it at once — never more
agents than there are callers left uncovered by agents already starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from shoal.backends.base import (
    AgentSpec,
    Backend,
    MeasuresMemory,
    Pipelines,
    ReportsLiveness,
    SizesPools,
)
from shoal.clock import Clock, LoopClock
from shoal.config import PoolConfig, default_max_size
from shoal.errors import (
    AgentLost,
    CallRecalled,
    CallTimeout,
    ConfigError,
    PoolError,
    PoolTimeout,
    Preempted,
    ResourcesUnavailable,
)
from shoal.pool import leaks
from shoal.pool.agent import AgentState, Lease, PooledAgent
from shoal.pool.metrics import PoolMetrics
from shoal.pool.placement import Placement, PreemptionNotice
from shoal.pool.placing import LOST_TOGETHER_S
from shoal.pool.state import (
    Assign,
    Check,
    Kill,
    Log,
    PoolState,
    Recall,
    Reject,
    Start,
    Stop,
)
from shoal.pool.waitqueue import Waiter

T = TypeVar("T")
log = logging.getLogger("shoal.pool")
UNDELIVERED_RETRIES = 3  # tries of a call that never reached its agent (runner's too)
PREEMPTED_RETRIES = 10  # re-queues of one call after preemptions, before its caller hears


class AgentPool:
    """A pool of warm agents (the seed's ``AgentPool``).

    ``async with pool:`` starts ``min_size`` agents and waits until they are warm; leaving the
    block closes the pool (in-flight calls get ``stop_grace`` seconds to finish). Calls go through
    :meth:`run`, :meth:`acquire` or :meth:`get_agent` / :meth:`release_agent`.

    ``backend`` defaults to local worker processes; ``setup`` runs once in every agent as it
    warms up. See :class:`~shoal.config.PoolConfig` for every option.

    ``placements`` (or ``regions``, a mapping of region to placement keys) say where agents
    live: each a backend in a region, on on-demand or spot capacity, at a price, with a size
    limit and a round trip from the caller (:class:`~shoal.pool.placement.Placement`). Without
    them the pool has one on-demand placement on ``backend``.
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
        heartbeat_timeout: float | None = 30.0,
        max_concurrency: int = 1,
        start_timeout: float = 120.0,
        stop_grace: float = 10.0,
        price_per_hour: float | None = None,
        on_demand: bool | Literal["eager"] = True,
        crash_loop_starts: int = 5,
        crash_loop_window: float = 60.0,
        leak_threshold: float | None = None,
        max_memory_mb: float | None = None,
        lifetime_jitter: float = 0.1,
        setup: Callable[[], object] | None = None,
        placement: Mapping[str, Any] | None = None,
        backend: Backend | None = None,
        clock: Clock | None = None,
        max_events: int = 1000,
        placements: Sequence[Placement | Mapping[str, Any]] | None = None,
        regions: Mapping[str, Mapping[str, Any]] | None = None,
        rtt_target_ms: float | None = None,
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
            "heartbeat_timeout": heartbeat_timeout,
            "max_concurrency": max_concurrency,
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
            "placement": None if placement is None else dict(placement),
        }
        if max_size is not None:
            options["max_size"] = max_size
        elif isinstance(backend, SizesPools) and isinstance(min_size, int):
            # Until start() asks the backend (a cluster), min_size is no error against this
            # machine's CPU count.
            options["max_size"] = max(default_max_size(), min_size)
        if placements is not None:
            options["placements"] = placements
        if regions is not None:
            options["regions"] = regions
        if rtt_target_ms is not None:
            options["rtt_target_ms"] = rtt_target_ms
        self.config = PoolConfig.build(f"pool {name!r}", options)
        self._max_size_given = max_size is not None
        if backend is None:
            from shoal.backends.process import ProcessBackend

            backend = ProcessBackend()
        self._backend = backend
        self._state = PoolState(self.config, owner=self, max_events=max_events)
        # What each placement's backend can report, looked up once (a runtime-checkable
        # protocol's isinstance is slow): by placement name.
        self._liveness: dict[str, ReportsLiveness] = {}
        self._memory: dict[str, MeasuresMemory] = {}
        self._pipelines: dict[str, Pipelines] = {}
        for site in self._state.placer.order:
            b = backend if site.placement.backend is None else site.placement.backend
            if isinstance(b, ReportsLiveness):
                self._liveness[site.name] = b
            if isinstance(b, MeasuresMemory):
                self._memory[site.name] = b
            if isinstance(b, Pipelines):
                self._pipelines[site.name] = b
        self._clock = clock or LoopClock()
        self._now: Callable[[], float] = self._clock.now
        # Prefetch needs every placement's agents to take calls in order and give them back.
        self._state.prefetch = self.config.max_concurrency == 1 and all(
            site.name in self._pipelines for site in self._state.placer.order
        )
        self.events = self._state.events
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starting: dict[PooledAgent, asyncio.Task[BaseException | None]] = {}
        self._maintenance: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._drained: asyncio.Event | None = None
        self._closing: asyncio.Task[None] | None = None
        self._watchers: list[asyncio.Task[None]] = []

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
        if "max_size" not in (pool_config or {}):
            options["max_size"] = None  # the default: the backend's, if it has one
        return cls(name, backend=backend, clock=clock, **options)

    # -- what it is -------------------------------------------------------------------------------

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
        """Live agents: starting, idle, checking and busy (not those being stopped)."""
        return self._state.size

    @property
    def target_size(self) -> int:
        """How many agents the pool keeps warm; :meth:`resize` moves it."""
        return self._state.target

    @property
    def ceiling(self) -> int:
        """The most agents the pool may have: ``max_size``, or less under a cost cap."""
        return self._state.ceiling

    @property
    def placements(self) -> list[Placement]:
        """Where the pool's agents live: those configured, or the one on its own backend."""
        return [site.placement for site in self._state.placer.order]

    @property
    def cost_per_hour(self) -> float:
        """$ per hour of the agents the pool has now (starting and stopping ones included)."""
        return self._state.placer.spend_rate

    @property
    def cost_usd(self) -> float:
        """$ spent on agents since the pool started."""
        return self._state.placer.spent(self._now())

    @property
    def unit_price(self) -> float:
        """$ per agent-hour at the pool's cheapest placement."""
        return self._state.placer.cheapest

    def set_cost_ceiling(self, dollars_per_hour: float | None) -> None:
        """A hard ceiling on the pool's spend rate (Σ agents x their placement's price,
        starting ones included): a start that would cross it is refused, on demand or not."""
        if dollars_per_hour is not None and not dollars_per_hour > 0:
            raise ConfigError(
                f"pool {self.name!r}: cost ceiling {dollars_per_hour!r} $/h must be > 0"
            )
        self._state.placer.cost_ceiling = dollars_per_hour
        if dollars_per_hour is not None:
            self.note(f"cost ceiling {dollars_per_hour:g} $/h")

    def set_spot(
        self, prefer_spot: bool, *, spot_fraction: float = 0.8, on_demand_base: int = 0
    ) -> None:
        """With ``prefer_spot``, keep the first ``on_demand_base`` agents on demand and about
        ``spot_fraction`` of the rest on the pool's spot placements."""
        if not 0 <= spot_fraction <= 1 or on_demand_base < 0:
            raise ConfigError(
                f"pool {self.name!r}: spot_fraction={spot_fraction!r} must be in [0, 1] and "
                f"on_demand_base={on_demand_base!r} >= 0"
            )
        self._state.placer.set_spot(prefer_spot, spot_fraction, on_demand_base)
        self._state.poke = True
        self._flush()

    def preempt(self, notice: PreemptionNotice) -> list[PooledAgent]:
        """Act on a preemption notice: the agents it names take no new calls, replacements
        start at once (on spot elsewhere if there is room, else on demand), idle ones stop now,
        and a call still running at ``notice.deadline`` is cancelled and re-queued at the head
        of the queue. Returns the agents it reached. Each placement's ``preemption`` source
        calls this too."""
        if not isinstance(notice, PreemptionNotice):
            raise PoolError(f"preempt() takes a PreemptionNotice, not {type(notice).__name__}")
        hit = self._state.preempt(notice, self._now())
        self._flush()
        return hit

    @property
    def started(self) -> bool:
        return self._state.status != "new"

    @property
    def closed(self) -> bool:
        return self._state.status in ("closing", "closed")

    @property
    def broken(self) -> bool:
        """True while agents keep failing to start (see :class:`~shoal.errors.PoolBroken`)."""
        return self._state.breaker.broken is not None

    @property
    def agents(self) -> list[PooledAgent]:
        """Every agent the pool has, in any state but stopped."""
        return list(self._state.agents.values())

    @property
    def metrics(self) -> PoolMetrics:
        """A frozen snapshot of the pool's state and recent performance."""
        return self.snapshot()

    def snapshot(self) -> PoolMetrics:
        return self._state.snapshot(self._now())

    def state_line(self) -> str:
        """The pool's state in one line, as carried by its errors."""
        return self._state.state_line()

    def __repr__(self) -> str:
        c = self._state.counts
        return (
            f"<AgentPool {self.name!r} [agents: {c[AgentState.BUSY]} busy, "
            f"{c[AgentState.IDLE]} idle, {c[AgentState.STARTING]} starting | "
            f"queue: {len(self._state.queue)}]>"
        )

    # -- life of the pool -------------------------------------------------------------------------

    async def __aenter__(self) -> AgentPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start ``min_size`` agents and wait until they are warm.

        Raises :class:`~shoal.errors.AgentStartError` (and closes the pool) if any of them
        fails to start — except that a pool for which the cluster has room for some agents
        only (:class:`~shoal.errors.ResourcesUnavailable`) starts with those, and says so.
        """
        st = self._state
        if not self._max_size_given and isinstance(self._backend, SizesPools):
            size = await self._backend.default_max_size(self.config.placement or {})
            if size is not None:
                st.adopt_max_size(size, "as many as the backend can hold", self._now())
                self.config = st.config
        st.open(self._now())
        loop = asyncio.get_running_loop()
        if isinstance(self._clock, LoopClock):
            self._now = loop.time  # the same clock, without a lookup on every call
        self._drained = asyncio.Event()
        self._maintenance = loop.create_task(
            self._maintain(), name=f"shoal-pool-{self.name}-maintenance"
        )
        for placement in self.placements:
            if placement.preemption is not None:
                self._watchers.append(
                    loop.create_task(
                        self._watch(placement), name=f"shoal-pool-{self.name}-{placement.name}"
                    )
                )
        try:
            starts = self._flush()
            errors = [e for e in await asyncio.gather(*starts) if e is not None]
            if errors and st.judges_placements:
                errors = await self._failed_over(errors)
            if self.size > 0:  # fewer agents than asked, for want of room: warned, and it serves
                errors = [e for e in errors if not isinstance(e, ResourcesUnavailable)]
        except BaseException:
            await asyncio.shield(self.aclose())
            raise
        if errors:
            await self.aclose()
            raise errors[0]

    async def _failed_over(self, errors: list[BaseException]) -> list[BaseException]:
        """Starts failed on one placement at :meth:`start`: the pool started agents elsewhere
        in their place; wait for those, and forget the errors if they make ``min_size``."""
        for _ in range(2 * len(self.placements)):
            pending = list(self._starting.values())
            if not pending:
                break
            errors += [e for e in await asyncio.gather(*pending) if e is not None]
        return [] if self.size >= self.config.min_size else errors

    async def aclose(self) -> None:
        """Close in stages: refuse new calls, fail waiting ones, stop idle agents, give busy
        ones ``stop_grace`` seconds to finish their calls, then kill what is left.

        The closing runs in a task of the pool's own: cancelling ``aclose()`` does not stop it,
        and a second ``aclose()`` waits for the same one.
        """
        if self._state.status == "new":
            self._state.closed()
            return
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._close(), name=f"shoal-pool-{self.name}-close"
            )
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        st = self._state
        st.close(self._now())
        self._flush()
        if self._maintenance is not None:
            self._maintenance.cancel()
        for watcher in self._watchers:
            watcher.cancel()
        if st.busy and self._drained is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.config.stop_grace)
        st.close_busy(self._now())
        self._flush()
        for task in self._starting.values():
            task.cancel()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._maintenance is not None:
            await asyncio.gather(self._maintenance, return_exceptions=True)
        await asyncio.gather(*self._watchers, return_exceptions=True)
        st.closed()

    # -- calls ------------------------------------------------------------------------------------

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, T]:
        """Run ``fn(*args, **kwargs)`` on a warm agent and return its result (await it).

        A call that never reached its agent (the agent died while idle) is retried on another;
        one that did reach it fails with :class:`~shoal.errors.AgentLost` and is not retried.
        """
        # The coroutine of call() itself: one frame less for every call.
        return self.call(fn, args, kwargs)

    async def call(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        acquire_timeout: float | None = None,
        on_preempt: Literal["requeue", "fail"] = "requeue",
    ) -> T:
        """:meth:`run` with options: ``timeout`` for the call itself (the agent is killed and
        replaced when it expires) and ``acquire_timeout`` for the wait for an agent.

        A call cancelled by a preemption (:class:`~shoal.errors.Preempted`: its agent was
        reclaimed at the notice's deadline, or cancelled early because it would outlast it,
        while running it) is re-queued at the head of the queue and runs again on another
        agent, up to ``PREEMPTED_RETRIES`` times; ``on_preempt="fail"`` raises it instead (for
        a call that must not run twice). A call lost with its placement (the placement went
        down with it) counts as preempted. A call that kills its own agent fails with
        :class:`~shoal.errors.AgentLost`, notice or not.

        Without either timeout the call may be prefetched (see the README's "Prefetch"): queued
        on a busy agent; taken back unstarted, it waits again in the place it had."""
        kw = kwargs or {}
        # Without a timeout the call may be prefetched: queued on a busy agent, to start when
        # its call ends. Not with an acquire_timeout either: its wait would end unseen there.
        # Taken back unstarted (CallRecalled), it waits again in the place it had.
        prefetchable = timeout is None and acquire_timeout is None
        lost = preempted = 0
        again: Waiter | None = None
        while True:
            if again is not None:
                lease = await self._rewait(again)
            else:
                now = self._now()
                got = self._take(now, prefetchable, preempted > 0, owned=True)
                if got is None:
                    # (_wait() inline: one coroutine less for every call that waits)
                    waiter = self._enqueue(now, prefetchable, preempted > 0, owned=True)
                    try:
                        if acquire_timeout is None:
                            got = await waiter.token
                        else:
                            async with asyncio.timeout(acquire_timeout):
                                got = await waiter.token
                    except BaseException as exc:
                        got = self._wait_ended(exc, waiter, acquire_timeout)
                    if self.config.leak_threshold is not None:
                        got.stack = leaks.where_taken()
                lease = got
            again = None
            used = True
            try:
                return await self._call(lease, fn, args, kw, timeout)
            except CallRecalled:
                used = False
                again = lease.rewait
            except Preempted:
                preempted += 1
                if on_preempt == "fail" or preempted > PREEMPTED_RETRIES:
                    raise
            except AgentLost as exc:
                lost += 1
                if exc.delivered or exc.remote or lost >= UNDELIVERED_RETRIES:
                    raise
                again = lease.rewait  # queued behind a call on an agent that died: not run
            finally:
                self._release(lease, used)
                if again is None and lease.rewait is not None:
                    self._withdraw(lease.rewait)  # recalled too late: it ran where it was

    async def map(
        self, fn: Callable[[Any], T], items: Iterable[Any], *, chunksize: int | None = None
    ) -> list[T]:
        """``[fn(x) for x in items]`` on the pool's agents, in order, ``chunksize`` items per
        call (by default, as ``multiprocessing.Pool.map`` does, about four chunks per agent).

        One call per chunk amortises the round trip over many items: for small items this is
        the fastest way through the pool. The first exception raised by ``fn`` is raised here
        once every chunk has finished (a chunk's remaining items are not run after it).
        """
        from shoal._chunk import run_chunk

        seq = list(items)
        if chunksize is None:
            chunksize = max(1, math.ceil(len(seq) / (4 * max(1, self.size, self.target_size))))
        elif chunksize < 1:
            raise ConfigError(f"pool {self.name!r}: map(chunksize={chunksize!r}) must be >= 1")
        chunks = [seq[i : i + chunksize] for i in range(0, len(seq), chunksize)]
        done = await asyncio.gather(
            *(self.call(run_chunk, (fn, chunk)) for chunk in chunks), return_exceptions=True
        )
        out: list[T] = []
        for part in done:
            if isinstance(part, BaseException):
                raise part
            out.extend(part)
        return out

    async def get_agent(self, timeout: float | None = None, *, head: bool = False) -> Lease:
        """Take an agent (the seed's ``GetAgent``): a :class:`Lease` to run calls on and give
        back with :meth:`release_agent`.

        Waits up to ``timeout`` seconds (forever if None) for one. Raises
        :class:`~shoal.errors.PoolTimeout` when the wait expires,
        :class:`~shoal.errors.PoolAtCapacity` when ``max_queue`` callers wait already and no
        agent can be started, :class:`~shoal.errors.PoolBroken` in a crash loop and
        :class:`~shoal.errors.PoolClosed` once the pool is closing. ``head`` waits ahead of
        everyone: for a call re-queued after a preemption.
        """
        return await self._get(timeout, False, head=head, owned=False)

    async def _get(
        self, timeout: float | None, prefetchable: bool, *, head: bool = False, owned: bool
    ) -> Lease:
        """A lease, for ``call()`` (``owned``: the pool sends its one call) or for a holder."""
        now = self._now()
        lease = self._take(now, prefetchable, head, owned=owned)
        if lease is None:
            lease = await self._wait(now, timeout, prefetchable, head, owned=owned)
            if self.config.leak_threshold is not None:
                lease.stack = leaks.where_taken()
        return lease

    def _take(self, now: float, prefetchable: bool, head: bool, *, owned: bool) -> Lease | None:
        """A lease at once if an agent is free and nobody waits ahead (see _get), else None."""
        st = self._state
        lease = st.request(now, head=head, owned=owned) if head else st.request(now, owned=owned)
        if lease is not None and self.config.leak_threshold is not None:
            lease.stack = leaks.where_taken()
        return lease

    async def _wait(
        self,
        now: float,
        timeout: float | None,
        prefetchable: bool = False,
        head: bool = False,
        *,
        owned: bool,
    ) -> Lease:
        waiter = self._enqueue(now, prefetchable, head, owned=owned)
        fut: asyncio.Future[Lease] = waiter.token
        try:
            if timeout is None:
                return await fut
            async with asyncio.timeout(timeout):
                return await fut
        except BaseException as exc:
            return self._wait_ended(exc, waiter, timeout)

    def _enqueue(self, now: float, prefetchable: bool, head: bool, *, owned: bool) -> Waiter:
        """Queue a caller (``owned``: for ``call()``, which sends its one call itself); its
        waiter's token is the future that the lease will come in."""
        fut: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        waiter = Waiter(now, fut, prefetchable, owned=owned)
        self._state.enqueue(waiter, now, head=head)
        self._flush()
        return waiter

    def _wait_ended(self, exc: BaseException, waiter: Waiter, timeout: float | None) -> Lease:
        """The wait for an agent ended in ``exc`` (called from its except block): the lease
        if one came in time, else leave the queue and raise."""
        fut: asyncio.Future[Lease] = waiter.token
        if fut.done() and not fut.cancelled():
            if fut.exception() is not None:
                raise  # the pool failed this waiter (closing, broken, start error)
            # An agent was handed over in the same pass as the deadline or the cancel.
            if isinstance(exc, TimeoutError):
                return fut.result()  # it arrived in time
            self._release(fut.result(), False)
            raise
        self._state.abandon(waiter)
        fut.cancel()
        if isinstance(exc, TimeoutError):
            raise PoolTimeout(
                f"no agent of pool {self.name!r} became free within {timeout} s;",
                self.state_line(),
            ) from None
        raise

    async def _rewait(self, waiter: Waiter) -> Lease:
        """Wait for another agent in the place a recalled call kept in the queue."""
        fut: asyncio.Future[Lease] = waiter.token
        try:
            lease = await fut
        except BaseException:
            self._withdraw(waiter)
            raise
        if self.config.leak_threshold is not None:
            lease.stack = leaks.where_taken()
        return lease

    def _withdraw(self, waiter: Waiter) -> None:
        """The caller no longer needs the place ``waiter`` holds: leave the queue, or give
        back unused the agent already handed to it."""
        fut: asyncio.Future[Lease] = waiter.token
        handed = not self._state.abandon(waiter) and fut.done() and not fut.cancelled()
        if handed and fut.exception() is None:
            self._release(fut.result(), False)
        fut.cancel()
        if self._state.actions:
            self._flush()

    async def release_agent(self, lease: Lease) -> None:
        """Give back an agent taken with :meth:`get_agent` (the seed's ``ReleaseAgent``).

        Releasing a lease twice does nothing: its agent may already serve someone else.
        """
        if not isinstance(lease, Lease):
            raise PoolError(
                f"release_agent() takes the Lease that get_agent() returned, not "
                f"{type(lease).__name__}"
            )
        if lease.pool is not self:
            raise PoolError(
                f"lease on agent {lease.agent_id} belongs to pool {lease.pool.name!r}, "
                f"not {self.name!r}"
            )
        self._release(lease, True)

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: float | None = None) -> AsyncIterator[Lease]:
        """``async with pool.acquire() as agent: await agent.run(fn, *args)``."""
        lease = await self.get_agent(timeout)
        try:
            yield lease
        finally:
            self._release(lease, True)

    def _release(self, lease: Lease, used: bool) -> None:
        st = self._state
        rss_mb = None
        agent = lease.agent
        if self._memory and self.config.max_memory_mb is not None and agent.alive:
            memory = self._memory.get(agent.placement.name)
            rss = memory.memory_bytes(agent.handle) if memory is not None else None
            rss_mb = None if rss is None else rss / 2**20
        st.release(lease, self._now(), used=used, rss_mb=rss_mb)
        if st.actions or st.poke:
            self._flush()

    async def _call(
        self,
        lease: Lease,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        timeout: float | None,
    ) -> T:
        st = self._state
        agent = st.begin_call(lease, self._now())
        if st.poke or st.actions:
            self._flush()  # maintenance must start watching this call's liveness; prefetch
        started = self._now()
        failed = True
        fut: asyncio.Future[Any] | None = None
        try:
            if lease.recalled:  # taken back before it was even sent
                raise CallRecalled(f"call on agent {agent.agent_id} was taken back unsent")
            backend = agent.placement.backend
            if backend is None:
                backend = self._backend
            fut = backend.call(agent.handle, fn, args, kwargs)
            lease.future = fut
            if timeout is None:
                result: T = await fut
            else:
                await asyncio.wait((fut,), timeout=timeout)
                if not fut.done():
                    fut.cancel()
                    why = f"call ran past its timeout of {timeout} s"
                    st.call_failed(agent, why, kill=True)
                    raise CallTimeout(
                        f"call to {getattr(fn, '__qualname__', fn)!r} on agent "
                        f"{agent.agent_id} {why}; the agent was killed and is replaced",
                        agent.agent_id,
                    )
                result = fut.result()  # the reply wins over a deadline in the same pass
            failed = False
            return result
        except CallRecalled:
            failed = False
            raise
        except AgentLost as exc:
            if not exc.remote:
                st.call_failed(agent, agent.retire_reason or "agent lost", kill=True)
                if exc.delivered and _reclaimed(agent, self._now()):
                    raise Preempted(
                        f"agent {agent.agent_id} on {agent.placement.name} was preempted while "
                        f"running {getattr(fn, '__qualname__', fn)!r}; the call did not finish",
                        agent.agent_id,
                        delivered=True,
                    ) from exc
                if exc.delivered and st.judges_placements:
                    await self._went_down_with_placement(agent, fn, exc)
            raise
        except asyncio.CancelledError:
            pipelines = self._pipelines.get(agent.placement.name)
            if (
                pipelines is not None
                and fut is not None
                and (lease.recalled or lease in st.queued)
                and pipelines.recall(agent.handle, fut)
            ):
                raise  # queued, never started and now never will: the agent stays in service
            if fut is not None and not fut.done():
                fut.cancel()
            if fut is None or fut.cancelled():
                # Cancelled before the reply came: the agent is still running the abandoned
                # call, so it cannot be trusted with the next one. Kill it now.
                st.call_failed(agent, "its call was cancelled", kill=True)
            raise  # (a reply already in: the agent is idle and stays warm)
        finally:
            st.end_call(lease, started, self._now(), failed)
            if st.actions:
                self._flush()

    async def _went_down_with_placement(
        self, agent: PooledAgent, fn: Callable[..., Any], exc: AgentLost
    ) -> None:
        """``agent`` was lost in its call: wait until agents lost with it would have been heard
        of, then raise :class:`Preempted` if its placement went down with it (the call runs
        again elsewhere, as a preempted one) and return if it died alone."""
        st = self._state
        if agent.lost_at is None:
            st.agent_lost(agent, self._now())
            self._flush()
        await asyncio.sleep(LOST_TOGETHER_S)
        if st.lost_with_placement(agent):
            raise Preempted(
                f"agent {agent.agent_id} on {agent.placement.name} was lost with its placement "
                f"while running {getattr(fn, '__qualname__', fn)!r}; the call did not finish",
                agent.agent_id,
                delivered=True,
            ) from exc

    # -- size -------------------------------------------------------------------------------------

    async def resize(self, size: int, *, wait: bool = True, reason: str | None = None) -> None:
        """Set how many agents the pool keeps warm, within ``[min_size, max_size]``.

        Growing starts agents concurrently (and, with ``wait``, returns once they are warm).
        Shrinking retires idle agents, least recently used first; busy agents are never
        interrupted — the excess is retired as calls finish.
        """
        starts = self.set_target(size, reason or f"resize to {size}")
        if wait and starts:
            await asyncio.wait(starts)  # a cancelled caller leaves the starts running
            for task in starts:  # a size the cluster cannot hold is not a success
                if not task.cancelled() and isinstance(task.result(), ResourcesUnavailable):
                    raise task.result()

    def set_target(
        self, size: int, reason: str, metrics: PoolMetrics | None = None
    ) -> list[asyncio.Task[Any]]:
        """:meth:`resize` without waiting (the autoscaler's way in); returns the starts begun.

        The change is recorded in :attr:`events` as a ``scale`` event with ``reason`` and the
        ``metrics`` it was decided on.
        """
        self._state.set_target(size, reason, self._now(), metrics)
        return self._flush()

    def set_ceiling(self, size: int, reason: str) -> None:
        """Lower (or restore) the most agents the pool may start, on demand or otherwise."""
        self._state.set_ceiling(size, reason, self._now())
        self._flush()

    def note(self, reason: str) -> None:
        """Record something a person should know about the pool's size, without changing it."""
        self._state.note(reason, self._now())

    # -- performing the state's actions -----------------------------------------------------------

    def _flush(self) -> list[asyncio.Task[Any]]:
        """Perform the actions the state asked for; returns the start tasks begun."""
        st = self._state
        starts: list[asyncio.Task[Any]] = []
        while st.actions:
            actions, st.actions = st.actions, []
            for action in actions:
                if isinstance(action, Assign):
                    fut = action.waiter.token
                    if fut.done():  # the caller left in this same pass: give it back
                        st.release(action.lease, self._now(), used=False)
                    else:
                        fut.set_result(action.lease)
                elif isinstance(action, Start):
                    task = self._spawn(self._start(action.agent), f"start-{action.agent.agent_id}")
                    self._starting[action.agent] = task
                    starts.append(task)
                elif isinstance(action, Stop):
                    self._spawn(self._stop(action.agent, action.kill), "stop")
                elif isinstance(action, Kill):
                    backend = self._backend_of(action.agent)
                    self._spawn(backend.kill(action.agent.handle), "kill")
                elif isinstance(action, Reject):
                    fut = action.waiter.token
                    if not fut.done():
                        fut.set_exception(action.error)
                elif isinstance(action, Check):
                    self._spawn(self._check(action.agent), "check")
                elif isinstance(action, Recall):
                    rewait = action.lease.rewait
                    if rewait is not None and rewait.token is None:
                        rewait.token = asyncio.get_running_loop().create_future()
                    fut = action.lease.future
                    agent = action.lease.agent
                    pipelines = self._pipelines.get(agent.placement.name)
                    if fut is not None and not fut.done() and pipelines is not None:
                        pipelines.recall(agent.handle, fut)
                elif isinstance(action, Log):
                    log.log(action.level, "%s", action.message)
        if st.poke:
            st.poke = False
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)
        if st.status == "closing" and not st.busy and self._drained is not None:
            self._drained.set()
        return starts

    def _backend_of(self, agent: PooledAgent) -> Backend:
        backend: Backend | None = agent.placement.backend
        return self._backend if backend is None else backend

    async def _watch(self, placement: Placement) -> None:
        """Run a placement's preemption source until the pool closes."""
        try:
            await placement.preemption.watch(placement, self._notified, self._now)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "pool %r: the preemption source of %s failed; notices there go unseen",
                self.name,
                placement.name,
            )

    def _notified(self, notice: PreemptionNotice) -> None:
        if self.closed:
            return
        try:
            self.preempt(notice)
        except PoolError as exc:
            log.warning("pool %r: %s", self.name, exc)

    def _spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"shoal-{self.name}-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _start(self, agent: PooledAgent) -> BaseException | None:
        """Start one agent; returns its start error (None on success)."""
        st = self._state
        spec = AgentSpec(
            pool=self.name,
            agent_id=agent.agent_id,
            image=self.config.image,
            setup=self.config.setup,
            on_exit=functools.partial(self._on_agent_exit, agent),
            heartbeat_interval=_heartbeat_interval(self.config.heartbeat_timeout),
            placement=self.config.placement or {},
            max_concurrency=self.config.max_concurrency,
        )
        error: BaseException | None = None
        try:
            backend = self._backend_of(agent)
            handle = await asyncio.wait_for(backend.start(spec), self.config.start_timeout)
        except asyncio.CancelledError:
            st.start_failed(agent, None, self._now())
            raise
        except BaseException as exc:
            st.start_failed(agent, exc, self._now())
            error = exc if isinstance(exc, ResourcesUnavailable) else st.breaker.last_error or exc
        else:
            st.agent_started(agent, handle, self._now())
        finally:
            self._starting.pop(agent, None)
            self._flush()
        return error

    async def _stop(self, agent: PooledAgent, kill: bool) -> None:
        try:
            if agent.handle is not None:
                backend = self._backend_of(agent)
                if kill:
                    await backend.kill(agent.handle)
                else:
                    try:
                        await backend.stop(agent.handle, self.config.stop_grace)
                    except Exception:
                        await backend.kill(agent.handle)
        finally:
            self._state.agent_stopped(agent, self._now())
            self._flush()

    async def _check(self, agent: PooledAgent) -> None:
        ok: bool | BaseException
        try:
            async with asyncio.timeout(self.config.health_check_timeout):
                ok = await self._backend_of(agent).check_health(agent.handle)
        except TimeoutError:
            ok = False
        except Exception as exc:
            ok = exc
        self._state.check_done(agent, ok, self._now())
        self._flush()

    def _on_agent_exit(self, agent: PooledAgent, handle: object) -> None:
        """The backend noticed an agent die on its own."""
        self._state.agent_exited(agent, self._now())
        self._flush()

    async def _maintain(self) -> None:
        """Retire agents idle past ``idle_timeout`` or their lifetime, health-check idle agents,
        kill frozen busy ones, report leaks, retry the floor.

        Sleeps until the earliest of those deadlines; the state's ``poke`` wakes it when one
        moves closer.
        """
        st = self._state
        loop = asyncio.get_running_loop()
        while True:
            now = self._now()
            if self._liveness and self.config.heartbeat_timeout is not None:
                for agent in st.calls_in_flight():
                    liveness = self._liveness.get(agent.placement.name)
                    if liveness is not None:
                        seconds = liveness.unresponsive_for(agent.handle, now)
                        st.unresponsive(agent, seconds, now)
            deadline = st.tick(now)
            wake: asyncio.Future[None] = loop.create_future()
            self._wake = wake
            st.wake_at = deadline
            self._flush()
            # One timer that sets the wake future (what asyncio.timeout did, without a
            # cancellation to raise and catch): scheduled as asyncio.timeout schedules its own,
            # at the same loop time, so that every timer comes out in the same order.
            when = loop.time() + max(0.0, deadline - now)
            if when <= loop.time():
                timer: asyncio.Handle = loop.call_soon(_set_unless_done, wake)
            else:
                timer = loop.call_at(when, _set_unless_done, wake)
            try:
                await wake
            finally:
                timer.cancel()
            self._wake = None
            st.wake_at = float("inf")


def _set_unless_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _reclaimed(agent: PooledAgent, now: float) -> bool:
    """Whether an agent lost mid-call was taken by its preemption: reclaimed by the pool at the
    notice's deadline, or gone once that deadline had come. A loss before it (the call
    crashed its agent, the pool closed) is no preemption: that call is not run again."""
    deadline = agent.preempt_deadline
    return agent.preempted or (deadline is not None and now >= deadline)


def _heartbeat_interval(timeout: float | None) -> float | None:
    """How often agents beat while running a call: often enough that a few missed beats still
    leave the pool well inside ``heartbeat_timeout``."""
    return None if timeout is None else min(1.0, timeout / 5)
