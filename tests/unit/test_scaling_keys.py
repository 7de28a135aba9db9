"""Workflows and scaling keys that do what they say (issue 12), on the fake backend in virtual
time: the seed's examples run, every seed key changes a decision or is refused, fixed is fixed."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from shoal import AgentPool, ConfigError, Context, FakeBackend, Runtime, WorkflowError, step
from shoal import workflow as workflow_
from shoal.pool.metrics import PoolMetrics
from shoal.scaling import AutoScaler, build_policy, parse_scaling_policy


def snap(**fields: object) -> PoolMetrics:
    base: dict[str, object] = {f.name: 0 for f in dataclasses.fields(PoolMetrics)}
    base.update(name="p", min_size=0, max_size=100, avg_wait_time=0.0, avg_execution_time=0.0)
    base.update(fields)
    if "size" not in fields:
        base["size"] = base["target_size"]
    return PoolMetrics(**base)  # type: ignore[arg-type]


def decide(policy: dict[str, Any], snapshots: list[tuple[float, PoolMetrics]]) -> int:
    """The last size a guarded policy built from ``policy`` wants over timed snapshots."""
    g = build_policy(parse_scaling_policy("t", {"min": 1, "max": 100, **policy}))
    state, desired = g.initial_state(), -1
    for now, s in snapshots:
        d = g.decide(s, state, now)
        state, desired = d.state, d.desired
    return desired


# -- 1. the seed's configuration example 3 runs --------------------------------------------------


@workflow_(
    scaling_policy={
        "mode": "conservative",
        "min_instances": 1,
        "max_instances": 5,
        "cost_threshold": 100,
        "prefer_spot": True,
    }
)
class CostOptimized:
    @step()
    async def work(self, ctx: Context, x: int) -> int:
        return x + 1


async def test_the_seed_cost_optimized_example_runs_and_notes_prefer_spot() -> None:
    async with Runtime(FakeBackend()) as rt:
        assert await asyncio.wait_for(rt.run(CostOptimized, 1), timeout=60) == 2
        pool = rt.pool("CostOptimized")
        assert any("prefer_spot" in e.reason for e in pool.events)


async def test_an_autoscaler_that_cannot_be_built_fails_every_waiting_run() -> None:
    # A pool whose price makes the budget afford fewer agents than min_instances: built at run
    # time, as a pool asked for directly (decoration refuses it earlier, see below).
    from shoal.workflow.spec import PoolRequest

    config = parse_scaling_policy("t", {"min": 4, "max": 8, "cost_threshold": 1.0})
    request = PoolRequest("priced", {"min_size": 4, "max_size": 8, "price_per_hour": 0.5}, config)
    async with Runtime(FakeBackend()) as rt:
        waiting = [asyncio.ensure_future(rt.pool_for(request, None)) for _ in range(3)]
        done, pending = await asyncio.wait(waiting, timeout=60)
        assert not pending
        for task in done:
            with pytest.raises(ConfigError, match="affords 2 agents"):
                task.result()
        assert [p.name for p in rt.pools] == []


def test_a_budget_below_min_instances_fails_at_decoration() -> None:
    with pytest.raises(WorkflowError, match="affords 2 agents, fewer than min_instances=4"):

        @workflow_(
            scaling_policy={"min": 4, "max": 8, "cost_threshold": 1.0},
            pool_config={"price_per_hour": 0.5},
        )
        class Broke:
            @step()
            async def s(self, ctx: Context) -> None: ...


# -- 2. the rule policy scales down ---------------------------------------------------------------


async def test_an_idle_rule_pool_shrinks_to_its_minimum() -> None:
    backend = FakeBackend()
    policy = {"policy": "rule", "min": 1, "max": 60}  # the default 60 s cooldown
    async with AgentPool("r", min_size=1, max_size=60, backend=backend) as p:
        await p.resize(60)
        async with AutoScaler(p, policy):
            await asyncio.sleep(300 + 120)  # idle_time, then at most a step a second
            assert p.target_size == 1 and p.size == 1


# -- 3. every threshold key changes a decision under the default policy ------------------------


def test_scale_up_threshold_acts_in_target_modes() -> None:
    # 6 of 10 busy: target tracking at 70% is content; a 50% threshold is not.
    busy = snap(busy=6, target_size=10, size=10, utilization_rate=0.6)
    assert decide({}, [(0.0, busy)]) == 10
    assert decide({"scale_up_threshold": 0.5, "scale_down_threshold": 0.2}, [(0.0, busy)]) == 11


def test_the_conservative_presets_threshold_acts() -> None:
    # A sudden full pool: the smoothed demand still says fewer, but
    # conservative's own scale_up_threshold (0.9) adds one at once.
    before = (0.0, snap(busy=5, target_size=10, size=10, utilization_rate=0.5))
    full = (1.0, snap(busy=10, target_size=10, size=10, utilization_rate=1.0))
    nine = (1.0, snap(busy=9, target_size=10, size=10, utilization_rate=0.9))
    assert decide({"mode": "conservative"}, [before, full]) == 11
    assert decide({"mode": "conservative"}, [before, nine]) < 10  # not above 0.9: demand rules


def test_sla_acts_in_target_modes() -> None:
    # 4 busy and 1 waiting on 5 agents at a 100% target: target tracking holds 5, but the
    # waiting caller (0.8 s so far, runs 0.5 s) will miss a 1 s sla.
    late = snap(
        busy=4, target_size=5, size=5, queue_depth=1, oldest_wait=0.8, avg_execution_time=0.5
    )
    assert decide({"target_utilization": 1.0}, [(0.0, late)]) == 5
    assert decide({"target_utilization": 1.0, "sla": 1.0}, [(0.0, late)]) == 6
    assert decide({"target_utilization": 1.0, "sla": 2.0}, [(0.0, late)]) == 5


def test_scale_down_threshold_and_idle_time_act_in_target_modes() -> None:
    # 4 of 20 busy (20%): target tracking wants 6 once the window has passed.
    quiet = [
        (float(t), snap(busy=4, target_size=20, size=20, utilization_rate=0.2)) for t in range(200)
    ]
    assert decide({"cooldown_period": 0}, quiet) < 20
    # ... but not while utilization is above a 10% scale_down_threshold,
    assert decide({"cooldown_period": 0, "scale_down_threshold": 0.1}, quiet) == 20
    # and with idle_time only after that long below the threshold (30%).
    assert decide({"cooldown_period": 0, "idle_time": 500}, quiet) == 20
    assert decide({"cooldown_period": 0, "idle_time": 150}, quiet) < 20


@pytest.mark.parametrize(
    ("policy", "key"),
    [
        ({"policy": "rule", "target_utilization": 0.5}, "target_utilization"),
        ({"policy": "hpa", "scale_up_threshold": 0.9}, "scale_up_threshold"),
        ({"policy": "keepalive", "sla": 1.0}, "sla"),
        ({"mode": "fixed", "min": 2, "cooldown_period": 30}, "cooldown_period"),
    ],
)
def test_a_key_the_policy_ignores_is_refused_saying_why(policy: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=f"{key} does nothing under") as info:
        parse_scaling_policy("workflow 'w' scaling_policy", policy)
    assert "\n" not in str(info.value)


# -- 4. fixed is fixed ----------------------------------------------------------------------------


def test_a_fixed_pool_with_two_sizes_is_refused() -> None:
    with pytest.raises(WorkflowError, match="a fixed pool has one size"):

        @workflow_(scaling_policy={"mode": "fixed", "min_instances": 1, "max_instances": 4})
        class Ambiguous:
            @step()
            async def s(self, ctx: Context) -> None: ...


PEAK = {"now": 0, "peak": 0}


@workflow_(scaling_policy={"mode": "fixed", "min_instances": 1})
class Fixed:
    @step()
    async def work(self, ctx: Context, x: int) -> int:
        PEAK["now"] += 1
        PEAK["peak"] = max(PEAK["peak"], PEAK["now"])
        await asyncio.sleep(1.0)
        PEAK["now"] -= 1
        return x


async def test_a_fixed_pool_does_not_grow_under_load() -> None:
    PEAK.update(now=0, peak=0)
    async with Runtime(FakeBackend()) as rt:
        assert await asyncio.gather(*(rt.run(Fixed, i) for i in range(8))) == list(range(8))
        pool = rt.pool("Fixed")
        assert pool.max_size == 1 and pool.metrics.agents_started == 1
    assert PEAK["peak"] == 1


# -- 9. definitions that should fail at decoration -----------------------------------------------


def test_a_step_without_ctx_is_refused() -> None:
    with pytest.raises(WorkflowError, match=r"takes \(self, x\).*Add a 'ctx: Context'"):

        @workflow_
        class NoCtx:
            @step()
            async def s(self, x: int) -> int:
                return x


def test_pool_size_with_a_scaling_policy_is_refused() -> None:
    with pytest.raises(WorkflowError, match="pool_size=3 fixes the pool's size"):

        @step(pool_size=3, scaling_policy={"min": 1, "max": 5})
        async def s(self: Any, ctx: Context) -> None: ...


def test_pool_size_against_pool_config_sizes_is_refused() -> None:
    with pytest.raises(WorkflowError, match="pool_size=4 sets min_size and max_size"):

        @step(pool_size=4, pool_config={"max_size": 2})
        async def s(self: Any, ctx: Context) -> None: ...


@workflow_
class DictFanOut:
    @step()
    async def make(self, ctx: Context) -> dict[str, int]:
        return {"a": 1, "b": 2}

    @step(parallel=True)
    async def each(self, ctx: Context, item: Any) -> Any:
        return item


async def test_a_dict_given_to_a_parallel_step_is_a_clear_error() -> None:
    async with Runtime(FakeBackend()) as rt:
        with pytest.raises(WorkflowError, match=r"parallel step 'each' got a dict.*list\(d"):
            await rt.run(DictFanOut)
