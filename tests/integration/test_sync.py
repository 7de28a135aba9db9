"""shoal from synchronous code: the script pool and shoal.run, on real agent processes."""

from __future__ import annotations

import asyncio

import pytest

import shoal
from shoal import Context, mapreduce
from tests.integration import workers

pytestmark = [pytest.mark.usefixtures("no_leaked_children")]


def test_a_script_pool_maps_like_an_executor() -> None:
    with shoal.pool(max_size=2, min_size=2) as p:
        assert list(p.map(workers.add, range(50), range(50))) == [2 * i for i in range(50)]
        assert p.run(workers.add, 2, 3) == 5
        futures = [p.submit(workers.pid) for _ in range(10)]
        pids = {f.result() for f in futures}
        assert 1 <= len(pids) <= 2  # warm agents, reused
        with pytest.raises(ValueError, match="boom"):
            p.run(workers.fail, "boom")
    with pytest.raises(shoal.ShoalError, match="closed"):
        p.run(workers.pid)


@mapreduce(pool_size=2)
async def double(ctx: Context, item: int) -> int:
    return item * 2


def test_shoal_run_from_a_script() -> None:
    assert shoal.run(double, [1, 2, 3]) == [2, 4, 6]


@pytest.mark.real_time
async def test_shoal_run_inside_a_running_loop_as_in_a_notebook() -> None:
    # A notebook cell runs in a live event loop: shoal.run must work there too.
    assert asyncio.get_running_loop().is_running()
    assert shoal.run(double, [4, 5]) == [8, 10]
