"""Placements, spot preemption and the $/h ceiling, on fake backends in virtual time."""

from __future__ import annotations

import asyncio

import pytest

from shoal import (
    AgentPool,
    ConfigError,
    FakeBackend,
    Placement,
    PoolError,
    Preempted,
    PreemptionNotice,
)
from shoal.errors import AgentStartError
from shoal.pool.placement import DEFAULT_PRICE_PER_HOUR, SPOT_PRICE_FACTOR
from shoal.scaling.autoscaler import AutoScaler


def pool_of(*placements: Placement | dict[str, object], **options: object) -> AgentPool:
    options.setdefault("min_size", 0)
    options.setdefault("max_size", 8)
    return AgentPool("p", backend=FakeBackend(), placements=list(placements), **options)  # type: ignore[arg-type]


async def on_spot(pool: AgentPool, n: int = 1) -> None:
    """Put ``n`` agents on spot: prefer it for every agent."""
    pool.set_spot(True, spot_fraction=1.0, on_demand_base=0)
    await pool.resize(n)
    assert all(a.placement.spot for a in pool.agents)


def who() -> str:
    return "ok"


async def work(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


# -- configuration -----------------------------------------------------------------------------


def test_a_pool_without_placements_has_one_on_demand_placement_on_its_own_backend() -> None:
    backend = FakeBackend()
    pool = AgentPool("p", backend=backend)
    (only,) = pool.placements
    assert only.capacity == "on_demand" and only.backend is None
    assert pool.unit_price == DEFAULT_PRICE_PER_HOUR


def test_placements_parse_from_pool_config_lists_and_regions() -> None:
    pool = AgentPool.from_config(
        "p",
        {
            "placements": [{"region": "eu", "capacity": "spot", "max_size": 3}],
            "regions": {"us": {"price_per_hour": 0.5, "rtt_ms": 80}},
            "price_per_hour": 0.2,
        },
        backend=FakeBackend(),
    )
    names = [p.name for p in pool.placements]
    assert names == ["eu-spot", "us-on_demand"]
    spot, us = pool.placements
    # A spot placement without a price costs the documented fraction of the pool's price.
    assert spot.price(0.2) == pytest.approx(0.2 * SPOT_PRICE_FACTOR) and spot.notice_s == 120
    assert us.region == "us" and us.rtt_ms == 80 and us.price(0.2) == 0.5


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"placements": [{"capcity": "spot"}]}, "unknown key 'capcity' (did you mean 'capacity'?)"),
        ({"placements": [{}, {}]}, "two placements are named 'local-on_demand'"),
        ({"placements": [{"capacity": "reserved"}]}, "capacity"),
        ({"placements": {"region": "us"}}, "must be a list of placements"),
        ({"regions": {"us": {"region": "eu"}}}, "says region='eu'"),
        ({"regions": ["us"]}, "must map each region"),
        ({"placements": [{"max_size": -1}]}, "max_size"),
    ],
)
def test_bad_placements_fail_in_one_line_naming_what_and_how(
    options: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError) as err:
        AgentPool.from_config("p", options)
    text = str(err.value)
    assert fragment in text and "\n" not in text and text.startswith("pool 'p' pool_config:")


# -- where new agents go -----------------------------------------------------------------------


async def test_new_agents_go_to_the_cheapest_on_demand_placement_with_room() -> None:
    cheap, dear = FakeBackend(), FakeBackend()
    pool = pool_of(
        {"name": "dear", "price_per_hour": 2.0, "backend": dear},
        {"name": "cheap", "price_per_hour": 1.0, "max_size": 2, "backend": cheap},
        min_size=3,
    )
    async with pool:
        where = sorted(a.placement.name for a in pool.agents)
        assert where == ["cheap", "cheap", "dear"]
        assert len(cheap.started) == 2 and len(dear.started) == 1  # each on its backend
        assert pool.cost_per_hour == pytest.approx(4.0)


async def test_a_latency_target_keeps_far_placements_for_when_near_ones_are_full() -> None:
    pool = pool_of(
        {"name": "far", "price_per_hour": 0.5, "rtt_ms": 150},
        {"name": "near", "price_per_hour": 1.0, "rtt_ms": 5, "max_size": 1},
        min_size=2,
        rtt_target_ms=50,
    )
    async with pool:
        assert [a.placement.name for a in pool.agents] == ["near", "far"]


async def test_prefer_spot_keeps_the_base_on_demand_and_most_of_the_rest_on_spot() -> None:
    pool = pool_of(
        {"name": "od", "price_per_hour": 1.0},
        {"name": "spot", "capacity": "spot", "price_per_hour": 0.3},
        min_size=0,
        max_size=20,
    )
    async with pool:
        pool.set_spot(True, spot_fraction=0.8, on_demand_base=2)
        await pool.resize(12)
        spot = sum(a.placement.spot for a in pool.agents)
        assert 12 - spot >= 2  # the base
        assert spot == round(0.8 * 10)  # ~spot_fraction of the 10 above it


async def test_without_prefer_spot_spot_capacity_is_only_a_fallback() -> None:
    pool = pool_of(
        {"name": "od", "price_per_hour": 1.0, "max_size": 2},
        {"name": "spot", "capacity": "spot", "price_per_hour": 0.3},
        min_size=3,
    )
    async with pool:
        assert sorted(a.placement.name for a in pool.agents) == ["od", "od", "spot"]


async def test_a_placement_whose_starts_fail_is_skipped_then_retried_and_no_call_is_lost() -> None:
    broken, good = FakeBackend(), FakeBackend(call_time=1.0)
    broken.fail_next_starts(1000, AgentStartError("region down"))
    pool = pool_of(
        {"name": "broken", "price_per_hour": 0.5, "backend": broken},
        {"name": "good", "price_per_hour": 1.0, "backend": good},
        min_size=0,
        max_size=12,
    )
    async with pool:
        results = await asyncio.gather(*(pool.run(work, 0.0) for _ in range(6)))
        assert results == ["done"] * 6
        assert all(a.placement.name == "good" for a in pool.agents)
        tried = len(broken._start_faults)
        await asyncio.sleep(120)  # the back-off runs out: the broken placement is tried again
        await pool.resize(pool.size + 1)
        assert len(broken._start_faults) < tried
        assert not pool.broken


# -- preemption ----------------------------------------------------------------------------------


async def test_a_preempted_call_is_requeued_at_the_head_and_answered_elsewhere() -> None:
    # Calls on spot take 100 s; the on-demand replacement takes 60 s to start, so it is not up
    # before the notice's deadline and both callers wait for it.
    spot, od = FakeBackend(call_time=100.0), FakeBackend(start_time=60.0)
    pool = pool_of(
        {"name": "spot", "capacity": "spot", "price_per_hour": 0.3, "max_size": 1, "backend": spot},
        {"name": "od", "price_per_hour": 1.0, "backend": od},
        min_size=0,
        max_size=1,
    )
    async with pool:
        await on_spot(pool)
        (first,) = pool.agents
        assert first.placement.name == "spot"
        long_call = asyncio.create_task(pool.run(who))
        await asyncio.sleep(1)
        waiting = asyncio.create_task(pool.run(who))  # queued behind it (max_size=1)
        await asyncio.sleep(1)
        loop = asyncio.get_running_loop()
        hit = pool.preempt(PreemptionNotice("spot", deadline=loop.time() + 30, source="test"))
        assert hit == [first]
        order: list[str] = []
        long_call.add_done_callback(lambda _: order.append("preempted call"))
        waiting.add_done_callback(lambda _: order.append("waiting call"))
        assert await long_call == "ok" and await waiting == "ok"
        # The preempted call went ahead of the caller that had waited since before it.
        assert order[0] == "preempted call"
        m = pool.metrics
        assert m.requeued == 1 and m.preemptions == 1
        assert m.requests_total == 2  # the re-queue is not a new request
        assert first.agent_id not in [a.agent_id for a in pool.agents]


async def test_a_call_that_finishes_within_the_notice_is_not_requeued() -> None:
    pool = pool_of({"name": "spot", "capacity": "spot"}, {"name": "od"})
    async with pool:
        await on_spot(pool)
        call = asyncio.create_task(pool.run(work, 5.0))
        await asyncio.sleep(1)
        pool.preempt(PreemptionNotice("spot", deadline=asyncio.get_running_loop().time() + 30))
        assert await call == "done"
        assert pool.metrics.requeued == 0


async def test_a_call_expected_to_outlast_the_notice_is_requeued_at_once() -> None:
    # Calls here take 100 s; the notice gives 30: the running call cannot finish, so it is
    # cancelled and re-queued now, not at the deadline, and answered on demand.
    spot = FakeBackend(call_time=100.0)
    pool = pool_of(
        {"name": "spot", "capacity": "spot", "price_per_hour": 0.3, "backend": spot},
        {"name": "od", "price_per_hour": 1.0},
    )
    async with pool:
        await on_spot(pool)
        assert await pool.run(who) == "ok"  # the pool learns how long a call takes
        call = asyncio.create_task(pool.run(who))
        await asyncio.sleep(1)
        loop = asyncio.get_running_loop()
        pool.preempt(PreemptionNotice("spot", deadline=loop.time() + 30))
        await asyncio.sleep(1)
        assert pool.metrics.requeued == 1  # 28 s before the deadline
        assert await call == "ok"


async def test_a_call_expected_to_finish_within_the_notice_runs_on() -> None:
    spot = FakeBackend(call_time=5.0)
    pool = pool_of(
        {"name": "spot", "capacity": "spot", "price_per_hour": 0.3, "backend": spot},
        {"name": "od", "price_per_hour": 1.0},
    )
    async with pool:
        await on_spot(pool)
        assert await pool.run(who) == "ok"
        call = asyncio.create_task(pool.run(who))
        await asyncio.sleep(1)
        pool.preempt(PreemptionNotice("spot", deadline=asyncio.get_running_loop().time() + 30))
        assert await call == "ok"
        assert pool.metrics.requeued == 0
        assert sum(spot.calls_by_agent.values()) == 2  # it finished where it ran


async def test_on_preempt_fail_raises_preempted_instead_of_running_twice() -> None:
    spot = FakeBackend(call_time=100.0)
    pool = pool_of({"name": "spot", "capacity": "spot", "backend": spot}, {"name": "od"})
    async with pool:
        await on_spot(pool)
        call = asyncio.create_task(pool.call(who, on_preempt="fail"))
        await asyncio.sleep(1)
        pool.preempt(PreemptionNotice("spot", deadline=asyncio.get_running_loop().time() + 5))
        with pytest.raises(Preempted) as err:
            await call
        assert err.value.delivered
        assert pool.metrics.requeued == 0


async def test_a_notice_replaces_idle_agents_at_once_and_takes_them_out_of_service() -> None:
    pool = pool_of(
        {"name": "a", "capacity": "spot", "price_per_hour": 0.3},
        {"name": "b", "capacity": "spot", "price_per_hour": 0.4},
        min_size=3,
    )
    async with pool:
        assert {a.placement.name for a in pool.agents} == {"a"}
        loop = asyncio.get_running_loop()
        pool.preempt(PreemptionNotice("a", deadline=loop.time() + 120))
        await asyncio.sleep(0)
        assert pool.size == 3
        assert {a.placement.name for a in pool.agents if a.state.value != "stopping"} == {"b"}


async def test_a_notice_for_an_unknown_placement_says_which_there_are() -> None:
    pool = pool_of({"name": "a"}, {"name": "b"})
    async with pool:
        with pytest.raises(PoolError, match=r"no placement 'c'.*its placements: a, b"):
            pool.preempt(PreemptionNotice("c", deadline=0.0))


async def test_repeated_preemptions_move_a_placement_down_the_list_for_a_while() -> None:
    pool = pool_of(
        {"name": "a", "capacity": "spot", "price_per_hour": 0.3},
        {"name": "b", "capacity": "spot", "price_per_hour": 0.4},
        min_size=0,
    )
    async with pool:
        loop = asyncio.get_running_loop()
        for _ in range(2):
            pool.preempt(PreemptionNotice("a", deadline=loop.time() + 10))
            await asyncio.sleep(20)
        await pool.resize(2)
        assert {a.placement.name for a in pool.agents} == {"b"}  # a, cheaper, is demoted
        await asyncio.sleep(3600)
        await pool.resize(0)
        await asyncio.sleep(1)
        await pool.resize(1)
        assert {a.placement.name for a in pool.agents if a.state.value != "stopping"} == {"a"}


async def test_a_notice_naming_one_agent_leaves_the_rest_of_the_spot_placement_open() -> None:
    # The provider reclaims one machine: its replacement (and any growth) still goes to spot;
    # only the named agent leaves. (A notice for the whole placement closes it: above.)
    pool = pool_of(
        {"name": "spot", "capacity": "spot", "price_per_hour": 0.3},
        {"name": "od", "price_per_hour": 1.0},
        min_size=0,
        max_size=8,
    )
    async with pool:
        await on_spot(pool, 4)
        first = pool.agents[0]
        loop = asyncio.get_running_loop()
        hit = pool.preempt(
            PreemptionNotice("spot", deadline=loop.time() + 120, agent_ids=(first.agent_id,))
        )
        assert hit == [first]
        await asyncio.sleep(1)
        live = [a for a in pool.agents if a.state.value != "stopping"]
        assert len(live) == 4 and first not in live
        assert {a.placement.name for a in live} == {"spot"}
        await pool.resize(6)
        assert {a.placement.name for a in pool.agents if a.state.value != "stopping"} == {"spot"}


async def test_single_agent_notices_demote_a_placement_by_their_rate_against_its_size() -> None:
    # Ten agents on a: three single-agent notices within the hour are 0.3 of its size
    # reclaimed, the ordinary trickle of a large spot placement; a stays first. One agent on
    # c: two notices for it are twice its size, so c is demoted.
    pool = pool_of(
        {"name": "a", "capacity": "spot", "price_per_hour": 0.3},
        {"name": "b", "capacity": "spot", "price_per_hour": 0.4},
        min_size=0,
        max_size=30,
    )
    async with pool:
        await on_spot(pool, 10)
        loop = asyncio.get_running_loop()
        for agent in list(pool.agents)[:3]:
            pool.preempt(
                PreemptionNotice("a", deadline=loop.time() + 5, agent_ids=(agent.agent_id,))
            )
            await asyncio.sleep(10)
        assert not any("demoted" in e.reason for e in pool.events)
        await pool.resize(12)
        assert {a.placement.name for a in pool.agents if a.state.value != "stopping"} == {"a"}

    small = pool_of(
        {"name": "c", "capacity": "spot", "price_per_hour": 0.3, "max_size": 1},
        {"name": "d", "capacity": "spot", "price_per_hour": 0.4},
        min_size=0,
    )
    async with small:
        loop = asyncio.get_running_loop()
        for _ in range(2):
            await on_spot(small, 1)
            (agent,) = [a for a in small.agents if a.placement.name == "c"] or small.agents
            small.preempt(
                PreemptionNotice(
                    agent.placement.name, deadline=loop.time() + 5, agent_ids=(agent.agent_id,)
                )
            )
            await asyncio.sleep(10)
            await small.resize(0)
            await asyncio.sleep(1)
        assert any("demoted" in e.reason for e in small.events)
        await small.resize(1)
        assert {a.placement.name for a in small.agents if a.state.value != "stopping"} == {"d"}


# -- a placement that fails ---------------------------------------------------------------------


async def test_calls_lost_with_their_placement_run_again_elsewhere_and_none_is_lost() -> None:
    # Three calls run on region a when it goes down (all its agents die at once, and its
    # starts fail from then on): each is re-queued and answered once by region b.
    a, b = FakeBackend(call_time=100.0), FakeBackend(call_time=1.0)
    pool = pool_of(
        {"name": "a", "price_per_hour": 0.5, "backend": a},
        {"name": "b", "price_per_hour": 1.0, "backend": b},
        min_size=3,
        max_size=6,
    )
    async with pool:
        assert {x.placement.name for x in pool.agents} == {"a"}
        calls = [asyncio.create_task(pool.run(who)) for _ in range(3)]
        await asyncio.sleep(5)
        a.fail_next_starts(1000, AgentStartError("region a down"))
        for agent_id in a.alive:
            a.crash(agent_id)
        assert await asyncio.gather(*calls) == ["ok"] * 3
        assert sum(b.calls_by_agent.values()) == 3  # each once, on b
        assert pool.metrics.requeued == 3 and pool.metrics.requests_failed == 3
        assert any("placement a down" in e.reason for e in pool.events)


async def test_one_agent_lost_in_a_healthy_placement_stays_agent_lost_and_is_not_rerun() -> None:
    a, b = FakeBackend(call_time=100.0), FakeBackend(call_time=1.0)
    pool = pool_of(
        {"name": "a", "price_per_hour": 0.5, "backend": a},
        {"name": "b", "price_per_hour": 1.0, "backend": b},
        min_size=3,
        max_size=6,
    )
    async with pool:
        calls = [asyncio.create_task(pool.run(who)) for _ in range(3)]
        await asyncio.sleep(5)
        a.crash(a.alive[0])  # the others stay up and answer
        results = await asyncio.gather(*calls, return_exceptions=True)
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(lost) == 1 and not isinstance(lost[0], Preempted)
        assert results.count("ok") == 2
        assert pool.metrics.requeued == 0
        assert not any("down" in e.reason for e in pool.events)


async def test_on_preempt_fail_also_fails_a_call_lost_with_its_placement() -> None:
    a = FakeBackend(call_time=100.0)
    pool = pool_of(
        {"name": "a", "price_per_hour": 0.5, "backend": a},
        {"name": "b", "price_per_hour": 1.0},
        min_size=2,
    )
    async with pool:
        calls = [asyncio.create_task(pool.call(who, on_preempt="fail")) for _ in range(2)]
        await asyncio.sleep(5)
        for agent_id in a.alive:
            a.crash(agent_id)
        for call in calls:
            with pytest.raises(Preempted, match="lost with its placement"):
                await call
        assert pool.metrics.requeued == 0


async def test_preemption_sources_are_watched_while_the_pool_runs() -> None:
    class Once:
        def __init__(self) -> None:
            self.cancelled = False

        async def watch(self, placement, notify, now):  # type: ignore[no-untyped-def]
            try:
                await asyncio.sleep(10)
                notify(PreemptionNotice(placement.name, deadline=now() + 5, source="once"))
                await asyncio.sleep(10**6)
            except asyncio.CancelledError:
                self.cancelled = True
                raise

    source = Once()
    pool = pool_of({"name": "spot", "capacity": "spot", "preemption": source}, {"name": "od"})
    async with pool:
        await asyncio.sleep(20)
        assert pool.metrics.preemptions == 1
    assert source.cancelled


# -- cost ----------------------------------------------------------------------------------------


async def test_the_cost_ceiling_refuses_on_demand_starts_and_says_by_how_much() -> None:
    backend = FakeBackend()
    pool = pool_of(
        {"name": "od", "price_per_hour": 1.0, "backend": backend}, min_size=1, max_size=10
    )
    async with pool:
        pool.set_cost_ceiling(3.0)
        calls = [asyncio.create_task(pool.run(work, 10.0)) for _ in range(6)]
        await asyncio.sleep(1)
        assert pool.size == 3 and pool.cost_per_hour == pytest.approx(3.0)
        assert any("cost ceiling 3 $/h binds: 3 agent(s) over" in e.reason for e in pool.events)
        assert await asyncio.gather(*calls) == ["done"] * 6  # they waited; none was lost
        assert len(backend.started) == 3


async def test_cost_usd_is_agent_hours_times_their_placements_prices() -> None:
    pool = pool_of(
        {"name": "a", "price_per_hour": 1.0, "max_size": 1},
        {"name": "b", "price_per_hour": 3.0},
        min_size=2,
    )
    async with pool:
        await asyncio.sleep(1800)
        assert pool.metrics.cost_usd == pytest.approx(2.0)
        assert pool.metrics.cost_per_hour == pytest.approx(4.0)


async def test_the_autoscaler_wires_prefer_spot_and_the_ceiling_into_the_pool() -> None:
    pool = pool_of(
        {"name": "od", "price_per_hour": 1.0},
        {"name": "spot", "capacity": "spot", "price_per_hour": 0.25},
        min_size=1,
        max_size=40,
    )
    async with pool:
        scaler = AutoScaler(
            pool,
            {"min": 1, "max": 40, "prefer_spot": True, "cost_threshold": 2.0, "spot_fraction": 1.0},
        )
        scaler.start()
        calls = [asyncio.create_task(pool.run(work, 30.0)) for _ in range(20)]
        await asyncio.sleep(5)
        assert pool.cost_per_hour <= 2.0 + 1e-9
        od = sum(not a.placement.spot for a in pool.agents)
        assert od == 1  # on_demand_base defaults to min_instances
        assert sum(a.placement.spot for a in pool.agents) == 4  # (2.0 - 1.0) / 0.25
        assert await asyncio.gather(*calls) == ["done"] * 20
        await scaler.stop()


# -- workflows -----------------------------------------------------------------------------------


def _step_pool() -> dict[str, object]:
    return {
        "min_size": 0,
        "max_size": 2,
        "placements": [
            {"name": "spot", "capacity": "spot", "price_per_hour": 0.3},
            {"name": "od", "price_per_hour": 1.0},
        ],
    }


async def _run_preempted(on_preempt: str) -> tuple[object, int]:
    from shoal import Context, Runtime, step, workflow

    @workflow(name=f"spotty-{on_preempt}")
    class Spotty:
        @step(pool_config=_step_pool(), on_preempt=on_preempt)  # type: ignore[arg-type]
        async def slow(self, ctx: Context) -> str:
            return "done"

    backend = FakeBackend(call_time=100.0)
    async with Runtime(backend) as rt:
        handle = await rt.submit(Spotty)
        await asyncio.sleep(1)
        (pool,) = [p for p in rt.pools if p.name.startswith("spotty")]
        # The one agent is on-demand (no prefer_spot): preempt whatever holds the call.
        (agent,) = pool.agents
        loop = asyncio.get_running_loop()
        pool.preempt(PreemptionNotice(agent.placement.name, deadline=loop.time() + 5))
        try:
            return await handle.result(), pool.metrics.requeued
        except Exception as exc:
            return exc, pool.metrics.requeued


async def test_a_workflow_step_cut_short_by_a_preemption_runs_again_at_the_head() -> None:
    assert await _run_preempted("requeue") == ("done", 1)


async def test_a_step_with_on_preempt_fail_fails_with_the_preemption() -> None:
    from shoal import StepFailed

    outcome, requeued = await _run_preempted("fail")
    assert requeued == 0
    assert isinstance(outcome, StepFailed)
    assert isinstance(outcome.__cause__, Preempted)


async def test_a_call_takes_the_nearest_idle_agent_and_spills_far_when_none_is_near() -> None:
    near, far = FakeBackend(call_time=5.0), FakeBackend(call_time=10.0)
    pool = pool_of(
        {"name": "far", "price_per_hour": 0.5, "rtt_ms": 120, "max_size": 1, "backend": far},
        {"name": "near", "price_per_hour": 1.0, "rtt_ms": 5, "max_size": 1, "backend": near},
        min_size=2,
        max_size=2,
    )
    async with pool:
        # Both busy (the second call spills to the far agent); the far one is back last, so
        # it is the most recently used: assignment order alone would pick it next.
        assert await asyncio.gather(pool.run(who), pool.run(who)) == ["ok", "ok"]
        assert sum(near.calls_by_agent.values()) == 1 == sum(far.calls_by_agent.values())
        assert await pool.run(who) == "ok"
        assert sum(near.calls_by_agent.values()) == 2  # the nearest idle agent took it


def two_distances(near: FakeBackend, far: FakeBackend) -> AgentPool:
    return pool_of(
        {"name": "far", "price_per_hour": 0.5, "rtt_ms": 100, "max_size": 1, "backend": far},
        {"name": "near", "price_per_hour": 1.0, "rtt_ms": 5, "max_size": 1, "backend": near},
        min_size=2,
        max_size=2,
    )


async def test_a_call_waits_for_a_near_agent_expected_back_sooner_than_the_extra_round_trip() -> (
    None
):
    # Calls take 20 ms here; going far costs 95 ms more: waiting for the busy near agent is
    # quicker, so the far one stays idle.
    near, far = FakeBackend(), FakeBackend()
    pool = two_distances(near, far)
    async with pool:
        for _ in range(3):
            assert await pool.run(work, 0.02) == "done"
        assert await asyncio.gather(pool.run(work, 0.02), pool.run(work, 0.02)) == ["done"] * 2
        assert sum(far.calls_by_agent.values()) == 0
        assert sum(near.calls_by_agent.values()) == 5


async def test_a_call_spills_far_when_the_expected_near_wait_exceeds_the_extra_round_trip() -> None:
    # Calls take 1 s: waiting for the near agent would cost more than the 95 ms round trip.
    near, far = FakeBackend(), FakeBackend()
    pool = two_distances(near, far)
    async with pool:
        assert await pool.run(work, 1.0) == "done"
        assert await asyncio.gather(pool.run(work, 1.0), pool.run(work, 1.0)) == ["done"] * 2
        assert sum(far.calls_by_agent.values()) == 1


async def test_a_call_held_for_a_near_agent_spills_once_it_has_waited_the_extra_round_trip() -> (
    None
):
    # The near agent is expected back in 20 ms but runs a long call: after waiting 95 ms (what
    # going far costs) the caller takes the far agent rather than wait on.
    near, far = FakeBackend(), FakeBackend()
    pool = two_distances(near, far)
    async with pool:
        for _ in range(3):
            await pool.run(work, 0.02)
        long = asyncio.create_task(pool.run(work, 30.0))
        await asyncio.sleep(0)
        short = asyncio.create_task(pool.run(work, 0.02))
        done, _ = await asyncio.wait({long, short}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {short}
        assert sum(far.calls_by_agent.values()) == 1
        assert pool.size == 2  # it waited for an agent there was, not for a new one
        await long


def test_the_cost_guard_gives_up_headroom_first_then_refuses_to_grow_saying_by_how_much() -> None:
    import dataclasses

    from shoal.pool.metrics import PoolMetrics
    from shoal.scaling.config import parse_scaling_policy
    from shoal.scaling.guards import build_policy

    def snap(**fields: object) -> PoolMetrics:
        base: dict[str, object] = {f.name: 0 for f in dataclasses.fields(PoolMetrics)}
        base.update(name="p", max_size=100, avg_wait_time=0.0, avg_execution_time=1.0)
        base.update(max_concurrency=1, cost_cap_size=None)
        base.update(fields)
        return PoolMetrics(**base)  # type: ignore[arg-type]

    guard = build_policy(
        parse_scaling_policy("t", {"min": 1, "max": 100, "cost_threshold": 10.0}),
        price_per_hour=0.1,
    )
    # The pool says its mix of placements buys 8 agents (far fewer than 10 / 0.1 = 100).
    hotter = guard.decide(
        snap(busy=6, in_flight=6, size=6, target_size=6, cost_per_hour=7.5, cost_cap_size=8),
        guard.initial_state(),
        0.0,
    )
    assert hotter.desired == 8 and "headroom given up, running hotter" in hotter.reason
    refused = guard.decide(
        snap(
            busy=8,
            in_flight=8,
            queue_depth=4,
            size=8,
            target_size=8,
            cost_per_hour=10.0,
            cost_cap_size=8,
        ),
        guard.initial_state(),
        0.0,
    )
    assert refused.desired == 8 and "refusing to grow" in refused.reason
    assert "4 over what it buys" in refused.reason


async def test_agents_that_fell_back_to_on_demand_swap_back_to_spot_when_it_returns() -> None:
    spot, od = FakeBackend(), FakeBackend()
    spot.fail_next_starts(1, AgentStartError("no spot capacity"))
    pool = pool_of(
        {"name": "spot", "capacity": "spot", "price_per_hour": 0.3, "backend": spot},
        {"name": "od", "price_per_hour": 1.0, "backend": od},
        min_size=0,
        max_size=4,
    )
    async with pool:
        pool.set_spot(True, spot_fraction=1.0, on_demand_base=0)
        await pool.resize(1)
        await asyncio.sleep(0.5)
        assert [a.placement.name for a in pool.agents] == ["od"]  # spot failed: fell back
        await asyncio.sleep(60)  # spot's back-off runs out; maintenance swaps
        assert [a.placement.name for a in pool.agents] == ["spot"]
        assert any("swapped for a spot agent" in e.reason for e in pool.events)
        assert pool.size == 1


def test_expected_wait_is_the_turn_of_the_call_over_the_completion_rate() -> None:
    from shoal.pool.placing import expected_wait

    assert expected_wait(0, 1.0, 4) == pytest.approx(0.25)  # the first of 4 agents to finish
    assert expected_wait(3, 1.0, 4) == pytest.approx(1.0)  # behind three others
    assert expected_wait(0, 1.0, 0) == float("inf")  # nobody to wait for


# -- consolidation ---------------------------------------------------------------------------


async def test_agents_move_back_to_the_cheaper_placement_once_it_starts_agents_again() -> None:
    # The cheap region is down at the start, so both agents start on the dear one; once it is
    # back (its back-off over), they move there one at a time and the pool stays at its size.
    cheap, dear = FakeBackend(start_time=5.0), FakeBackend(start_time=5.0)
    cheap.fail_next_starts(2, AgentStartError("region down"))
    pool = pool_of(
        {"name": "cheap", "price_per_hour": 0.5, "backend": cheap},
        {"name": "dear", "price_per_hour": 1.0, "backend": dear},
        min_size=2,
        max_size=4,
        idle_timeout=300,
    )
    async with pool:
        moved = sum(1 for a in pool.agents if a.placement.name == "dear")
        assert moved >= 1
        await asyncio.sleep(600)
        live = [a for a in pool.agents if a.state.value != "stopping"]
        assert [a.placement.name for a in live] == ["cheap", "cheap"]
        assert sum(1 for e in pool.events if "consolidated onto cheap" in e.reason) >= moved
        assert await pool.run(who) == "ok"


async def test_no_move_when_the_saving_does_not_pay_for_the_start() -> None:
    # One cent an hour saved over a 10-s idle_timeout is far less than a minute's start.
    cheap, dear = FakeBackend(start_time=60.0), FakeBackend(start_time=60.0)
    cheap.fail_next_starts(1, AgentStartError("region down"))
    pool = pool_of(
        {"name": "cheap", "price_per_hour": 0.99, "backend": cheap},
        {"name": "dear", "price_per_hour": 1.0, "backend": dear},
        min_size=1,
        max_size=2,
        idle_timeout=10,
    )
    async with pool:
        await asyncio.sleep(600)
        assert {a.placement.name for a in pool.agents} == {"dear"}
        assert not any("consolidat" in e.reason for e in pool.events)
