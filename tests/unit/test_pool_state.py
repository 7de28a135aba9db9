"""Property-based tests of :class:`PoolState`, driven directly with random interleavings.

Requests, releases (stale and second ones included), calls and their replies, timeouts and
cancels, agent deaths, starts that succeed or fail, health checks, resizes, ticks of time and
closing — in any order — must never exceed ``max_size``, must serve waiting callers first come,
first served, must answer every caller exactly once, and must never leave one agent in two hands.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from shoal.config import PoolConfig
from shoal.errors import AgentLost, PoolAtCapacity, PoolBroken, PoolError
from shoal.pool.agent import AgentState, Lease, PooledAgent
from shoal.pool.depth import MAX_AHEAD, QUEUE_BUDGET_S, RUN_WINDOW
from shoal.pool.state import Assign, Check, Kill, Log, PoolState, Recall, Reject, Start, Stop
from shoal.pool.waitqueue import Waiter


class Handle:
    def __init__(self) -> None:
        self.exit_code: int | None = None


class Caller:
    """One caller: it waits, holds a lease, or is done; ``answers`` counts its answers."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.waiter: Waiter | None = None
        self.lease: Lease | None = None
        self.answers = 0
        self.gone = False  # gave up (timeout, cancel) while waiting
        self.owned = False  # the pool sends its call (not a get_agent() holder)


class PoolStateMachine(RuleBasedStateMachine):
    prefetch = False  # subclasses that set their pools up themselves keep prefetch off

    def __init__(self) -> None:
        super().__init__()
        self.rewaiting: list[Caller] = []  # taken back, waiting again in their place
        # Each agent's service times, kept here as the pool should see them (pool/depth.py):
        # from the later of a call's send and the previous call's end on that agent.
        self.service: dict[PooledAgent, list[float]] = {}
        self.last_end: dict[PooledAgent, float] = {}

    @initialize(
        min_size=st.integers(0, 2),
        extra=st.integers(0, 3),
        max_queue=st.none() | st.integers(0, 3),
        on_demand=st.booleans(),
        mru=st.booleans(),
        slots=st.sampled_from([1, 1, 2, 3]),
        prefetch=st.booleans(),
    )
    def setup(
        self,
        min_size: int,
        extra: int,
        max_queue: int | None,
        on_demand: bool,
        mru: bool,
        slots: int,
        prefetch: bool,
    ) -> None:
        self._setup(min_size, extra, max_queue, on_demand, mru, slots, prefetch)

    def _setup(
        self,
        min_size: int,
        extra: int,
        max_queue: int | None,
        on_demand: bool,
        mru: bool,
        slots: int,
        prefetch: bool,
        max_uses: int | None = 4,
    ) -> None:
        self.config = PoolConfig(
            name="p",
            min_size=min_size,
            max_size=max(1, min_size + extra),
            max_queue=max_queue,
            on_demand=on_demand,
            assignment="mru" if mru else "round_robin",
            idle_timeout=5.0,
            health_check_interval=3.0,
            crash_loop_starts=3,
            crash_loop_window=10.0,
            max_uses=max_uses,
            heartbeat_timeout=2.0,
            max_concurrency=slots,
        )
        self.now = 0.0
        self.state = PoolState(self.config)
        # Prefetch: a second (queued) lease on a busy one-call agent, for prefetchable callers.
        self.state.prefetch = self.prefetch = prefetch and slots == 1
        self.starting: list[PooledAgent] = []
        self.stopping: list[PooledAgent] = []
        self.checking: list[PooledAgent] = []
        self.all_callers: list[Caller] = []
        self.waiting_order: list[Caller] = []  # callers in the order they queued
        # Queued callers in the order they were first served (a call queued on a busy agent
        # counts as served; taken back, it keeps that place).
        self.served_order: list[Caller] = []
        self.released: list[Lease] = []
        self.n = 0
        self.state.open(self.now)
        self.perform()

    # -- the shell's part, done synchronously --------------------------------------------------

    def perform(self) -> None:
        st_ = self.state
        while st_.actions:
            actions, st_.actions = st_.actions, []
            for action in actions:
                if isinstance(action, Assign):
                    caller: Caller = action.waiter.token
                    assert caller.waiter is action.waiter
                    self.check_depth(action.lease)
                    assert caller.lease is None
                    caller.answers += 1
                    if caller not in self.served_order:  # (a recalled one was, first)
                        self.served_order.append(caller)
                    if caller in self.rewaiting:
                        self.rewaiting.remove(caller)
                    for other in self.rewaiting:  # taken back, it waits ahead of later ones
                        w = other.waiter
                        assert (
                            w is None
                            or w not in st_.queue
                            or (w.enqueued_at >= action.waiter.enqueued_at)
                        ), f"caller {other.n}, taken back, lost its place to {caller.n}"
                    if caller.gone:  # left in the same pass: the shell gives it back unused
                        st_.release(action.lease, self.now, used=False)
                        self.released.append(action.lease)
                    else:
                        caller.lease = action.lease
                    caller.waiter = None
                elif isinstance(action, Reject):
                    caller = action.waiter.token
                    caller.answers += 1
                    caller.waiter = None
                    if caller in self.waiting_order:
                        self.waiting_order.remove(caller)
                elif isinstance(action, Start):
                    assert action.agent.state is AgentState.STARTING
                    self.starting.append(action.agent)
                elif isinstance(action, Stop):
                    assert action.agent.state is AgentState.STOPPING
                    assert action.agent not in self.stopping
                    self.stopping.append(action.agent)
                elif isinstance(action, Kill):
                    assert action.agent.state is AgentState.BUSY
                    if action.agent.handle is not None:
                        action.agent.handle.exit_code = -9
                elif isinstance(action, Check):
                    assert action.agent.state is AgentState.CHECKING
                    self.checking.append(action.agent)
                elif isinstance(action, Recall):
                    # The shell asks the agent not to start that call; its caller still holds
                    # the lease until the answer (not started: released unused, asked again).
                    lease = action.lease
                    assert lease.prefetched and lease.recalled and not lease.released
                    (owner,) = [c for c in self.all_callers if c.lease is lease]
                    # Taken back unstarted: its caller gives the lease back unused and waits
                    # again in the place it kept (lease.rewait, ahead of later callers).
                    assert lease.rewait is not None  # queued, or handed an agent just now
                    assert lease.rewait.enqueued_at == lease.waited_from
                    lease.rewait.token = owner
                    owner.lease = None
                    owner.waiter = lease.rewait
                    owner.answers -= 1  # its one answer is still to come
                    # It keeps the place it was first served in: a later caller may have
                    # been handed a free agent meanwhile, as it waited queued on a busy one.
                    self.rewaiting.append(owner)
                    st_.release(lease, self.now, used=False)
                    self.released.append(lease)
                else:
                    assert isinstance(action, Log)

    # -- callers ---------------------------------------------------------------------------------

    @rule()
    def request(self) -> None:
        self._request(self.n % 3 != 1)

    def _request(self, prefetchable: bool) -> None:
        self.n += 1
        caller = Caller(self.n)
        self.all_callers.append(caller)
        # A prefetchable caller is the pool's own call (run/call/map); the others stand for
        # get_agent()/acquire() holders too, whose agent nothing may be prefetched onto.
        caller.owned = prefetchable
        try:
            lease = self.state.request(self.now, owned=prefetchable)
        except PoolError:
            caller.answers += 1
            return
        if lease is not None:
            assert not self.waiting_now(), "served ahead of callers already waiting"
            caller.answers += 1
            caller.lease = lease
            return
        caller.waiter = Waiter(self.now, caller, prefetchable=prefetchable)
        try:
            self.state.enqueue(caller.waiter, self.now)
        except (PoolAtCapacity, PoolBroken):
            caller.answers += 1
            caller.waiter = None
            return
        self.waiting_order.append(caller)
        self.perform()

    def waiting_now(self) -> list[Caller]:
        return [c for c in self.all_callers if c.waiter is not None and not c.gone]

    def holders(self) -> list[Caller]:
        return [c for c in self.all_callers if c.lease is not None]

    @precondition(lambda self: bool(self.waiting_now()))
    @rule(data=st.data())
    def give_up_waiting(self, data: st.DataObject) -> None:
        caller = data.draw(st.sampled_from(self.waiting_now()))
        assert caller.waiter is not None
        caller.gone = True
        assert self.state.abandon(caller.waiter)
        caller.waiter = None
        caller.answers += 1  # the timeout or cancel is its answer
        if caller in self.waiting_order:  # (a call re-queued at the head is not in it)
            self.waiting_order.remove(caller)
        self.perform()

    @precondition(lambda self: bool(self.holders()))
    @rule(data=st.data(), used=st.booleans())
    def release(self, data: st.DataObject, used: bool) -> None:
        caller = data.draw(st.sampled_from(self.holders()))
        lease = caller.lease
        assert lease is not None
        self.state.release(lease, self.now, used=used)
        self.released.append(lease)
        caller.lease = None
        self.perform()

    @precondition(lambda self: bool(self.released))
    @rule(data=st.data())
    def stale_release(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.released))
        before = (dict(self.state.counts), len(self.state.queue), list(self.state.idle))
        held = {a.agent_id: set(a.leases) for a in self.state.agents.values()}
        self.state.release(lease, self.now)
        assert not self.state.actions, "a stale release did something"
        after = (dict(self.state.counts), len(self.state.queue), list(self.state.idle))
        assert before == after
        assert held == {a.agent_id: set(a.leases) for a in self.state.agents.values()}
        assert self.state.lease_error(lease) is not None

    def check_depth(self, lease: Lease) -> None:
        """A call queued behind two or more on an agent: only while that agent's calls are
        tiny (pool/depth.py), from the service times this model kept itself."""
        ahead = len(lease.agent.leases) - 1
        if not lease.prefetched or ahead <= 1:
            return
        times = self.service.get(lease.agent, [])[-RUN_WINDOW:]
        assert ahead <= MAX_AHEAD, f"{ahead} calls ahead of a queued one"
        assert len(times) == RUN_WINDOW, "queued deep without a window of service times"
        mean = sum(times) / RUN_WINDOW
        assert ahead * mean <= QUEUE_BUDGET_S * (1 + 1e-9), f"{ahead} ahead x {mean} s"

    @precondition(lambda self: bool(self.holders()))
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["ok", "lost", "timeout", "abandoned"]),
        took=st.sampled_from([0.0, 10e-6, 60e-6, 250e-6, 2e-3]),
    )
    def call(self, data: st.DataObject, outcome: str, took: float) -> None:
        caller = data.draw(st.sampled_from(self.holders()))
        lease = caller.lease
        assert lease is not None
        try:
            agent = self.state.begin_call(lease, self.now)
        except AgentLost:
            assert lease.agent.retire_reason is not None or lease.agent.state is not AgentState.BUSY
            return
        assert agent.state is AgentState.BUSY and lease in agent.leases
        self.perform()  # as the shell does once the call is sent: prefetches behind it
        if outcome != "ok":
            self.state.call_failed(agent, outcome, kill=True)
        sent, self.now = self.now, self.now + took
        self.state.end_call(lease, sent, self.now, outcome != "ok")
        if self.prefetch and not lease.recalled:
            start = max(self.last_end.get(agent, float("-inf")), sent)
            self.service.setdefault(agent, []).append(max(0.0, self.now - start))
            self.last_end[agent] = self.now
        self.perform()

    # -- agents ------------------------------------------------------------------------------------

    @precondition(lambda self: bool(self.starting))
    @rule(data=st.data(), ok=st.booleans())
    def finish_start(self, data: st.DataObject, ok: bool) -> None:
        agent = data.draw(st.sampled_from(self.starting))
        self.starting.remove(agent)
        if ok:
            self.state.agent_started(agent, Handle(), self.now)
        else:
            self.state.start_failed(agent, RuntimeError("no"), self.now)
        self.perform()

    @precondition(lambda self: bool(self.stopping))
    @rule(data=st.data())
    def finish_stop(self, data: st.DataObject) -> None:
        agent = data.draw(st.sampled_from(self.stopping))
        self.stopping.remove(agent)
        self.state.agent_stopped(agent, self.now)
        self.perform()

    @precondition(lambda self: bool(self.checking))
    @rule(data=st.data(), ok=st.booleans())
    def finish_check(self, data: st.DataObject, ok: bool) -> None:
        agent = data.draw(st.sampled_from(self.checking))
        self.checking.remove(agent)
        self.state.check_done(agent, ok, self.now)
        self.perform()

    def live_agents(self) -> list[PooledAgent]:
        return [
            a
            for a in self.state.agents.values()
            if a.handle is not None and a.alive and a.state is not AgentState.STOPPING
        ]

    @precondition(lambda self: bool(self.live_agents()))
    @rule(data=st.data())
    def agent_dies(self, data: st.DataObject) -> None:
        agent = data.draw(st.sampled_from(self.live_agents()))
        agent.handle.exit_code = -9
        self.state.agent_exited(agent, self.now)
        self.perform()

    @precondition(lambda self: bool(self.state.calls_in_flight()))
    @rule(data=st.data(), seconds=st.floats(0, 5))
    def liveness(self, data: st.DataObject, seconds: float) -> None:
        busy = self.state.calls_in_flight()
        self.state.unresponsive(data.draw(st.sampled_from(busy)), seconds, self.now)
        self.perform()

    # -- time and size -----------------------------------------------------------------------------

    @rule(dt=st.floats(0, 8))
    def tick(self, dt: float) -> None:
        self.now += dt
        deadline = self.state.tick(self.now)
        assert deadline >= self.now or self.state.actions
        self.perform()

    @precondition(lambda self: self.state.running)
    @rule(data=st.data())
    def resize(self, data: st.DataObject) -> None:
        size = data.draw(st.integers(self.config.min_size, self.config.max_size))
        self.state.set_target(size, "test", self.now, None)
        self.perform()

    @precondition(lambda self: self.state.running)
    @rule()
    def close(self) -> None:
        self.state.close(self.now)
        self.perform()

    # -- invariants --------------------------------------------------------------------------------

    @invariant()
    def never_above_max_size(self) -> None:
        c = self.state.counts
        assert self.state.size + c[AgentState.STOPPING] <= self.config.max_size

    @invariant()
    def counts_match_agents(self) -> None:
        counted = dict.fromkeys(AgentState, 0)
        for agent in self.state.agents.values():
            counted[agent.state] += 1
        counted[AgentState.STOPPED] = self.state.counts[AgentState.STOPPED]
        assert counted == self.state.counts
        idle = list(self.state.idle)
        assert len(idle) == len(set(idle)) == self.state.counts[AgentState.IDLE]
        assert all(a.state is AgentState.IDLE for a in idle)

    @invariant()
    def no_agent_in_more_hands_than_it_has_slots(self) -> None:
        holders = [c for c in self.all_callers if c.lease is not None]
        leases = [c.lease for c in holders if c.lease is not None]
        assert len(leases) == len(set(leases)), "one lease held by two callers"
        per_agent: dict[PooledAgent, int] = {}
        for lease in leases:
            per_agent[lease.agent] = per_agent.get(lease.agent, 0) + 1
            if lease.agent.state is AgentState.BUSY:
                assert lease in lease.agent.leases
        slots = self.config.max_concurrency + (MAX_AHEAD if self.prefetch else 0)
        assert all(n <= slots for n in per_agent.values()), "an agent held past its slots"
        for agent in self.state.agents.values():
            assert len(agent.leases) <= slots
            if agent.state is AgentState.BUSY:
                assert agent.leases and all(not x.released for x in agent.leases)
                assert all(any(c.lease is x for c in holders) for x in agent.leases)
            else:
                assert not agent.leases
            if agent in self.state.partial:
                assert agent.state is AgentState.BUSY and len(agent.leases) < slots
                assert agent.retire_reason is None and agent.draining is None
        assert self.state._held == sum(len(a.leases) for a in self.state.agents.values())

    @invariant()
    def prefetched_calls_wait_only_behind_a_call_and_never_beside_a_free_agent(self) -> None:
        st_ = self.state
        for lease in st_.queued:
            assert self.prefetch and lease.prefetched and not lease.released
            assert lease.agent.state is AgentState.BUSY
            assert 2 <= len(lease.agent.leases) <= MAX_AHEAD + 1
            ahead = [c for c in self.all_callers if c.lease in lease.agent.leases - {lease}]
            assert ahead and all(c.owned for c in ahead), (
                "a call prefetched onto an agent held with get_agent()"
            )
            assert any(c.lease is lease and c.waiter is None for c in self.all_callers)
        for agent in st_.agents.values():
            assert agent.queued_calls == sum(1 for x in agent.leases if x in st_.queued)
        if st_.queued:
            # Every agent that is free has a recalled call coming to it.
            recalled = [c for c in self.holders() if c.lease is not None and c.lease.recalled]
            assert len(st_.idle) <= len(recalled), "a call waits behind another beside a free agent"

    @invariant()
    def no_idle_capacity_while_callers_wait(self) -> None:
        if self.state.queue:
            assert not self.state.idle and not self.state.partial, "a caller waits beside room"

    @invariant()
    def first_come_first_served(self) -> None:
        served = [c for c in self.served_order if c in self.waiting_order]
        assert served == self.waiting_order[: len(served)], "served out of order"

    @invariant()
    def every_caller_answered_at_most_once(self) -> None:
        for c in self.all_callers:
            assert c.answers <= 1, f"caller {c.n} answered {c.answers} times"
            if c.waiter is not None:
                assert c.answers == 0 and c.waiter in self.state.queue

    def teardown(self) -> None:
        """Let every caller finish and every agent settle: each caller got exactly one answer."""
        if not hasattr(self, "state"):
            return
        st_ = self.state
        for c in self.all_callers:
            if c.lease is not None:
                st_.release(c.lease, self.now)
                c.lease = None
        if st_.running:
            st_.close(self.now)
        st_.close_busy(self.now)
        self.perform()
        for _ in range(100):
            if not (self.starting or self.stopping or self.checking):
                break
            for agent in self.starting:
                st_.agent_started(agent, Handle(), self.now)
            for agent in self.checking:
                st_.check_done(agent, True, self.now)
            self.starting, self.checking = [], []
            self.perform()
            for agent in self.stopping:
                st_.agent_stopped(agent, self.now)
            self.stopping = []
            self.perform()
        assert not st_.agents, st_.agents
        assert not st_.queue
        for c in self.all_callers:
            assert c.answers == 1, f"caller {c.n} answered {c.answers} times"


# 300 examples of 60 steps take ~30 s on an idle machine and ~60 s at a load of 12: pure state,
# nothing here can hang, so these get room beyond the suite's 60-s timeout.
SLOW_PROPERTY_S = 300

TestPoolState = PoolStateMachine.TestCase
TestPoolState.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPoolState.pytestmark = [pytest.mark.timeout(SLOW_PROPERTY_S)]


class PrefetchMachine(PoolStateMachine):
    """The same rules and invariants, on pools where prefetch is always on: small one-call
    pools that are often all busy with callers waiting."""

    @initialize(min_size=st.integers(2, 3), extra=st.integers(0, 1), mru=st.booleans())
    def setup(self, min_size: int, extra: int, mru: bool) -> None:  # type: ignore[override]
        self._setup(min_size, extra, None, True, mru, 1, True)
        for agent in self.starting:  # start warm
            self.state.agent_started(agent, Handle(), self.now)
        self.starting = []
        self.perform()

    @rule(prefetchable=st.lists(st.booleans(), min_size=3, max_size=3))
    def burst(self, prefetchable: list[bool]) -> None:
        """Callers arriving together: the way a pool gets all busy with callers waiting."""
        for p in prefetchable:
            self._request(p)

    @precondition(lambda self: bool(self.holders()))
    @rule(data=st.data())
    def finish_one(self, data: st.DataObject) -> None:
        """A call ends and its caller gives the agent back (the shell's common path)."""
        self.release(data, True)


TestPrefetch = PrefetchMachine.TestCase
TestPrefetch.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPrefetch.pytestmark = [pytest.mark.timeout(SLOW_PROPERTY_S)]


class DeepPrefetchMachine(PrefetchMachine):
    """Prefetch with no max_uses, so that lines can grow past one queued call: bursts of
    callers on agents whose calls take from nothing to 2 ms."""

    @initialize(
        min_size=st.integers(1, 2),
        extra=st.integers(0, 1),
        mru=st.booleans(),
        took=st.sampled_from([0.0, 20e-6, 120e-6, 2e-3]),
    )
    def setup(  # type: ignore[override]
        self, min_size: int, extra: int, mru: bool, took: float
    ) -> None:
        self._setup(min_size, extra, None, True, mru, 1, True, max_uses=None)
        for agent in self.starting:
            self.state.agent_started(agent, Handle(), self.now)
        self.starting = []
        self.perform()
        # A history of calls on every agent, so that lines may grow from the start.
        for _ in range(RUN_WINDOW * len(self.state.agents)):
            self._request(True)
            (caller,) = self.holders()
            self._run_and_release(caller, took)

    def _run_and_release(self, caller: Caller, took: float) -> None:
        lease = caller.lease
        assert lease is not None
        try:
            agent = self.state.begin_call(lease, self.now)
        except (AgentLost, PoolError):
            return
        self.perform()  # as the shell does once the call is sent: prefetches behind it
        sent, self.now = self.now, self.now + took
        self.state.end_call(lease, sent, self.now, False)
        if not lease.recalled:
            start = max(self.last_end.get(agent, float("-inf")), sent)
            self.service.setdefault(agent, []).append(max(0.0, self.now - start))
            self.last_end[agent] = self.now
        self.perform()
        if caller.lease is lease:
            self.state.release(lease, self.now)
            self.released.append(lease)
            caller.lease = None
            self.perform()

    @rule(prefetchable=st.lists(st.booleans(), min_size=6, max_size=20))
    def big_burst(self, prefetchable: list[bool]) -> None:
        for p in prefetchable:
            self._request(p)

    @precondition(lambda self: bool(self.holders()))
    @rule(data=st.data(), n=st.integers(1, 20), took=st.sampled_from([0.0, 20e-6, 120e-6]))
    def many_calls(self, data: st.DataObject, n: int, took: float) -> None:
        """Calls that end as fast as they are sent: each holder runs one and gives it back."""
        for _ in range(n):
            holders = self.holders()
            if not holders:
                return
            self._run_and_release(data.draw(st.sampled_from(holders)), took)


TestDeepPrefetch = DeepPrefetchMachine.TestCase
TestDeepPrefetch.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestDeepPrefetch.pytestmark = [pytest.mark.timeout(SLOW_PROPERTY_S)]
