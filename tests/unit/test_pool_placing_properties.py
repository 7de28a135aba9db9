"""Property-based tests of placements in :class:`PoolState`: every interleaving of the pool
state machine's events (see test_pool_state.py), plus preemption notices, their deadlines,
calls re-queued at the head, placements whose starts fail and a $/h ceiling, must never spend
above the ceiling, never put more agents on a placement than its ``max_size``, answer every
caller exactly once, and lose no call."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

from shoal.config import PoolConfig
from shoal.errors import PoolAtCapacity, PoolBroken, PoolError
from shoal.pool.agent import AgentState
from shoal.pool.placement import Placement, PreemptionNotice
from shoal.pool.placing import Placer
from shoal.pool.state import Assign, PoolState
from shoal.pool.waitqueue import Waiter
from tests.unit.test_pool_state import Caller, PoolStateMachine

LIVE = (AgentState.STARTING, AgentState.IDLE, AgentState.CHECKING, AgentState.BUSY)


class PlacementMachine(PoolStateMachine):
    @initialize(
        min_size=st.integers(0, 2),
        extra=st.integers(0, 4),
        max_queue=st.none() | st.integers(0, 3),
        slots=st.sampled_from([1, 1, 2]),
        ceiling=st.none() | st.floats(0.5, 6.0),
        caps=st.lists(st.none() | st.integers(0, 3), min_size=3, max_size=3),
        prefer_spot=st.booleans(),
        fraction=st.floats(0, 1),
        base=st.integers(0, 2),
    )
    def setup(  # type: ignore[override]
        self,
        min_size: int,
        extra: int,
        max_queue: int | None,
        slots: int,
        ceiling: float | None,
        caps: list[int | None],
        prefer_spot: bool,
        fraction: float,
        base: int,
    ) -> None:
        placements = (
            Placement(name="od", price_per_hour=1.0, max_size=caps[0]),
            Placement(name="spot-a", capacity="spot", price_per_hour=0.3, max_size=caps[1]),
            Placement(name="spot-b", capacity="spot", price_per_hour=0.5, max_size=caps[2]),
        )
        self.config = PoolConfig(
            name="p",
            min_size=min_size,
            max_size=max(1, min_size + extra),
            max_queue=max_queue,
            idle_timeout=5.0,
            health_check_interval=3.0,
            crash_loop_starts=3,
            crash_loop_window=10.0,
            max_uses=4,
            heartbeat_timeout=2.0,
            max_concurrency=slots,
            placements=placements,
        )
        self.now = 0.0
        self.state = PoolState(self.config)
        self.state.placer.cost_ceiling = ceiling
        self.state.placer.set_spot(prefer_spot, fraction, base)
        self.starting = []
        self.stopping = []
        self.checking = []
        self.all_callers = []
        self.waiting_order = []
        self.served_order = []
        self.released = []
        self.requeued: list[Caller] = []
        self.n = 0
        self.state.open(self.now)
        self.perform()

    @precondition(lambda self: self.state.running)
    @rule(name=st.sampled_from(["od", "spot-a", "spot-b"]), notice=st.floats(0, 10))
    def preempt(self, name: str, notice: float) -> None:
        hit = self.state.preempt(PreemptionNotice(name, deadline=self.now + notice), self.now)
        assert all(a.placement.name == name and a.preempt_deadline is not None for a in hit)
        self.perform()

    def preempted_holders(self) -> list[Caller]:
        return [
            c
            for c in self.all_callers
            if c.lease is not None and c.lease.agent.preempt_deadline is not None
        ]

    @precondition(lambda self: bool(self.preempted_holders()))
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        """The shell's path for a call cancelled by a preemption: give the lease back and
        queue the call again, at the head."""
        caller = data.draw(st.sampled_from(self.preempted_holders()))
        lease = caller.lease
        assert lease is not None
        self.state.release(lease, self.now)
        self.released.append(lease)
        caller.lease = None
        caller.answers = 0  # its lease was an answer; the re-queued call waits for another
        self.perform()
        self.requeued.append(caller)
        try:
            again = self.state.request(self.now, head=True)
        except PoolError:
            caller.answers += 1
            return
        if again is not None:
            caller.answers += 1
            caller.lease = again
            return
        caller.waiter = Waiter(self.now, caller)
        try:
            self.state.enqueue(caller.waiter, self.now, head=True)
        except (PoolAtCapacity, PoolBroken):
            caller.answers += 1
            caller.waiter = None
            return
        first = next((a for a in self.state.actions if isinstance(a, Assign)), None)
        queue = self.state.queue
        assert queue.oldest() is caller.waiter or (first and first.waiter is caller.waiter), (
            "a re-queued call is not at the head"
        )
        self.perform()

    # -- invariants --------------------------------------------------------------------------------

    @invariant()
    def first_come_first_served(self) -> None:
        order = [c for c in self.waiting_order if c not in self.requeued]
        served = [c for c in self.served_order if c in order]
        assert served == order[: len(served)], "served out of order"

    @invariant()
    def never_above_max_size(self) -> None:
        # Agents under a notice are leaving: their replacements may start beside them.
        c = self.state.counts
        size = self.state.size + c[AgentState.STOPPING] - self.state.leaving
        assert size <= self.config.max_size

    @invariant()
    def never_over_the_cost_ceiling(self) -> None:
        placer = self.state.placer
        spend = sum(s.count * s.price for s in placer.order)
        assert math.isclose(placer.spend_rate, spend, abs_tol=1e-9)
        if placer.cost_ceiling is not None:
            assert spend <= placer.cost_ceiling + 1e-9

    @invariant()
    def never_above_a_placements_max_size(self) -> None:
        placer = self.state.placer
        for site in placer.order:
            here = [a for a in self.state.agents.values() if a.site is site]
            assert site.count == len(here)
            cap = site.placement.max_size
            assert cap is None or site.count <= cap
            serving = [a for a in here if a.state in LIVE and a.preempt_deadline is None]
            assert site.serving == len(serving)
            assert site.starting == sum(a.state is AgentState.STARTING for a in here)
        doomed = [
            a
            for a in self.state.agents.values()
            if a.state in LIVE and a.preempt_deadline is not None
        ]
        assert self.state.doomed == len(doomed)

    @invariant()
    def nothing_is_assigned_to_an_agent_under_notice(self) -> None:
        for agent in self.state.idle:
            assert agent.preempt_deadline is None
        for agent in self.state.partial:
            assert agent.preempt_deadline is None

    @invariant()
    def a_call_past_its_deadline_is_cancelled(self) -> None:
        if self.state.actions:
            return
        for agent in self.state.agents.values():
            deadline = agent.preempt_deadline
            if agent.state is AgentState.BUSY and deadline is not None and deadline < self.now:
                # tick() ran since the deadline passed (each tick runs the deadlines first)
                assert agent.retire_reason is not None or agent.draining is not None


TestPlacements = PlacementMachine.TestCase
TestPlacements.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_the_placer_alone_never_overspends_nor_overfills() -> None:
    """choose() then added() in any order with failures, notices and removals."""
    from hypothesis import given

    @given(
        ops=st.lists(st.tuples(st.sampled_from("afnr"), st.integers(0, 2)), max_size=60),
        ceiling=st.floats(0.5, 5.0),
    )
    def run(ops: list[tuple[str, int]], ceiling: float) -> None:
        placer = Placer(
            [
                Placement(name="a", price_per_hour=1.0, max_size=2),
                Placement(name="b", capacity="spot", price_per_hour=0.4, max_size=3),
                Placement(name="c", price_per_hour=0.7),
            ],
            None,
        )
        placer.cost_ceiling = ceiling
        now = 0.0
        for op, i in ops:
            now += 1.0
            site = placer.order[i]
            if op == "a":
                chosen, why = placer.choose(now)
                if chosen is None:
                    assert why in ("cost", "down", "full")
                    continue
                assert chosen.open(now) and placer.affords(chosen)
                placer.added(chosen, now)
                placer.start_ok(chosen)
            elif op == "f" and site.starting == 0 and site.count < (site.placement.max_size or 9):
                placer.added(site, now) if placer.affords(site) else None
                if site.starting:
                    placer.unserving(site)
                    placer.removed(site, now)
                    placer.start_failed(site, now)
                    assert not site.open(now)
            elif op == "n":
                placer.notice(site, now + 5, now)
                assert not site.open(now)
            elif op == "r" and site.serving:
                placer.unserving(site)
                placer.removed(site, now)
            spend = sum(s.count * s.price for s in placer.order)
            assert spend <= ceiling + 1e-9
            assert all(
                s.placement.max_size is None or s.count <= s.placement.max_size
                for s in placer.order
            )

    run()


def test_calls_under_random_preemptions_are_all_answered_once_and_spend_stays_under() -> None:
    """The whole pool (shell and state) on fake backends in virtual time: calls of random
    lengths arrive at random times while spot placements get random notices; every call
    returns its own result exactly once, and the spend rate, sampled at every event, never
    exceeds the ceiling."""
    import asyncio

    from hypothesis import given

    from shoal import AgentPool, FakeBackend
    from shoal.clock import VirtualTimeLoop

    @settings(max_examples=60, deadline=None)
    @given(
        calls=st.lists(st.tuples(st.floats(0, 20), st.floats(0.5, 30)), min_size=1, max_size=25),
        notices=st.lists(
            st.tuples(st.floats(0, 40), st.sampled_from(["spot-a", "spot-b"]), st.floats(0, 20)),
            max_size=4,
        ),
        ceiling=st.none() | st.floats(1.0, 4.0),
        prefer_spot=st.booleans(),
    )
    def run(
        calls: list[tuple[float, float]],
        notices: list[tuple[float, str, float]],
        ceiling: float | None,
        prefer_spot: bool,
    ) -> None:
        async def main() -> None:
            backends = {n: FakeBackend(start_time=1.0) for n in ("od", "spot-a", "spot-b")}
            pool = AgentPool(
                "prop",
                min_size=0,
                max_size=6,
                heartbeat_timeout=None,
                placements=[
                    {"name": "od", "price_per_hour": 1.0, "backend": backends["od"]},
                    {
                        "name": "spot-a",
                        "capacity": "spot",
                        "price_per_hour": 0.3,
                        "max_size": 2,
                        "backend": backends["spot-a"],
                    },
                    {
                        "name": "spot-b",
                        "capacity": "spot",
                        "price_per_hour": 0.5,
                        "backend": backends["spot-b"],
                    },
                ],
            )
            over: list[float] = []

            async def one(i: int, at: float, length: float) -> int:
                await asyncio.sleep(at)
                await pool.run(asyncio.sleep, length)
                rate = pool.cost_per_hour
                if ceiling is not None and rate > ceiling + 1e-9:
                    over.append(rate)
                return i

            async def preempt(at: float, name: str, notice: float) -> None:
                await asyncio.sleep(at)
                loop = asyncio.get_running_loop()
                pool.preempt(PreemptionNotice(name, deadline=loop.time() + notice))
                if ceiling is not None and pool.cost_per_hour > ceiling + 1e-9:
                    over.append(pool.cost_per_hour)

            async with pool:
                if ceiling is not None:
                    pool.set_cost_ceiling(ceiling)
                pool.set_spot(prefer_spot, spot_fraction=0.8, on_demand_base=0)
                tasks = [asyncio.ensure_future(one(i, a, n)) for i, (a, n) in enumerate(calls)]
                sent = [asyncio.ensure_future(preempt(*n)) for n in notices]
                done = await asyncio.wait_for(asyncio.gather(*tasks), 10_000)
                for task in sent:
                    task.cancel()
                await asyncio.gather(*sent, return_exceptions=True)
            assert done == list(range(len(calls)))  # each answered once, with its own result
            assert not over, f"spend {max(over)} $/h over the ceiling {ceiling}"

        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            runner.run(main())

    run()


def test_a_placement_is_judged_down_only_when_its_agents_go_together_or_its_starts_fail() -> None:
    """Losses at random times in two placements of random sizes: a loss is judged a placement
    failure exactly when, within LOST_TOGETHER_S of it, at least two and at least half of that
    placement's agents were lost, or its starts were failing then; never for one agent lost
    alone in a placement that starts agents, whatever the other placement does."""
    from hypothesis import given

    from shoal.pool.placing import LOST_SHARE, LOST_TOGETHER_S

    @given(
        sizes=st.tuples(st.integers(1, 8), st.integers(1, 8)),
        losses=st.lists(
            st.tuples(st.integers(0, 1), st.floats(0, 20, allow_nan=False)), max_size=12
        ),
    )
    def run(sizes: tuple[int, int], losses: list[tuple[int, float]]) -> None:
        placer = Placer([Placement(name="a"), Placement(name="b")], 1.0)
        for site, n in zip(placer.order, sizes, strict=True):
            for _ in range(n):
                placer.added(site, 0.0)
                placer.start_ok(site)
        seen: list[tuple[int, float]] = []
        for i, t in sorted(losses, key=lambda x: x[1]):
            site = placer.order[i]
            if site.count == 0:
                continue
            was_failing = site.failures > 0 and site.down_until >= t
            placer.lost(site, t)
            seen.append((i, t))
            site.count -= 1  # the dead agent is stopped
            near = [u for j, u in seen if j == i and abs(u - t) <= LOST_TOGETHER_S]
            together = len(near) >= 2
            judged = placer.failed_at(site, t)
            if not together and not was_failing:
                assert not judged
            if together and len(near) >= LOST_SHARE * sizes[i]:
                assert judged

    run()

    one = Placer([Placement(name="only")], 1.0)
    site = one.order[0]
    for _ in range(3):
        one.added(site, 0.0)
    for _ in range(3):
        one.lost(site, 1.0)
    assert not one.failed_at(site, 1.0)  # one placement: nowhere to fail over to


def test_the_chance_a_call_under_notice_finishes_is_a_conditional_probability() -> None:
    """finish_chance over the pool's run-time window: within [0, 1]; never lower for more time
    left; 0 for a call that has outrun every call seen, 1 when every longer call seen would
    have finished in the time left."""
    import bisect

    from hypothesis import given

    from shoal.pool.metrics import Window
    from shoal.pool.placing import finish_chance

    @given(
        runs=st.lists(st.floats(0.001, 100.0), min_size=1, max_size=40),
        elapsed=st.floats(0.0, 120.0),
        left=st.floats(0.0, 60.0),
        more=st.floats(0.0, 60.0),
    )
    def run(runs: list[float], elapsed: float, left: float, more: float) -> None:
        window = Window()
        for r in runs:
            window.append(r)
        chance = finish_chance(window.share_at_most, elapsed, left)
        assert 0.0 <= chance <= 1.0 + 1e-12
        assert finish_chance(window.share_at_most, elapsed, left + more) >= chance - 1e-12
        ordered = sorted(runs)
        longer = ordered[bisect.bisect_right(ordered, elapsed) :]
        if not longer:
            assert chance == 0.0
        elif longer[-1] <= elapsed + left:
            assert chance == 1.0

    run()
