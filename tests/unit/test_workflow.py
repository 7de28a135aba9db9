"""The workflow layer on the fake backend, in virtual time: order, data, fan-out, pools, errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shoal import (
    AgentLost,
    Context,
    FakeBackend,
    Runtime,
    StepFailed,
    WorkflowError,
    mapreduce,
    step,
    workflow,
)

TRACE: list[Any] = []


class Gauge:
    """Counts how many calls are inside a block at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def hold(self, seconds: float) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


GAUGE = Gauge()


@pytest.fixture(autouse=True)
def _reset() -> None:
    TRACE.clear()
    GAUGE.now = GAUGE.peak = 0


@workflow(name="pipeline")
class Pipeline:
    @step()
    async def fetch(self, ctx: Context, request: dict[str, int]) -> list[int]:
        TRACE.append(("fetch", ctx.run_id, ctx.workflow, ctx.step, ctx.input))
        return list(range(request["n"]))

    @step(parallel=True, pool_size=3, max_parallel=5)
    async def square(self, ctx: Context, item: int) -> int:
        await GAUGE.hold(1.0 + (10 - item) * 0.1)  # later items finish first
        TRACE.append(("square", ctx.item_index))
        return item * item

    @step()
    async def total(self, ctx: Context, results: list[int]) -> dict[str, Any]:
        TRACE.append(("total", results))
        return {"sum": sum(results), "n": len(results)}


def rt(backend: FakeBackend | None = None) -> Runtime:
    return Runtime(backend or FakeBackend())


async def test_steps_run_in_order_and_pass_their_results() -> None:
    async with rt() as r:
        out = await r.run(Pipeline, {"n": 6})
    assert out == {"sum": sum(i * i for i in range(6)), "n": 6}
    assert TRACE[0] == ("fetch", "run-1", "pipeline", "fetch", {"n": 6})
    assert TRACE[-1] == ("total", [0, 1, 4, 9, 16, 25])  # input order, not finishing order
    assert [t[0] for t in TRACE] == ["fetch"] + ["square"] * 6 + ["total"]


async def test_fan_out_never_exceeds_the_pool_or_max_parallel() -> None:
    backend = FakeBackend()
    async with rt(backend) as r:
        await r.run(Pipeline, {"n": 10})
        assert GAUGE.peak == 3  # the step's pool has 3 agents, below max_parallel=5
        assert r.pool("pipeline.square").max_size == 3
    assert backend.alive == []


@workflow
class Throttled:
    @step(parallel=True, pool_config={"min_size": 0, "max_size": 8}, max_parallel=2)
    async def work(self, ctx: Context, item: int) -> int:
        await GAUGE.hold(1.0)
        return item


async def test_max_parallel_bounds_calls_in_flight() -> None:
    async with rt() as r:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await r.run(Throttled, range(6)) == list(range(6))
        assert GAUGE.peak == 2
        assert loop.time() - t0 == pytest.approx(3.0)  # 6 items, 2 at a time, 1 s each
        assert r.pool("Throttled.work").metrics.agents_started <= 2


@workflow(name="pools", pool_config={"min_size": 1, "max_size": 2})
class Pools:
    @step(pool="shared")
    async def a(self, ctx: Context) -> int:
        return 1

    @step(pool="shared")
    async def b(self, ctx: Context, x: int) -> int:
        return x + 1

    @step(pool_size=2)
    async def c(self, ctx: Context, x: int) -> int:
        return x + 1

    @step()
    async def d(self, ctx: Context, x: int) -> int:
        return x + 1


async def test_pool_resolution_named_own_and_workflow() -> None:
    backend = FakeBackend()
    async with rt(backend) as r:
        assert await r.run(Pools) == 4
        assert sorted(p.name for p in r.pools) == ["pools", "pools.c", "shared"]
        assert (r.pool("pools.c").min_size, r.pool("pools.c").max_size) == (2, 2)
        assert r.pool("pools").max_size == 2
        assert r.pool("shared").metrics.requests_total == 2


@workflow(name="other")
class ClashingPool:
    @step(pool="shared", pool_size=4)
    async def a(self, ctx: Context) -> int:
        return 1


async def test_a_named_pool_asked_for_twice_differently_is_an_error() -> None:
    async with rt() as r:
        await r.run(Pools)
        with pytest.raises(WorkflowError, match="pool 'shared' is already configured"):
            await r.run(ClashingPool)


@workflow(name="failing")
class Failing:
    @step()
    async def make(self, ctx: Context) -> list[int]:
        return [1, 2, 3, 4]

    @step(parallel=True, pool_size=2)
    async def check(self, ctx: Context, item: int) -> int:
        if item == 3:
            raise ValueError(f"item {item} is bad")
        return item


async def test_a_failing_item_names_workflow_step_and_item() -> None:
    async with rt() as r:
        with pytest.raises(StepFailed) as info:
            await r.run(Failing)
        err = info.value
        assert (err.workflow, err.step, err.item_index) == ("failing", "check", 2)
        assert "workflow 'failing' step 'check' item 2 raised ValueError: item 3 is bad" in str(err)
        assert isinstance(err.__cause__, ValueError)
        m = r.pool("failing.check").metrics
        assert m.busy == 0 and m.size == 2  # the agents stayed warm


@workflow(name="flaky")
class Flaky:
    @step(retries=1)
    async def once(self, ctx: Context) -> int:
        return ctx.attempt

    @step(retries=0)
    async def never(self, ctx: Context, attempt: int) -> int:
        return attempt


async def test_a_lost_agent_is_retried_up_to_retries() -> None:
    backend = FakeBackend(call_time=1.0)
    async with rt(backend) as r:
        backend.crash_next_calls(1)
        assert await r.run(Flaky) == 2  # the first step ran twice; ctx.attempt said so
        backend.crash_next_calls(2)
        with pytest.raises(StepFailed, match="after 2 attempt") as info:
            await r.run(Flaky)
        assert isinstance(info.value.__cause__, AgentLost)


@workflow(name="modes")
class Modes:
    @step(execution_mode="inline")
    async def here(self, ctx: Context) -> int:
        return 1

    @step(execution_mode="dedicated")
    async def fresh(self, ctx: Context, x: int) -> list[int]:
        return [x, x + 1]

    @step(parallel=True, execution_mode="dedicated", max_parallel=2)
    async def fresh_each(self, ctx: Context, x: int) -> int:
        return x

    @step()
    async def pooled(self, ctx: Context, xs: list[int]) -> int:
        return sum(xs)


async def test_execution_modes_inline_dedicated_pooled() -> None:
    backend = FakeBackend()
    async with rt(backend) as r:
        assert await r.run(Modes) == 3
        before = len(backend.started)
        assert await r.run(Modes) == 3
        # dedicated: a fresh agent for each call — one for `fresh`, two for `fresh_each`
        assert len(backend.started) - before == 3
        assert sorted(p.name for p in r.pools) == ["modes"]  # inline used no pool
        assert r.pool("modes").metrics.requests_total == 2  # only `pooled` ran on it
    assert backend.alive == []


async def test_bad_definitions_fail_at_decoration() -> None:
    with pytest.raises(WorkflowError, match="has no steps"):

        @workflow
        class Empty:
            async def helper(self, ctx: Context) -> None: ...

    with pytest.raises(WorkflowError, match="'async def'"):

        class NotAsync:
            @step()
            def plain(self, ctx: Context) -> None: ...

    with pytest.raises(WorkflowError, match="max_parallel=0"):

        class ZeroParallel:
            @step(parallel=True, max_parallel=0)
            async def s(self, ctx: Context, item: int) -> None: ...

    with pytest.raises(WorkflowError, match="unknown key 'max_sise'"):

        class BadPool:
            @step(pool_config={"max_sise": 3})
            async def s(self, ctx: Context) -> None: ...

    with pytest.raises(WorkflowError, match="unknown key 'cooldown'"):

        @workflow(scaling_policy={"min": 1, "cooldown": 5})
        class BadPolicy:
            @step()
            async def s(self, ctx: Context) -> None: ...

    with pytest.raises(WorkflowError, match=r"must take \(self, ctx, item\)"):

        class NoItem:
            @step(parallel=True)
            async def s(self, ctx: Context) -> None: ...

    with pytest.raises(WorkflowError, match="not async"):

        @workflow
        class AsyncSetup:
            async def setup(self) -> None: ...

            @step()
            async def s(self, ctx: Context) -> None: ...

    with pytest.raises(WorkflowError, match="execution_mode='remote'"):

        class BadMode:
            @step(execution_mode="remote")  # type: ignore[arg-type]
            async def s(self, ctx: Context) -> None: ...


@workflow(name="not_iterable")
class NotIterable:
    @step()
    async def one(self, ctx: Context) -> int:
        return 5

    @step(parallel=True)
    async def each(self, ctx: Context, item: int) -> int:
        return item


async def test_a_parallel_step_given_a_non_iterable_is_a_clear_error() -> None:
    async with rt() as r:
        with pytest.raises(WorkflowError, match=r"its input must be an iterable .* got int"):
            await r.run(NotIterable)


async def test_running_something_that_is_not_a_workflow_is_a_clear_error() -> None:
    async with rt() as r:
        with pytest.raises(WorkflowError, match="is not a workflow or mapreduce"):
            await r.run(print, None)


@workflow(name="api", scaling_policy={"min": 1, "max": 2})
class Api:
    @step()
    async def handle(self, ctx: Context, request: int) -> int:
        await GAUGE.hold(1.0)
        return request

    @step()
    async def respond(self, ctx: Context, value: int) -> int:
        await asyncio.sleep(1.0)
        return value * 10


async def test_instance_pool_runs_hold_one_instance_each_and_queue() -> None:
    backend = FakeBackend()
    async with rt(backend) as r:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        handles = [await r.submit(Api, i) for i in range(5)]
        assert [await h.result() for h in handles] == [0, 10, 20, 30, 40]
        # 5 runs of 2 s on at most 2 instances: 3 waves.
        assert loop.time() - t0 == pytest.approx(6.0)
        assert GAUGE.peak == 2
        assert r.pool("api").max_size == 2 and backend.max_alive == 2
        assert all(h.status == "succeeded" for h in handles)


async def test_cancelling_a_run_leaves_the_pools_clean() -> None:
    backend = FakeBackend()
    async with rt(backend) as r:
        handle = await r.submit(Api, 1)
        await asyncio.sleep(0.5)
        assert handle.status == "running"
        handle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handle.result()
        assert handle.status == "cancelled"
        await asyncio.sleep(0)
        m = r.pool("api").metrics
        assert m.busy == 0 and m.queue_depth == 0
        assert await r.run(Api, 2) == 20


def _sum(xs: list[int]) -> int:
    return sum(xs)


@mapreduce(pool_size=2, max_parallel=3, reduce=_sum)
async def word_len(ctx: Context, word: str) -> int:
    await GAUGE.hold(1.0)
    return len(word)


@mapreduce(pool_size=2)
async def upper(ctx: Context, word: str) -> str:
    return word.upper()


async def test_mapreduce_maps_then_reduces() -> None:
    async with rt() as r:
        assert await r.run(word_len, ["a", "bb", "ccc", "dddd"]) == 10
        assert GAUGE.peak == 2  # pool_size bounds it below max_parallel
        assert await r.run(upper, ["x", "y"]) == ["X", "Y"]


async def test_runtime_must_be_open_and_closes_its_pools() -> None:
    backend = FakeBackend()
    r = Runtime(backend)
    with pytest.raises(Exception, match="not open"):
        await r.run(Pipeline, {"n": 1})
    async with r:
        await r.run(Pipeline, {"n": 2})
        assert backend.alive
    assert backend.alive == []


async def test_a_run_cancelled_before_it_began_ends_cancelled() -> None:
    async with rt() as r:
        handle = await r.submit(Pipeline, {"n": 1})
        handle.cancel()  # before the run's task had a chance to start
        with pytest.raises(asyncio.CancelledError):
            await handle.result()
        assert handle.status == "cancelled" and handle.finished is not None


async def test_a_closed_runtime_cannot_be_reopened() -> None:
    r = rt()
    async with r:
        await r.run(Pipeline, {"n": 1})
    with pytest.raises(Exception, match="was closed; create a new one"):
        async with r:
            pass
