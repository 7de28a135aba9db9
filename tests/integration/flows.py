"""Workflows run by the integration tests on real agent processes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from shoal import Context, mapreduce, step, workflow

SETUPS = 0


@workflow(name="warm")
class Warm:
    def setup(self) -> None:
        global SETUPS
        SETUPS += 1
        self.pid = os.getpid()

    @step()
    async def make(self, ctx: Context, n: int) -> list[int]:
        return list(range(n))

    @step(parallel=True, pool_size=2, max_parallel=4)
    async def tag(self, ctx: Context, item: int) -> tuple[int, int, int]:
        assert self.pid == os.getpid()
        return item, os.getpid(), SETUPS

    @step()
    async def collect(self, ctx: Context, tags: list[tuple[int, int, int]]) -> dict[str, Any]:
        return {
            "items": [t[0] for t in tags],
            "pids": sorted({t[1] for t in tags}),
            "setups": sorted({t[2] for t in tags}),
            "parent": os.getppid(),
        }


@workflow(name="boom")
class Boom:
    @step(parallel=True, pool_size=2)
    async def each(self, ctx: Context, item: int) -> int:
        if item == 2:
            raise KeyError(f"no record {item}")
        return item


@workflow(name="slow")
class Slow:
    @step(parallel=True, pool_size=2)
    async def wait(self, ctx: Context, marker: str) -> None:
        Path(marker).with_name(f"{os.getpid()}.pid").write_text("")
        await asyncio.sleep(60)


@mapreduce(pool_size=2, reduce=sum)
async def char_count(ctx: Context, word: str) -> int:
    return len(word)


@workflow(
    name="bursty",
    scaling_policy={"min": 1, "max": 4, "cooldown_period": 1.0, "interval": 0.1},
)
class Bursty:
    @step()
    async def handle(self, ctx: Context, request: int) -> int:
        await asyncio.sleep(0.3)
        return request * 2


@workflow(name="drain")
class Drain:
    @step(parallel=True, pool_size=2, max_parallel=2)
    async def work(self, ctx: Context, marker: str) -> None:
        folder = Path(marker).parent
        (folder / f"started-{ctx.item_index}").write_text("")
        await asyncio.sleep(1.0)
        (folder / f"done-{ctx.item_index}").write_text("")


@workflow(name="generator")
class ReturnsGenerator:
    @step()
    async def gen(self, ctx: Context) -> Any:
        return (i for i in range(3))
