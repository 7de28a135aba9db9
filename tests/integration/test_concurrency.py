"""max_concurrency on real agent processes: one agent runs several calls at once, async ones on
its event loop, plain ones in its threads."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from shoal import AgentPool, Context, Runtime, mapreduce
from tests.integration import workers

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]


def most_at_once(spans: list[tuple[int, float, float]]) -> dict[int, int]:
    """Per agent pid, the most calls whose spans overlapped."""
    by_pid: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for pid, start, end in spans:
        by_pid[pid] += [(start, 1), (end, -1)]
    peaks = {}
    for pid, edges in by_pid.items():
        now = peak = 0
        for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
            now += step
            peak = max(peak, now)
        peaks[pid] = peak
    return peaks


@pytest.mark.parametrize("fn", [workers.overlap_probe, workers.overlap_probe_sync])
async def test_one_agent_runs_many_calls_at_once(fn: object) -> None:
    async with AgentPool("c", min_size=1, max_size=1, max_concurrency=20) as pool:
        spans = await asyncio.gather(*(pool.run(fn, 0.3) for _ in range(40)))  # type: ignore[arg-type]
        m = pool.metrics
    peaks = most_at_once(spans)
    assert len(peaks) == 1, "one agent"
    assert max(peaks.values()) >= 10, peaks  # 20 slots; load may stagger a few
    assert m.agents_started == 1 and m.max_concurrency == 20


@mapreduce(pool_size=2, max_parallel=100, max_concurrency=50)
async def fetch(ctx: Context, item: int) -> tuple[int, float, float]:
    return await workers.overlap_probe(0.2)


async def test_an_io_bound_fan_out_needs_few_agents() -> None:
    async with Runtime() as rt:
        spans = await rt.run(fetch, range(300))
        pool = rt.pool("fetch")
        assert pool.metrics.agents_started == 2
    peaks = most_at_once(spans)
    assert sum(peaks.values()) >= 40, peaks  # calls in flight across the 2 agents
