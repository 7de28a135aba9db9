"""Regression tests for workflow defects a review reproduced (issue 12, items 5-8), on the fake
backend in virtual time."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from shoal import Context, FakeBackend, RunStopped, Runtime, StepFailed, mapreduce, step, workflow
from shoal.backends.fake import FakeAgent

RAN: list[int] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()


# -- 5. an instance workflow's parallel step with an explicit max_parallel ------------------------


@workflow(name="instance_fan", scaling_policy={"min_instances": 1, "max_instances": 2})
class InstanceFan:
    @step(parallel=True, max_parallel=4)
    async def work(self, ctx: Context, item: int) -> int:
        await asyncio.sleep(1.0)
        return item * 2


async def test_a_held_instance_gets_one_call_at_a_time_despite_max_parallel() -> None:
    async with Runtime(FakeBackend()) as rt:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await rt.run(InstanceFan, [1, 2, 3]) == [2, 4, 6]
        assert loop.time() - t0 == pytest.approx(3.0)  # one instance, one call at a time


# -- 6. the run's input crosses to each agent once, not once per item -----------------------------


class MeasuringBackend(FakeBackend):
    """Pickles every call as a real backend would, and counts the bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes_sent = 0

    def call(
        self,
        handle: FakeAgent,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> Any:
        self.bytes_sent += len(pickle.dumps((args, kwargs)))
        return super().call(handle, fn, args, kwargs)


@mapreduce(pool_size=2, max_parallel=2)
async def size_of_input(ctx: Context, item: bytes) -> int:
    return len(ctx.input) * 10_000 + len(item)


async def test_a_large_input_is_shipped_once_per_agent_not_per_item() -> None:
    backend = MeasuringBackend()
    items = [bytes([i]) * 5000 for i in range(200)]  # 1 MB: the mapreduce's input, ctx.input
    async with Runtime(backend) as rt:
        assert await rt.run(size_of_input, items) == [200 * 10_000 + 5000] * 200
    assert backend.bytes_sent < 5_000_000, backend.bytes_sent  # not 200 x 1 MB


@workflow(name="fan_input")
class FanInput:
    @step()
    async def items(self, ctx: Context) -> list[int]:
        return list(range(200))

    @step(parallel=True, pool_size=2)
    async def use(self, ctx: Context, item: int) -> int:
        return len(ctx.input) + item


async def test_steps_see_the_whole_input_when_it_is_shipped_once() -> None:
    backend = MeasuringBackend()
    blob = b"y" * 1_000_000
    async with Runtime(backend) as rt:
        out = await rt.run(FanInput, blob)
    assert out == [1_000_000 + i for i in range(200)]
    assert backend.bytes_sent < 5_000_000, backend.bytes_sent


async def test_an_agent_that_dropped_the_input_is_sent_it_again() -> None:
    from shoal import context

    backend = MeasuringBackend()
    async with Runtime(backend) as rt:
        first = await rt.run(FanInput, b"z" * 10)
        context._inputs.clear()  # as if the agents had evicted it
        assert await rt.run(FanInput, b"z" * 10) == first


# -- 7. a long-lived Runtime keeps a bounded history ---------------------------------------------


@workflow(name="tiny")
class Tiny:
    @step()
    async def one(self, ctx: Context, x: int) -> int:
        return x + 1


async def test_a_long_lived_runtime_keeps_a_bounded_history() -> None:
    async with Runtime(FakeBackend()) as rt:  # the default history: 1,000 finished runs
        handles = [await rt.submit(Tiny, i) for i in range(1500)]
        await asyncio.gather(*(h.result() for h in handles))
        assert len(rt.runs) == 1000
        assert rt.runs[-1] is handles[-1] and handles[0] not in rt.runs
        assert await handles[0].result() == 1  # a handle owns its result


async def test_the_history_can_be_sized() -> None:
    async with Runtime(FakeBackend(), history=50) as rt:
        handles = [await rt.submit(Tiny, i) for i in range(200)]
        await asyncio.gather(*(h.result() for h in handles))
        assert len(rt.runs) == 50
        assert rt.get_run(handles[-1].run_id) is handles[-1]
        assert rt.get_run(handles[0].run_id) is None


# -- 8. nothing starts after a failure or a stop ---------------------------------------------------


@workflow(name="fails_early")
class FailsEarly:
    @step()
    async def items(self, ctx: Context) -> list[int]:
        return list(range(20))

    @step(parallel=True, pool_size=1, max_parallel=10)
    async def work(self, ctx: Context, item: int) -> int:
        RAN.append(item)
        await asyncio.sleep(1.0)
        if item == 0:
            raise ValueError("item 0 fails")
        return item


async def test_queued_items_do_not_start_after_an_item_failed() -> None:
    async with Runtime(FakeBackend()) as rt:
        with pytest.raises(StepFailed, match="item 0"):
            await rt.run(FailsEarly)
    assert RAN == [0], f"items started after the failure: {RAN[1:]}"


@workflow(name="slow_items")
class SlowItems:
    @step()
    async def items(self, ctx: Context) -> list[int]:
        return list(range(20))

    @step(parallel=True, pool_size=1, max_parallel=10)
    async def work(self, ctx: Context, item: int) -> int:
        RAN.append(item)
        await asyncio.sleep(1.0)
        return item


async def test_queued_items_do_not_start_after_stop() -> None:
    async with Runtime(FakeBackend()) as rt:
        handle = await rt.submit(SlowItems)
        await asyncio.sleep(0.5)
        handle.stop()
        with pytest.raises(RunStopped):
            await handle.result()
    assert RAN == [0], f"items started after stop(): {RAN[1:]}"


# -- 10. the first step paid the warm-up: a cold start in the summary ------------------------------


async def test_calls_that_waited_for_the_warm_up_count_as_cold_starts() -> None:
    from shoal.cli import _pool_report

    async with Runtime(FakeBackend(start_time=2.0)) as rt:
        assert await rt.run(Tiny, 1) == 2
        assert await rt.run(Tiny, 2) == 3  # warm now
        report = _pool_report(rt.pool("tiny"), rt.warmup_waits["tiny"])
    assert (report["cold_starts"], report["warm_hits"]) == (1, 1)
