"""The pool's bookkeeping as a state machine without I/O, without asyncio and without a clock.

:class:`PoolState` owns every agent's state, the wait queue, leases, the target size, the
crash-loop breaker and the metrics. Each event (a request, a release, a start that finished, an
agent that died, a tick of time, ...) updates it synchronously and appends the I/O to perform to
:attr:`PoolState.actions`: hand an agent to a waiter, fail a waiter, start an agent, stop or kill
one, health-check one, log. The async shell (:class:`~shoal.pool.pool.AgentPool`) performs them.
This is the shape of httpcore's connection pool, and what lets the property-based tests drive
every interleaving directly.
"""

from __future__ import annotations

import math
import operator
import random
import sys
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from shoal.config import PoolConfig
from shoal.errors import (
    AgentLost,
    AgentStartError,
    ConfigError,
    PoolAtCapacity,
    PoolBroken,
    PoolClosed,
    PoolError,
    ResourcesUnavailable,
)
from shoal.pool import leaks, lifecycle, ondemand
from shoal.pool.agent import AgentState, Lease, PooledAgent
from shoal.pool.breaker import CrashLoopBreaker
from shoal.pool.events import ScalingEvent
from shoal.pool.metrics import MetricsRecorder, PoolMetrics, frozen_metrics
from shoal.pool.placement import Placement, PreemptionNotice
from shoal.pool.placing import (
    EARLY_CANCEL_BELOW,
    LOST_TOGETHER_S,
    Placer,
    Site,
    expected_wait,
    finish_chance,
)
from shoal.pool.waitqueue import Waiter, WaitQueue

STARTING, IDLE, CHECKING, BUSY, STOPPING, STOPPED = (
    AgentState.STARTING,
    AgentState.IDLE,
    AgentState.CHECKING,
    AgentState.BUSY,
    AgentState.STOPPING,
    AgentState.STOPPED,
)
Status = Literal["new", "running", "closing", "closed"]


# -- actions: what the shell must do --------------------------------------------------------------


@dataclass(slots=True)
class Assign:
    """Hand ``lease`` to ``waiter`` (resolve its future). If the waiter is already gone, the
    shell gives the lease back unused."""

    waiter: Waiter
    lease: Lease


@dataclass(slots=True)
class Reject:
    """Fail ``waiter`` with ``error``."""

    waiter: Waiter
    error: BaseException


@dataclass(slots=True)
class Start:
    """Start ``agent`` on its placement (``agent.placement``: its backend, or the pool's)."""

    agent: PooledAgent

    @property
    def placement(self) -> Placement:
        placement: Placement = self.agent.placement
        return placement


@dataclass(slots=True)
class Stop:
    """Stop (or kill) an agent the pool has retired; report back with ``agent_stopped``."""

    agent: PooledAgent
    kill: bool


@dataclass(slots=True)
class Kill:
    """Kill a held agent now (its call is failing); its holder's release retires it."""

    agent: PooledAgent


@dataclass(slots=True)
class Check:
    """Health-check an agent set aside (``CHECKING``); report back with ``check_done``."""

    agent: PooledAgent


@dataclass(slots=True)
class Recall:
    """Take back the call under ``lease`` if its agent has not started it (an agent came free
    while it waited behind another call); its caller then runs it again."""

    lease: Lease


@dataclass(slots=True)
class Log:
    level: int
    message: str


Action = Assign | Reject | Start | Stop | Kill | Check | Recall | Log
WARNING, ERROR = 30, 40


class PoolState:
    """Everything a pool knows, and the rules that change it. ``now`` always comes in."""

    def __init__(self, config: PoolConfig, owner: Any = None, max_events: int = 1000) -> None:
        self.config = config
        self.name = config.name
        self._owner = owner  # what leases point back to (the shell), for lease.run()
        self.agents: dict[str, PooledAgent] = {}
        self.idle: deque[PooledAgent] = deque()  # oldest use first
        # Busy agents with a free slot (max_concurrency > 1), in the order they got one.
        self.partial: dict[PooledAgent, None] = {}
        self._slots = config.max_concurrency
        self._held = 0  # leases held: calls in flight or about to be
        # Prefetch (one-call agents, a backend that pipelines; the shell sets it): when every
        # agent is busy and callers wait, a prefetchable caller's call is sent to a busy agent
        # to start as soon as its call ends, with no round trip through the pool in between.
        self.prefetch = False
        # Agents running a call with room for one more queued behind it: one always, more
        # while their calls are tiny (pool/depth.py).
        self.spare: dict[PooledAgent, None] = {}
        self.queued: dict[Lease, None] = {}  # prefetched leases still behind another call
        self._mru = config.assignment == "mru"
        self.queue = WaitQueue()
        self.counts = dict.fromkeys(AgentState, 0)
        self.target = config.min_size
        self.ceiling = config.max_size
        self._shrink = 0  # retirements owed to a resize below the live size
        self._agent_ids = 0
        self._lease_ids = 0
        self.status: Status = "new"
        self.breaker = CrashLoopBreaker(config.crash_loop_starts, config.crash_loop_window)
        # Seeded by name: lifetimes are spread, yet a simulation replays identically.
        self._rng = random.Random(zlib.crc32(config.name.encode()))
        self.metrics = MetricsRecorder()
        self.events: deque[ScalingEvent] = deque(maxlen=max_events)
        self.actions: list[Action] = []
        # Set when a deadline may have moved earlier than the one the shell sleeps until.
        self.poke = False
        self.wake_at = float("inf")
        self._no_room = False  # the backend said the cluster has no room; said once per episode
        self._watching_calls = False  # the next wake-up comes soon enough to check liveness
        # Where agents live, what they cost, which placements to avoid (pool/placing.py).
        self.placer = Placer(
            config.placements or (Placement(),),
            config.price_per_hour,
            rtt_target_ms=config.rtt_target_ms,
        )
        self._multi = self.placer.multi
        # Placements at different distances: a call takes the nearest idle agent.
        self._nearest = len({s.placement.rtt_ms for s in self.placer.order}) > 1
        self._min_rtt = min(s.placement.rtt_ms for s in self.placer.order)
        self._hold_until = math.inf  # a caller waits for a nearer agent until then, then spills
        self.doomed = 0  # live agents under a preemption notice: going, replaced already
        self._doomed_stopping = 0  # agents under a notice, being stopped
        self._swapping = False  # a spot agent is starting to take an on-demand one's place
        self._cold_s: float | None = None  # how long the last start took (a move's cost)
        self._recheck_at = math.inf  # when callers left to busy agents are looked at again
        self._cost_short = 0  # starts the cost ceiling refused, as last noted
        self._with_nodes = False  # an agent's handle has said which node it runs on

    # -- sizes ------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Live agents: starting, idle, checking and busy (not those being stopped)."""
        c = self.counts
        return c[STARTING] + c[IDLE] + c[CHECKING] + c[BUSY]

    @property
    def busy(self) -> int:
        return self.counts[BUSY]

    @property
    def running(self) -> bool:
        return self.status == "running"

    def _room(self) -> int:
        # Agents under a preemption notice are leaving: their replacements may start now.
        return self.ceiling - self.size - self.counts[STOPPING] + self.leaving

    @property
    def leaving(self) -> int:
        """Agents under a preemption notice, live or being stopped: not counted in max_size."""
        return self.doomed + self._doomed_stopping

    def _set(self, agent: PooledAgent, state: AgentState) -> None:
        c = self.counts
        c[agent.state] -= 1
        c[state] += 1
        agent.state = state

    # -- lifecycle of the pool --------------------------------------------------------------------

    def open(self, now: float) -> None:
        if self.status != "new":
            raise PoolError(f"pool {self.name!r} was already started")
        if getattr(sys.modules.get("__main__"), "SHOAL_AGENT_LOADING", False):
            raise PoolError(
                f"pool {self.name!r} was started while an agent imported a module for its "
                "call: that module starts pools when imported, so every agent would start more "
                "agents. Put the code that runs workflows under "
                '`if __name__ == "__main__":`'
            )
        self.status = "running"
        self._start_needed(now, None)

    def not_running(self) -> PoolError:
        if self.status == "new":
            return PoolError(
                f"pool {self.name!r} is not started; use 'async with pool:' or 'await pool.start()'"
            )
        return PoolClosed(f"pool {self.name!r} is closed and takes no more calls")

    def close(self, now: float) -> None:
        """Refuse new calls, fail the waiting ones, retire idle agents; busy ones may finish."""
        self.status = "closing"
        closed = PoolClosed(f"pool {self.name!r} closed while the call waited for an agent")
        for waiter in self.queue.drain():
            self.actions.append(Reject(waiter, closed))
        while self.idle:
            self._retire(self.idle.popleft(), "pool closing", now)
        for agent in [a for a in self.agents.values() if a.state is CHECKING]:
            self._retire(agent, "pool closing", now)

    def close_busy(self, now: float) -> None:
        """The grace period is over: kill the agents still running calls."""
        for agent in [a for a in self.agents.values() if a.state is BUSY]:
            self._retire(agent, "pool closing: call outlived stop_grace", now, kill=True)

    def closed(self) -> None:
        self.status = "closed"

    # -- callers ----------------------------------------------------------------------------------

    def request(self, now: float, *, head: bool = False, owned: bool = False) -> Lease | None:
        """A caller asks for an agent: a lease at once if one is idle and nobody waits ahead,
        else None (then :meth:`enqueue` it). Raises if the pool takes no calls. ``head``: a
        call re-queued after a preemption, which goes ahead of everyone waiting. ``owned``:
        the pool sends the lease's one call itself (run/call/map), so another call may be
        prefetched behind it; never for get_agent()/acquire(), whose holder has the agent to
        itself."""
        if self.status != "running":
            raise self.not_running()
        m = self.metrics
        if head:
            m.requeued += 1
        else:
            m.requests_total += 1
            m.arrivals.add(now)
        if head or not self.queue.waiting:
            agent = self._assignable(now)
            if agent is not None:
                m.warm_hits += 1
                m.wait_times.append(0.0)
                return self._lease(agent, now, owned=owned)
        return None

    def enqueue(self, waiter: Waiter, now: float, *, head: bool = False) -> None:
        """Queue a caller (after :meth:`request` gave nothing). Raises :class:`PoolBroken` in a
        crash loop and :class:`PoolAtCapacity` when ``max_queue`` callers wait already and no
        agent can be started for this one (not for a call re-queued at the ``head``: it was
        admitted once)."""
        if self.breaker.broken is not None:
            raise self.broken_error()
        cfg = self.config
        if not head and cfg.max_queue is not None and len(self.queue) >= cfg.max_queue:
            why = self._why_no_start(now)
            if why is not None:
                raise PoolAtCapacity(
                    f"pool {self.name!r} is at capacity: {why}, and max_queue={cfg.max_queue} "
                    "callers are waiting; raise max_size or max_queue, or retry later.",
                    self.state_line(),
                )
        if head:
            self.queue.push_front(waiter)
        else:
            self.queue.push(waiter)
        self._pump(now)

    def _why_no_start(self, now: float) -> str | None:
        """Why no agent can be started for one more waiter right now, or None if one can."""
        if self._room() <= 0:
            return f"its {self.ceiling} agents (max_size={self.config.max_size}) are in use"
        if not self.config.on_demand:
            return "it starts agents only to reach its target (on_demand=False)"
        if not self.breaker.may_start(now):
            return "agent starts are backing off after a failed start"
        if -(-len(self.queue) // self._slots) - self.counts[STARTING] >= self._room():
            return "every agent it may still start is spoken for"
        return None

    def abandon(self, waiter: Waiter) -> bool:
        """A waiting caller gave up; False if it was no longer waiting (it was assigned)."""
        return self.queue.remove(waiter)

    def release(
        self, lease: Lease, now: float, *, used: bool = True, rss_mb: float | None = None
    ) -> None:
        """A caller gives its agent back. A second release of a lease does nothing."""
        if lease.released:
            return
        lease.released = True
        agent = lease.agent
        if lease not in agent.leases:
            return
        agent.leases.discard(lease)
        self._held -= 1
        queued = self.queued
        if queued:
            if lease in queued:
                del queued[lease]
                agent.queued_calls -= 1
            if lease.recalled and queued and self.idle:
                self._recall(now)  # that recall came too late: the agent still free takes another
        if agent.state is not BUSY:
            return  # retired while held (pool closing)
        if used:
            agent.usage_count += 1
            agent.last_used = now
            agent.last_checked = now  # it just answered: as good as a health check
        reason = lifecycle.after_call(agent, self.config, now, rss_mb)
        if reason is None and self.status != "running":
            reason = "pool closing"
        if agent.leases:  # others still hold it (max_concurrency > 1, or a prefetched call)
            first = None
            if self._slots == 1 and agent.queued_calls == len(agent.leases):
                # Prefetch: the oldest call queued behind this one is its call now. (Not while
                # a recalled call, which may have started, is still ahead of them.)
                first = min(agent.leases, key=_LEASE_ID)
                del queued[first]
                agent.queued_calls -= 1
                if not first.recalled:  # (a recalled one is counted where it re-queued)
                    self.metrics.warm_hits += 1
                    self.metrics.wait_times.append(now - first.waited_from)
            if reason is not None or agent.draining is not None:
                if agent.retire_reason is None and agent.draining is None:
                    agent.draining = reason  # no new lease; retired when the last is back
                self.partial.pop(agent, None)
                self.spare.pop(agent, None)
                return
            if self._slots == 1:
                # Its call ahead is sent (else this happens at its begin_call): more may queue.
                sent = (
                    first.in_call
                    if first is not None
                    else any(o.in_call and o not in queued for o in agent.leases)
                )
                if sent and self._may_queue(agent, now):
                    self.spare[agent] = None
                self._pump(now)
                return
            waiter = self.queue.pop()
            if waiter is not None:
                self._assign(waiter, agent, now)
            else:
                self.partial[agent] = None
            return
        self.partial.pop(agent, None)
        if self.spare:
            self.spare.pop(agent, None)
        reason = reason or agent.draining
        if reason is None and self._shrink and not self.queue and self.size > self.target:
            self._shrink -= 1
            reason = f"resize to {self.target}"
        if reason is not None:
            kill = agent.retire_reason is not None or not agent.alive
            self._retire(agent, reason, now, kill=kill)
            self._pump(now)
            return
        waiter = self.queue.pop()
        if waiter is not None:
            self._assign(waiter, agent, now)
            return
        self._set(agent, IDLE)
        self._push_idle(agent)
        if queued:
            self._recall(now)

    def lease_error(self, lease: Lease) -> PoolError | None:
        """Why ``lease`` cannot carry a call, or None if it can."""
        agent = lease.agent
        if lease.released or lease not in agent.leases:
            holders = sorted(h.lease_id for h in agent.leases)
            now_held = (
                f"it is now held under lease {', '.join(map(str, holders))}"
                if holders
                else f"it is {agent.state.value}"
            )
            return PoolError(
                f"lease {lease.lease_id} on agent {agent.agent_id} of pool {self.name!r} was "
                f"already released ({now_held}); take an agent again with get_agent() or "
                "acquire()"
            )
        return None

    # -- calls ------------------------------------------------------------------------------------

    def begin_call(self, lease: Lease, now: float | None = None) -> PooledAgent:
        """A call is about to be sent on ``lease``'s agent. Its agent may then take a
        prefetched call behind it, if the pool sends this one (not a get_agent() holder): only
        once it is sent, so that the agent receives the two in the order the pool thinks."""
        err = self.lease_error(lease)
        if err is not None:
            raise err
        agent = lease.agent
        if lease.in_call:
            raise PoolError(
                f"agent {agent.agent_id} of pool {self.name!r} is already running a call under "
                f"lease {lease.lease_id}; a lease carries one call at a time: await that call "
                "first, or take another lease"
            )
        if agent.retire_reason is not None or agent.state is not BUSY:
            raise AgentLost(
                f"agent {agent.agent_id} cannot take another call: "
                f"{agent.retire_reason or agent.state.value}; release it and take another",
                agent.agent_id,
                delivered=False,
            )
        lease.in_call = True
        if (
            self.prefetch
            and lease.owned
            and agent.draining is None
            and not lease.recalled
            and lease not in self.queued
        ):
            # Its agent's current call: more may queue behind it once it is sent.
            if now is not None and len(agent.leases) == 1:
                agent.runs.began(now)
            if self._may_queue(agent, now):
                self.spare[agent] = None
                if now is not None and self.queue.waiting:
                    self._pump(now)
        agent.calls += 1
        self.metrics.requests_active += 1
        if not self._watching_calls and self.config.heartbeat_timeout is not None:
            # Maintenance sleeps as if nothing ran: wake it to watch this call's liveness.
            self._watching_calls = True
            self.poke = True
        return agent

    def end_call(self, lease: Lease, started: float, now: float, failed: bool) -> None:
        lease.in_call = False
        agent = lease.agent
        agent.calls -= 1
        if self.prefetch and not lease.recalled:
            agent.runs.ended(started, now)
        m = self.metrics
        m.requests_active -= 1
        if failed:
            m.requests_failed += 1
        m.exec_times.append(now - started)
        m.completions.add(now)

    def call_failed(self, agent: PooledAgent, reason: str, *, kill: bool) -> None:
        """The agent running a call can serve no more (lost, timed out, abandoned, frozen):
        its holder's release retires it; with ``kill`` it is killed now."""
        if agent.retire_reason is None:
            agent.retire_reason = reason
        self.partial.pop(agent, None)
        self.spare.pop(agent, None)
        if kill and agent.state is BUSY:
            self.actions.append(Kill(agent))

    def calls_in_flight(self) -> list[PooledAgent]:
        """Agents with a call outstanding, not already condemned: those whose liveness counts."""
        return [
            a
            for a in self.agents.values()
            if a.state is BUSY and a.calls and a.retire_reason is None
        ]

    def unresponsive(self, agent: PooledAgent, seconds: float, now: float) -> None:
        """The backend says ``agent`` has shown no sign of life for ``seconds`` in its call."""
        reason = lifecycle.unresponsive(seconds, self.config)
        if reason is None or agent.retire_reason is not None or agent.state is not BUSY:
            return
        self.call_failed(agent, reason, kill=True)
        self.note(f"agent {agent.agent_id} {reason}: killed", now)
        self.actions.append(Log(WARNING, f"pool {self.name!r}: agent {agent.agent_id} {reason}"))

    # -- agents, as the backend reports them -------------------------------------------------

    def agent_started(self, agent: PooledAgent, handle: Any, now: float) -> None:
        agent.handle = handle
        if not self._with_nodes and hasattr(handle, "node_ip"):
            self._with_nodes = True  # a backend that places agents on nodes (Ray)
        if self.size >= self.target:
            self._no_room = False
        self.metrics.agents_started += 1
        self.placer.start_ok(agent.site)
        self._cold_s = now - agent.created_at
        if agent.swap:
            self._swapping = False
        if self.breaker.succeeded():
            self.note("recovered: an agent started", now)
            self.actions.append(Log(WARNING, f"pool {self.name!r} recovered: an agent started"))
        agent.ready_at = agent.last_used = agent.last_checked = now
        agent.expires_at = lifecycle.lifetime_end(self.config, now, self._rng)
        if self.status != "running" or agent.preempt_deadline is not None:
            self._set(agent, IDLE)
            why = "pool closing" if self.status != "running" else "preempted before it was warm"
            self._retire(agent, why, now)
            self._pump(now)
            return
        self._set(agent, IDLE)
        self._push_idle(agent)
        if agent.swap:
            if agent.swap_from is not None:
                self._consolidated(agent.swap_from, agent.site, now)
            else:
                self._swapped(now)
        if self.queued:
            # A call queued behind a busy agent may be what this agent was started for: it
            # goes back in its place in the queue, ahead of callers that came after it.
            self._recall(now)
        self._pump(now)
        if self.queued and self.idle:
            self._recall(now)

    def start_failed(self, agent: PooledAgent, exc: BaseException | None, now: float) -> None:
        """A start failed (``exc``) or was cancelled (None)."""
        before = self.size
        if agent.swap:
            self._swapping = False
        self._unserve(agent)
        self._remove(agent, now)
        self.placer.start_failed(agent.site, now, failed=exc is not None)
        if exc is None:
            self._event("start_failed", agent, before, "start cancelled", now)
            return
        err = self._start_error(agent, exc)
        if isinstance(err, ResourcesUnavailable):
            self._waiting_for_room(agent, err, before, now)
            return
        self.metrics.start_failures += 1
        self._event("start_failed", agent, before, str(err), now)
        if self._multi and self.placer.choose(now)[0] is not None:
            # One placement failing is that placement's (it is down for a while, and its
            # agents go elsewhere), not a crash loop of the pool.
            self.actions.append(Log(WARNING, f"pool {self.name!r}: {err}; trying elsewhere"))
            self.poke = True  # its retry is a deadline
            self._pump(now)
            return
        broke = self.breaker.failed(err, now, self.name)
        self.poke = True  # the back-off is a deadline
        if broke:
            window = self.config.crash_loop_window
            self.note(f"broken: failed starts in {window:.0f} s reached crash_loop_starts", now)
            self.actions.append(Log(ERROR, str(self.breaker.broken)))
        if self.breaker.broken is not None:
            # Nobody waits on a crash loop: every waiting caller learns at once.
            for waiter in self.queue.drain():
                self.actions.append(Reject(waiter, self.broken_error()))
        elif len(self.queue) > (self.counts[STARTING] + self.counts[BUSY]) * self._slots:
            # A caller that nothing in flight can serve gets the error rather than waiting.
            head = self.queue.pop()
            if head is not None:
                self.actions.append(Reject(head, err))
        self._pump(now)

    def _waiting_for_room(
        self, agent: PooledAgent, err: ResourcesUnavailable, before: int, now: float
    ) -> None:
        """No room on the cluster for one more agent: not a crash (the breaker does not count
        it). The pool keeps the agents it has and tries again after a back-off; callers fail
        only if no agent at all can serve them."""
        if not self._no_room:
            self._no_room = True
            self._event("waiting_for_resources", agent, before, str(err), now)
            self.actions.append(Log(WARNING, str(err)))
        self.breaker.wait(now)
        self.poke = True
        if self.size == 0:
            for waiter in self.queue.drain():
                self.actions.append(Reject(waiter, err))

    def _start_error(self, agent: PooledAgent, exc: BaseException) -> AgentStartError:
        if isinstance(exc, AgentStartError):
            return exc
        if isinstance(exc, TimeoutError):
            return AgentStartError(
                f"pool {self.name!r}: agent {agent.agent_id} was not warm within "
                f"start_timeout={self.config.start_timeout} s",
                agent.agent_id,
            )
        err = AgentStartError(
            f"pool {self.name!r}: agent {agent.agent_id} failed to start: "
            f"{type(exc).__name__}: {exc}",
            agent.agent_id,
        )
        err.__cause__ = exc
        return err

    def agent_lost(self, agent: PooledAgent, now: float) -> None:
        """``agent`` died (or its backend could not reach it) while it served: tally it against
        its placement, which agents lost together judge down (pool/placing.py)."""
        if agent.lost_at is not None or agent.preempt_deadline is not None:
            return  # heard already; or reclaimed after a notice, which is no failure
        agent.lost_at = now
        site = agent.site
        if self.placer.lost(site, now):
            lost = sum(1 for t, _ in site.lost_at if t >= now - LOST_TOGETHER_S)
            self.note(
                f"placement {site.name} down: {lost} of its agents lost together; its calls "
                "run again elsewhere and it is retried after a back-off",
                now,
            )
            self.actions.append(
                Log(WARNING, f"pool {self.name!r}: placement {site.name} down; failing over")
            )
            self.poke = True  # its retry is a deadline

    @property
    def judges_placements(self) -> bool:
        """Whether a lost call may have gone down with its placement (more than one)."""
        return self._multi

    def lost_with_placement(self, agent: PooledAgent) -> bool:
        """Whether ``agent``, lost, went down with its placement (so its call may run again
        elsewhere) rather than alone (its call's own doing, perhaps: not re-run)."""
        at = agent.lost_at
        return at is not None and self.placer.failed_at(agent.site, at)

    def agent_exited(self, agent: PooledAgent, now: float) -> None:
        """The backend saw an agent die on its own."""
        if agent.state is not STARTING:
            self.agent_lost(agent, now)
        if agent.state is IDLE:
            self.idle.remove(agent)
            self._retire(agent, lifecycle.while_idle(agent, self.config, now, False) or "", now)
            self._pump(now)
        elif agent.state is CHECKING:
            self._retire(agent, "agent died during its health check", now)
            self._pump(now)
        elif agent.state is BUSY and agent.retire_reason is None:
            code = agent.handle.exit_code if agent.handle is not None else None
            agent.retire_reason = f"agent lost (exit code {code})"
            self.partial.pop(agent, None)
            self.spare.pop(agent, None)
        # A starting agent's start fails on its own.

    def agent_stopped(self, agent: PooledAgent, now: float) -> None:
        self._remove(agent, now)
        self._pump(now)

    def check_done(self, agent: PooledAgent, ok: bool | BaseException, now: float) -> None:
        agent.last_checked = now
        if agent.state is not CHECKING:
            return  # died meanwhile and was already retired
        if ok is True and self.status == "running":
            self._set(agent, IDLE)
            self._reinsert_idle(agent)
            if self.queued:
                self._recall(now)
        else:
            why = (
                "pool closing"
                if ok is True
                else "failed its health check"
                if ok is False
                else f"health check error: {ok}"
            )
            if ok is not True and self.status == "running":
                self.agent_lost(agent, now)
            self._retire(agent, why, now, kill=ok is not True)
        self._pump(now)

    # -- size -------------------------------------------------------------------------------------

    def set_target(self, size: int, reason: str, now: float, metrics: PoolMetrics | None) -> None:
        lo, hi = self.config.min_size, self.config.max_size
        if isinstance(size, bool) or not isinstance(size, int) or not lo <= size <= hi:
            raise ConfigError(
                f"pool {self.name!r}: cannot resize to {size!r}; "
                f"the size must be an integer in [min_size={lo}, max_size={hi}]"
            )
        if self.status != "running":
            raise self.not_running()
        if size != self.target:
            self.events.append(ScalingEvent(now, "scale", "", self.target, size, reason, metrics))
        self.target = size
        self._shrink = max(0, self.size - self.doomed - size)
        while self._shrink and self.idle and not self.queue:
            self._shrink -= 1
            self._retire(self.idle.popleft(), reason, now)
        self._start_needed(now, reason)
        self.poke = True

    def adopt_max_size(self, size: int, reason: str, now: float) -> None:
        """Take ``size`` (at least ``min_size``) as ``max_size``: the default a backend gave
        a pool whose ``max_size`` was not set, before it opens."""
        size = max(size, self.config.min_size, 1)
        if size != self.config.max_size:
            self.config = self.config.model_copy(update={"max_size": size})
            self.ceiling = size
            self.note(f"max_size {size}: {reason}", now)

    def set_ceiling(self, size: int, reason: str, now: float) -> None:
        size = max(self.config.min_size, min(size, self.config.max_size))
        if size != self.ceiling:
            self.ceiling = size
            self.note(f"at most {size} agents: {reason}", now)
            if self.target > size:
                self.set_target(size, reason, now, None)

    def note(self, reason: str, now: float) -> None:
        size = self.target
        self.events.append(ScalingEvent(now, "note", "", size, size, reason))

    # -- time -------------------------------------------------------------------------------------

    def tick(self, now: float) -> float:
        """Retire idle agents past their time, set aside those due a health check, report
        leaks, retry the floor; returns when the next of these is due."""
        cfg = self.config
        idle = self.idle
        while idle and self.size > self.target and idle[0].idle_past(cfg.idle_timeout, now):
            agent = idle.popleft()
            self._retire(agent, lifecycle.idle_too_long(agent, cfg, now), now)
        interval = cfg.health_check_interval
        # One pass over the idle agents finds both kinds of work; most ticks find neither
        # (maintenance wakes for one agent's check while dozens sit idle).
        gone = False
        checks: list[PooledAgent] = []
        for a in idle:
            handle = a.handle
            if a.expires_at <= now or (handle is not None and handle.exit_code is not None):
                gone = True  # (a.expired(now) or not a.alive)
                break
            if a.last_checked + interval <= now:  # (a.health_due(interval, now))
                checks.append(a)
        if gone:
            for agent in [a for a in idle if a.expired(now) or not a.alive]:
                idle.remove(agent)
                self._retire(agent, lifecycle.while_idle(agent, cfg, now, False) or "", now)
            checks = [a for a in idle if a.health_due(interval, now)]
        for agent in checks:
            idle.remove(agent)
            self._set(agent, CHECKING)
            self.actions.append(Check(agent))
        deadline = now + interval
        threshold = cfg.leak_threshold
        if threshold is not None:
            held = [lease for a in self.agents.values() for lease in a.leases]
            found, due = leaks.overdue(held, threshold, now)
            for lease in found:
                lease.leak_reported = True
                self.actions.append(Log(WARNING, leaks.message(self.name, lease, threshold, now)))
                held_s = now - lease.acquired_at
                self.note(f"agent {lease.agent_id} held {held_s:.0f} s: possible leak", now)
            deadline = min(deadline, due)
        if self.doomed:
            self._reclaim(now)
        if self.placer.prefer_spot and not self._swapping:
            self._swap_to_spot(now)
        if self._multi and not self._swapping and not self.queue and not self.counts[STARTING]:
            self._consolidate(now)
        self._pump(now)
        return min(deadline, self._next_deadline(now))

    def _next_deadline(self, now: float) -> float:
        cfg = self.config
        deadline = float("inf")
        if self.idle:
            interval = cfg.health_check_interval
            for agent in self.idle:
                check_at = agent.last_checked + interval
                if check_at < deadline:
                    deadline = check_at
                if agent.expires_at < deadline:
                    deadline = agent.expires_at
        if self.idle and self.size > self.target:
            deadline = min(deadline, self.idle[0].last_used + cfg.idle_timeout)
        if self.breaker.backoff_until > now:
            deadline = min(deadline, self.breaker.backoff_until)
        if self._multi:
            deadline = min(deadline, self.placer.next_retry(now))
        if self._hold_until <= now:
            self._hold_until = math.inf
        elif self._hold_until < math.inf:
            deadline = min(deadline, self._hold_until)
        if self._recheck_at <= now:
            self._recheck_at = math.inf
        elif self._recheck_at < math.inf and (self.queue or self.queued):
            deadline = min(deadline, self._recheck_at)
        if self.doomed:
            for agent in self.agents.values():
                due = agent.preempt_deadline
                if due is not None and agent.state is BUSY and not agent.preempted:
                    deadline = min(deadline, max(due, now))
        self._watching_calls = bool(self.counts[BUSY])
        if cfg.heartbeat_timeout is not None and self._watching_calls:
            deadline = min(deadline, now + max(0.05, cfg.heartbeat_timeout / 4))
        return deadline

    # -- observation ------------------------------------------------------------------------------

    def broken_error(self) -> PoolBroken:
        broken = self.breaker.broken
        assert broken is not None
        err = PoolBroken(str(broken), self.state_line())
        err.__cause__ = broken.__cause__
        return err

    def oldest_wait(self, now: float) -> float:
        head = self.queue.oldest()
        since = head.enqueued_at if head is not None else now
        for lease in self.queued:  # a prefetched call still waits, behind another call
            since = min(since, lease.waited_from)
        return now - since

    def snapshot(self, now: float) -> PoolMetrics:
        m, c = self.metrics, self.counts
        size = self.size
        running = self._held - len(self.queued)  # a prefetched call waits: it is not running
        waits, execs, placer = m.wait_times, m.exec_times, self.placer
        # (taken once a second for days in a simulation: built field by field, not through
        # the frozen dataclass's __init__, which sets its ~40 fields one call at a time)
        return frozen_metrics(
            {
                "name": self.name,
                "size": size,
                "starting": c[STARTING],
                "idle": c[IDLE],
                "busy": c[BUSY],
                "stopping": c[STOPPING],
                "min_size": self.config.min_size,
                "max_size": self.config.max_size,
                "target_size": self.target,
                "requests_total": m.requests_total,
                "requests_active": m.requests_active,
                "requests_failed": m.requests_failed,
                "queue_depth": len(self.queue) + len(self.queued),
                "oldest_wait": self.oldest_wait(now) if self.queue or self.queued else 0.0,
                "avg_wait_time": waits.mean(),
                "avg_execution_time": execs.mean(),
                "wait_p50": waits.quantile(0.50),
                "wait_p99": waits.quantile(0.99),
                "utilization_rate": running / (size * self._slots) if size else 0.0,
                "throughput": m.completions.rate(now),
                "arrival_rate": m.arrivals.rate(now),
                "warm_hits": m.warm_hits,
                "cold_starts": m.cold_starts,
                "agents_started": m.agents_started,
                "agents_retired": m.agents_retired,
                "start_failures": m.start_failures,
                "time": now,
                "checking": c[CHECKING],
                "in_flight": running,
                "max_concurrency": self._slots,
                "nodes": agents_per_node(self.agents.values()) if self._with_nodes else {},
                "cost_usd": placer.spent(now),
                "cost_per_hour": placer.spend_rate,
                "cost_cap_size": (
                    None
                    if placer.cost_ceiling is None
                    else placer.cap_size(size - self.doomed, now)
                ),
                "preemptions": placer.preemptions,
                "requeued": m.requeued,
            }
        )

    def state_line(self) -> str:
        """The pool's state in one line, as carried by its errors."""
        c = self.counts
        queue = "" if self.config.max_queue is None else f"/{self.config.max_queue}"
        checking = f", {c[CHECKING]} checking" if c[CHECKING] else ""
        return (
            f"[pool {self.name!r}: size {self.size}/{self.config.max_size} "
            f"({c[BUSY]} busy, {c[IDLE]} idle{checking}, {c[STARTING]} starting, "
            f"{c[STOPPING]} stopping) | waiting {len(self.queue)}{queue}]"
        )

    # -- the rules --------------------------------------------------------------------------------

    def _lease(
        self, agent: PooledAgent, now: float, prefetched: bool = False, *, owned: bool = False
    ) -> Lease:
        self._lease_ids += 1
        lease = Lease(self._owner, agent, self._lease_ids, now)
        agent.leases.add(lease)
        self._held += 1
        lease.owned = owned  # (a prefetch target once its call is sent: see begin_call)
        if prefetched:
            lease.prefetched = True
            self.queued[lease] = None
            agent.queued_calls += 1
        elif len(agent.leases) < self._slots:
            self.partial[agent] = None
        else:
            self.partial.pop(agent, None)
        return lease

    def _assignable(self, now: float) -> PooledAgent | None:
        """An agent with room for one more lease: an idle one first (calls spread over the
        agents there are), else a busy one with a free slot (max_concurrency > 1)."""
        if self.idle:
            agent = self._checkout(now)
            if agent is not None:
                return agent
        if self.partial:
            return next(iter(self.partial))
        return None

    def _checkout(self, now: float) -> PooledAgent | None:
        """Take an idle agent for a call, retiring the ones found stale on the way."""
        idle, cfg = self.idle, self.config
        while idle:
            if self._nearest:
                agent = self._nearest_idle()
                if self._worth_waiting(agent, now):
                    return None  # a nearer busy agent is expected back sooner: wait for it
                idle.remove(agent)
            else:
                agent = idle.pop() if self._mru else idle.popleft()
            reason = lifecycle.while_idle(agent, cfg, now, self.size > self.target)
            if reason is not None:
                self._retire(agent, reason, now)
                continue
            self._set(agent, BUSY)
            return agent
        return None

    def _worth_waiting(self, far: PooledAgent, now: float) -> bool:
        """Whether the caller at the head (or arriving, if nobody waits) should wait for a busy
        agent nearer than ``far``, the nearest idle one: when the wait it can expect there is
        less than the extra round trip, and it has not waited that long yet."""
        rtt = far.placement.rtt_ms
        exec_times = self.metrics.exec_times
        if not exec_times or rtt <= self._min_rtt:
            return False
        head = self.queue.oldest()
        waited = now - head.enqueued_at if head is not None else 0.0
        mean_s = exec_times.mean()
        by_rtt: dict[float, int] = {}
        for agent in self.agents.values():
            if (
                agent.state is BUSY
                and agent.placement.rtt_ms < rtt
                and agent.draining is None
                and agent.retire_reason is None
                and agent.preempt_deadline is None
            ):
                near = agent.placement.rtt_ms
                by_rtt[near] = by_rtt.get(near, 0) + 1
        for near, n in by_rtt.items():
            extra_s = (rtt - near) / 1000.0
            if waited + 1e-9 < extra_s and expected_wait(0, mean_s, n) < extra_s:
                until = now - waited + extra_s
                if self._hold_until <= now or until < self._hold_until:
                    self._hold_until = until
                    self.poke = True  # the spill is a deadline maintenance must wake for
                return True
        return False

    def _nearest_idle(self) -> PooledAgent:
        """The idle agent with the lowest round trip from the caller; among equals, the one
        the assignment order would take."""
        order = reversed(self.idle) if self._mru else iter(self.idle)
        best = next(order)
        for agent in order:
            if agent.placement.rtt_ms < best.placement.rtt_ms:
                best = agent
        return best

    def _assign(
        self, waiter: Waiter, agent: PooledAgent, now: float, prefetched: bool = False
    ) -> None:
        """Give ``agent`` (idle, just released, or busy for a prefetch) to ``waiter``, under a
        new lease."""
        if agent.state is not BUSY:
            self._set(agent, BUSY)
        m = self.metrics
        if not prefetched:  # a prefetched call still waits: counted when it becomes current
            m.wait_times.append(now - waiter.enqueued_at)
            if agent.usage_count == 0 and (agent.ready_at or 0.0) >= waiter.enqueued_at:
                m.cold_starts += 1
            else:
                m.warm_hits += 1
        lease = self._lease(agent, now, prefetched, owned=waiter.owned)
        lease.waited_from = waiter.enqueued_at
        self.actions.append(Assign(waiter, lease))

    def _pump(self, now: float) -> None:
        """Hand idle agents to waiting callers, retire owed surplus, start what is needed."""
        queue = self.queue
        waiting = queue.waiting
        while waiting and (self.idle or self.partial):
            agent = self._assignable(now)
            if agent is None:
                break
            head = queue.pop()
            assert head is not None
            self._assign(head, agent, now)
        while self._shrink and self.idle and not waiting and self.size > self.target:
            self._shrink -= 1
            self._retire(self.idle.popleft(), f"resize to {self.target}", now)
        self._start_needed(now, None)
        if waiting and self.spare and not self.counts[STARTING]:
            self._prefetch(now)  # no agent is coming for these callers

    def _prefetch(self, now: float) -> None:
        """Every agent is busy and callers wait, none for an agent starting: queue the first
        callers' calls on busy agents with room behind their call (one, or more while their
        calls are tiny: pool/depth.py), the agents taking turns, if those callers allow it."""
        queue, spare, max_uses = self.queue, self.spare, self.config.max_uses
        while queue.waiting and spare:
            head = queue.oldest()
            if head is None or not head.prefetchable:
                return
            agent = next(iter(spare))
            del spare[agent]
            if (
                agent.state is not BUSY
                or not agent.leases
                or not self._may_queue(agent, now)
                or agent.retire_reason is not None
                or agent.draining is not None
                or (max_uses is not None and agent.usage_count + len(agent.leases) + 1 > max_uses)
            ):
                continue
            queue.pop()
            self._assign(head, agent, now, prefetched=True)
            if self._may_queue(agent, now):
                spare[agent] = None  # room for another behind it: the agents take turns

    def _may_queue(self, agent: PooledAgent, now: float | None) -> bool:
        """Whether a call may queue behind the ones ``agent`` holds (see ``pool/depth.py``)."""
        ahead = len(agent.leases)
        return ahead <= 1 or (now is not None and agent.runs.may_queue(ahead, now))

    def _recall(self, now: float, lease: Lease | None = None) -> None:
        """An agent came free while a call waits behind another one (or that one's agent is
        under a preemption notice): take that call back, to run on the free agent (or, if it
        has started meanwhile, let it finish where it is). Its caller keeps its place: it
        waits again from when it first did (``lease.rewait``), ahead of later callers."""
        if lease is None:
            lease = next(iter(self.queued))
        del self.queued[lease]
        lease.agent.queued_calls -= 1
        lease.recalled = True
        waiter = Waiter(lease.waited_from, None, prefetchable=True, owned=True)
        lease.rewait = waiter
        self.actions.append(Recall(lease))  # before the Assign: it sets the waiter's token
        self.queue.push_aged(waiter)
        self._pump(now)

    def _start_needed(self, now: float, reason: str | None) -> None:
        if self.status != "running":
            return
        room = self._room()
        if room <= 0 or not self.breaker.may_start(now):
            return
        c = self.counts
        size = self.size - self.doomed
        waiting = len(self.queue)
        # One new agent serves max_concurrency waiters.
        # Idle agents held back for a nearer busy one (a spill deadline away) count as supply.
        demand = -(-waiting // self._slots) - c[STARTING] - c[IDLE] if self.config.on_demand else 0
        reached = 0
        queued = len(self.queued)
        counting = self.config.on_demand is True  # ("eager": a start for every waiting caller)
        if counting and -(-(waiting + queued) // self._slots) > c[STARTING] + c[IDLE]:
            # Callers the busy agents will reach before a new agent is up need no new agent;
            # callers prefetched behind a call they will not wait out (it has run as long as a
            # start) need one as much as those still in the queue.
            agents = self.agents.values()
            cold_s = ondemand.next_cold_start(agents, self.placer, self._cold_s, now)
            due, stuck, recheck = ondemand.reached_before_a_start(
                agents,
                self.queued,
                self.metrics.exec_times,
                cold_s,
                self._slots,
                self.config.max_uses,
                now,
            )
            reached = min(waiting, due)
            demand = -(-(waiting + stuck - reached) // self._slots) - c[STARTING] - c[IDLE]
            relied_on = recheck < math.inf and bool(reached or stuck < queued)
            at = ondemand.next_recheck(recheck, relied_on, self._recheck_at, now)
            if at is not None:
                self._recheck_at = at
                self.poke = self.poke or at < self.wake_at
            elif relied_on and self._recheck_at < self.wake_at < math.inf:
                self.poke = True  # one set while nobody waited: maintenance sleeps past it
        floor = self.target - size
        if self.breaker.broken is not None and not c[STARTING]:
            floor = max(floor, 1)  # keep probing, one start per back-off, to notice recovery
        n = min(max(demand, floor), room)
        if n <= 0:
            return
        why = reason or (
            f"{waiting} caller(s) waiting"
            + (f" ({reached} of them reached by busy agents sooner)" if reached else "")
            + f", {c[STARTING]} agent(s) starting"
            if demand >= floor
            else f"below target size {self.target}"
        )
        self._start(n, why, now)

    def _start(
        self,
        n: int,
        why: str,
        now: float,
        *,
        swap: bool = False,
        at: Site | None = None,
        swap_from: Site | None = None,
    ) -> int:
        """Start up to ``n`` agents, each where the placer says; returns how many started."""
        placer = self.placer
        for i in range(n):
            site: Site | None
            if at is not None:
                site, why_not = at, ""
            else:
                site, why_not = placer.choose(now) if not swap else (placer.swap_target(now), "")
            if site is None:
                if why_not == "cost":
                    self._cost_refused(n - i, now)
                return i
            self._agent_ids += 1
            agent = PooledAgent(f"{self.name}-{self._agent_ids}", now, site.placement, site)
            agent.swap = swap or swap_from is not None
            agent.swap_from = swap_from
            before = self.size
            self.agents[agent.agent_id] = agent
            self.counts[STARTING] += 1
            placer.added(site, now)
            where = f" on {site.name}" if self._multi else ""
            self._event("start", agent, before, why + where, now)
            self.actions.append(Start(agent))
        self._cost_short = 0
        return n

    def _cost_refused(self, short: int, now: float) -> None:
        """The cost ceiling refused ``short`` starts: say so, once per change of how many."""
        if short == self._cost_short:
            return
        self._cost_short = short
        p = self.placer
        self.note(
            f"cost ceiling {p.cost_ceiling:g} $/h binds: {short} agent(s) over what it buys "
            f"({self.size} agents at {p.spend_rate:.4g} $/h); callers wait for busy agents",
            now,
        )

    def _push_idle(self, agent: PooledAgent) -> None:
        if not self.idle or agent.expires_at < self.wake_at:
            self.poke = True  # a deadline earlier than the one maintenance sleeps until
        self.idle.append(agent)

    def _reinsert_idle(self, agent: PooledAgent) -> None:
        """Put an agent back among the idle ones, keeping them ordered by last use."""
        idle = self.idle
        i = len(idle)
        while i and idle[i - 1].last_used > agent.last_used:
            i -= 1
        if not idle:
            self.poke = True
        idle.insert(i, agent)

    def _retire(self, agent: PooledAgent, reason: str, now: float, *, kill: bool = False) -> None:
        """Take an idle, checking or busy agent out of service; the shell stops it."""
        before = self.size
        self._unserve(agent)
        if agent.preempt_deadline is not None:
            self._doomed_stopping += 1
        self._set(agent, STOPPING)
        self.partial.pop(agent, None)
        self.spare.pop(agent, None)
        if self.queued:
            for lease in agent.leases:  # it runs (or fails) there: nothing left to take back
                if lease in self.queued:
                    del self.queued[lease]
                    agent.queued_calls -= 1
        self.metrics.agents_retired += 1
        lost = agent.handle is not None and not agent.alive
        self._event("lost" if lost else "retire", agent, before, reason, now)
        self.actions.append(Stop(agent, kill))

    def _remove(self, agent: PooledAgent, now: float | None = None) -> None:
        if agent.state is STOPPING and agent.preempt_deadline is not None:
            self._doomed_stopping -= 1
        self._set(agent, STOPPED)
        if self.agents.pop(agent.agent_id, None) is not None:
            self.placer.removed(agent.site, agent.created_at if now is None else now)

    def _unserve(self, agent: PooledAgent) -> None:
        """A live agent leaves service (retired, failed to start): off its placement's tally."""
        if agent.preempt_deadline is None:
            self.placer.unserving(agent.site)
        else:
            self.doomed -= 1

    # -- placements: preemption and spot ----------------------------------------------------------

    def preempt(self, notice: PreemptionNotice, now: float) -> list[PooledAgent]:
        """A preemption notice: the agents it names take no new calls, replacements start at
        once elsewhere, idle ones go now and busy ones at the deadline (see :meth:`tick`).
        Returns the agents it reached."""
        site = self.placer.sites.get(notice.placement)
        if site is None:
            raise PoolError(
                f"pool {self.name!r} has no placement {notice.placement!r} to preempt; its "
                f"placements: {', '.join(self.placer.sites)}"
            )
        if self.status != "running":
            return []
        ids = None if notice.agent_ids is None else set(notice.agent_ids)
        hit = [
            a
            for a in self.agents.values()
            if a.site is site
            and a.state in (STARTING, IDLE, CHECKING, BUSY)
            and a.preempt_deadline is None
            and (ids is None or a.agent_id in ids)
        ]
        demoted = self.placer.notice(site, notice.deadline, now, None if ids is None else len(hit))
        why = f"preempted ({notice.source or 'notice'}: {notice.action})"
        serving = 0
        for agent in hit:
            self.placer.unserving(site)
            self.doomed += 1
            agent.preempt_deadline = notice.deadline
            if agent.state is STARTING:
                continue  # retired as soon as it is up
            serving += 1
            if agent.state is IDLE:
                self.idle.remove(agent)
                self._retire(agent, why, now)
            elif agent.state is CHECKING:
                self._retire(agent, why, now)
            else:
                self.partial.pop(agent, None)
                self.spare.pop(agent, None)
                if agent.draining is None:
                    agent.draining = why  # no new call; retired when its calls are back
                for lease in [q for q in agent.leases if q in self.queued]:
                    self._recall(now, lease)  # queued, not started: it runs elsewhere
                if self._outlasts(agent, notice.deadline, now):
                    # Expected to run past the reclaim: cancel it now and run it elsewhere,
                    # rather than spend the notice on work that is lost anyway.
                    agent.preempted = True
                    self.call_failed(agent, f"{why}: its call would outlast the notice", kill=True)
        in_s = notice.deadline - now
        self.note(
            f"preemption notice for {site.name}: {len(hit)} agent(s) gone in {in_s:.0f} s"
            + ("; placement demoted for a while after repeated preemptions" if demoted else ""),
            now,
        )
        if serving:
            self._start(min(serving, max(0, self._room())), f"replacing {why}", now)
        self._pump(now)
        self.poke = True  # the deadline is one
        return hit

    def _outlasts(self, agent: PooledAgent, deadline: float, now: float) -> bool:
        """Whether ``agent``'s calls are unlikely to finish by ``deadline``, from the run times
        of the pool's past calls (without any yet, nobody knows: they run to the deadline)."""
        exec_times = self.metrics.exec_times
        if not exec_times or not agent.calls or agent.retire_reason is not None:
            return False
        since = min(lease.acquired_at for lease in agent.leases)
        chance = finish_chance(exec_times.share_at_most, now - since, deadline - now)
        return chance < EARLY_CANCEL_BELOW

    def _reclaim(self, now: float) -> None:
        """Preemption deadlines that have come: cancel the calls still running there."""
        for agent in list(self.agents.values()):
            deadline = agent.preempt_deadline
            if deadline is None or deadline > now or agent.state is not BUSY:
                continue
            if agent.preempted:
                continue  # reclaimed already; its holders' releases retire it
            agent.preempted = True
            if agent.retire_reason is None:
                self.call_failed(agent, "preempted: its capacity was reclaimed", kill=True)

    def _swap_to_spot(self, now: float) -> None:
        """Start a spot agent to take the place of an on-demand one above the base."""
        if self.status != "running" or self._room() <= 0 or not self.breaker.may_start(now):
            return
        if self.placer.swap_target(now) is None:
            return
        if self._start(1, "swap back to spot", now, swap=True):
            self._swapping = True

    def _consolidate(self, now: float) -> None:
        """Start an agent on a cheaper placement to take a dearer one's place, when the saving
        over ``idle_timeout`` exceeds the start's cost (pool/placing.py)."""
        cold_s = self._cold_s
        if cold_s is None or self.status != "running" or self._room() <= 0:
            return  # (no start seen yet: what a move costs is not known)
        if not self.breaker.may_start(now):
            return
        move = self.placer.cheaper_target(now, self.config.idle_timeout, cold_s)
        if move is None:
            return
        src, dst = move
        why = f"consolidate: {src.name} costs more than {dst.name}"
        if self._start(1, why, now, at=dst, swap_from=src):
            self._swapping = True

    def _consolidated(self, src: Site, dst: Site, now: float) -> None:
        """An agent is up on ``dst`` in place of one on the dearer ``src``: retire that one."""
        why = f"consolidated onto {dst.name}, which costs less"
        for agent in reversed(self.idle):
            if agent.site is src:
                self.idle.remove(agent)
                self._retire(agent, why, now)
                return
        for agent in self.agents.values():
            if (
                agent.site is src
                and agent.state is BUSY
                and agent.draining is None
                and agent.retire_reason is None
                and agent.preempt_deadline is None
            ):
                agent.draining = why
                self.partial.pop(agent, None)
                return

    def _swapped(self, now: float) -> None:
        """A spot agent is up in place of an on-demand one: retire that one."""
        for agent in reversed(self.idle):
            if not agent.placement.spot:
                self.idle.remove(agent)
                self._retire(agent, "swapped for a spot agent", now)
                return
        for agent in self.agents.values():
            if (
                agent.state is BUSY
                and not agent.placement.spot
                and agent.draining is None
                and agent.retire_reason is None
            ):
                agent.draining = "swapped for a spot agent"
                self.partial.pop(agent, None)
                return

    def _event(self, kind: str, agent: PooledAgent, before: int, reason: str, now: float) -> None:
        self.events.append(ScalingEvent(now, kind, agent.agent_id, before, self.size, reason))


_LEASE_ID = operator.attrgetter("lease_id")


def agents_per_node(agents: Iterable[PooledAgent]) -> dict[str, int]:
    """How many started agents (idle, busy, checking) each node holds, for backends with nodes."""
    found: dict[str, int] = {}
    for agent in agents:
        node = agent.node
        if node is not None and agent.state in (IDLE, BUSY, CHECKING):
            found[node] = found.get(node, 0) + 1
    return found
