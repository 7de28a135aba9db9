"""Partial results (on_error="collect"), retries of the step's own exceptions, and streaming
results as they finish — on the fake backend, in virtual time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shoal import (
    Context,
    FakeBackend,
    Runtime,
    StepFailed,
    WorkflowError,
    mapreduce,
    step,
    workflow,
)

CALLS: list[tuple[int, int, float]] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


@mapreduce(pool_size=2, on_error="collect")
async def halve(ctx: Context, item: int) -> float:
    if item % 3 == 0:
        raise ValueError(f"no {item}")
    return item / 2


async def test_collect_puts_each_failure_in_place_of_its_result() -> None:
    async with Runtime(FakeBackend()) as rt:
        out = await rt.run(halve, range(7))
    assert [type(r).__name__ for r in out] == [
        "ValueError", "float", "float", "ValueError", "float", "float", "ValueError",
    ]  # fmt: skip
    assert str(out[3]) == "no 3" and out[4] == 2.0


@workflow(name="collecting")
class Collecting:
    @step()
    async def items(self, ctx: Context) -> list[int]:
        return [1, 2, 3]

    @step(parallel=True, pool_size=2, on_error="collect")
    async def check(self, ctx: Context, item: int) -> int:
        if item == 2:
            raise KeyError(item)
        return item

    @step()
    async def count(self, ctx: Context, results: list[Any]) -> int:
        return sum(1 for r in results if isinstance(r, Exception))


async def test_a_collecting_parallel_step_hands_its_failures_on() -> None:
    async with Runtime(FakeBackend()) as rt:
        assert await rt.run(Collecting) == 1


class Flaky(Exception):
    pass


@mapreduce(pool_size=1, retries=3, retry_on=Flaky, retry_backoff=1.0)
async def flaky(ctx: Context, item: int) -> int:
    CALLS.append((item, ctx.attempt, asyncio.get_running_loop().time()))
    if ctx.attempt < 3:
        raise Flaky(f"try {ctx.attempt}")
    return item


async def test_listed_exceptions_are_retried_with_backoff() -> None:
    async with Runtime(FakeBackend()) as rt:
        t0 = asyncio.get_running_loop().time()
        assert await rt.run(flaky, [7]) == [7]
    assert [(i, a) for i, a, _ in CALLS] == [(7, 1), (7, 2), (7, 3)]
    gaps = [round(t - t0, 6) for _, _, t in CALLS]
    assert gaps == [0.0, 1.0, 3.0]  # 1 s, then 2 s: the back-off doubles


@mapreduce(pool_size=1, retries=5, retry_on=Flaky)
async def not_listed(ctx: Context, item: int) -> int:
    CALLS.append((item, ctx.attempt, 0.0))
    raise ValueError("not retried")


async def test_unlisted_exceptions_are_not_retried() -> None:
    async with Runtime(FakeBackend()) as rt:
        with pytest.raises(StepFailed, match="not retried"):
            await rt.run(not_listed, [1])
    assert len(CALLS) == 1


@mapreduce(pool_size=1, retries=2, retry_on=Flaky)
async def always_flaky(ctx: Context, item: int) -> int:
    raise Flaky("again")


async def test_retries_run_out() -> None:
    async with Runtime(FakeBackend()) as rt:
        with pytest.raises(StepFailed, match="after 3 attempt") as info:
            await rt.run(always_flaky, [1])
    assert isinstance(info.value.__cause__, Flaky)


def test_error_options_are_checked_at_decoration() -> None:
    with pytest.raises(WorkflowError, match="retry_on"):
        mapreduce(retry_on="ValueError")(_f)  # type: ignore[arg-type]
    with pytest.raises(WorkflowError, match="on_error"):
        mapreduce(on_error="ignore")(_f)  # type: ignore[arg-type]
    with pytest.raises(WorkflowError, match="retry_backoff"):
        mapreduce(retry_backoff=-1)(_f)
    with pytest.raises(WorkflowError, match="parallel steps and mapreduce only"):

        class _W:
            @step(on_error="collect")
            async def s(self, ctx: Context) -> None: ...


async def _f(ctx: Context, item: int) -> int:
    return item


# -- streaming -----------------------------------------------------------------------------------


@mapreduce(pool_size=3)
async def slow_echo(ctx: Context, item: int) -> int:
    await asyncio.sleep(10 - item)  # later items finish first
    return item


async def test_stream_yields_results_as_they_finish() -> None:
    async with Runtime(FakeBackend()) as rt:
        loop = asyncio.get_running_loop()
        seen = []
        async for result in rt.stream(slow_echo, [1, 2, 3]):
            seen.append((result, loop.time()))
    assert [r for r, _ in seen] == [3, 2, 1]
    assert [t for _, t in seen] == pytest.approx([7.0, 8.0, 9.0], abs=0.01)


async def test_an_ordered_stream_keeps_input_order() -> None:
    async with Runtime(FakeBackend()) as rt:
        assert [r async for r in rt.stream(slow_echo, [1, 2, 3], ordered=True)] == [1, 2, 3]


async def test_leaving_a_stream_early_cancels_the_rest() -> None:
    async with Runtime(FakeBackend()) as rt:
        async for result in rt.stream(slow_echo, list(range(9))):
            assert result == 2  # 0, 1 and 2 started; 2 finishes first
            break
        await asyncio.sleep(0.1)  # the abandoned generator is closed by the loop
        assert rt.runs[-1].status == "cancelled"


@mapreduce(pool_size=1)
async def fails_on_two(ctx: Context, item: int) -> int:
    await asyncio.sleep(1)
    if item == 2:
        raise ValueError("two")
    return item


async def test_a_failing_stream_raises_after_the_results_before_it() -> None:
    async with Runtime(FakeBackend()) as rt:
        seen = []
        with pytest.raises(StepFailed, match="two"):
            async for result in rt.stream(fails_on_two, [1, 2, 3]):
                seen.append(result)
    assert seen == [1]


async def test_stream_needs_a_mapreduce() -> None:
    async with Runtime(FakeBackend()) as rt:
        with pytest.raises(WorkflowError, match="stream"):
            async for _ in rt.stream(Collecting, [1]):
                pass
