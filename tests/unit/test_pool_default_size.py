"""A pool given no ``max_size`` takes its default from a backend that knows its capacity (a Ray
cluster), not from this machine's CPU count (issue 15, point 2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shoal import AgentPool, FakeBackend


class ClusterBackend(FakeBackend):
    """Room for 7 one-CPU agents, 3 two-CPU ones."""

    async def default_max_size(self, placement: Mapping[str, Any]) -> int | None:
        return 3 if placement.get("num_cpus") == 2 else 7


async def test_a_pool_without_max_size_takes_the_clusters() -> None:
    async with AgentPool("p", backend=ClusterBackend()) as pool:
        assert pool.max_size == 7 and pool.metrics.max_size == 7
        await pool.resize(7)
        assert pool.size == 7
        assert any(e.kind == "note" and "max_size 7" in e.reason for e in pool.events)
    async with AgentPool("p", backend=ClusterBackend(), placement={"num_cpus": 2}) as pool:
        assert pool.max_size == 3
    async with AgentPool.from_config("p", {"min_size": 2}, backend=ClusterBackend()) as pool:
        assert pool.max_size == 7


async def test_a_max_size_given_is_kept_and_min_size_is_a_floor() -> None:
    async with AgentPool("p", max_size=2, backend=ClusterBackend()) as pool:
        assert pool.max_size == 2
    async with AgentPool.from_config("p", {"max_size": 9}, backend=ClusterBackend()) as pool:
        assert pool.max_size == 9
    async with AgentPool(
        "p", min_size=4, backend=ClusterBackend(), placement={"num_cpus": 2}
    ) as pool:
        assert pool.max_size == 4 and pool.size == 4
