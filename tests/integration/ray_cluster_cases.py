"""Agents on a real multi-node Ray cluster: a head and two workers started on this machine.

The nodes are separate ``ray start`` processes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (see
``raycluster``), two CPUs each. A worker node is lost (SIGKILL of all its processes) with calls in
flight and with only idle agents, and frozen (SIGSTOP); a pool asks for more than the cluster
holds. Nothing may be lost, no run may fail while healthy agents exist, and no Ray process may
outlive the module.

Run by ``test_ray_cluster.py`` in a fresh interpreter: a process that has used a local Ray
instance cannot create actors on another cluster afterwards (Ray 2.60: they die unborn, "all
references to the actor were removed"), and the other Ray tests use one.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.real_time, pytest.mark.timeout(150)]

ray = pytest.importorskip("ray")

from shoal import (  # noqa: E402
    AgentPool,
    Context,
    ResourcesUnavailable,
    Runtime,
    mapreduce,
)
from shoal.backends.ray import RayBackend  # noqa: E402
from tests.integration import workers  # noqa: E402
from tests.integration.raycluster import LocalCluster, Node  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if ray.is_initialized():
        ray.shutdown()
    # A short path: Ray's socket paths under it must fit in 107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="shoal-ray-"))
    c = LocalCluster(tmp, workers=2, cpus=2)
    try:
        c.start()
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
        left = c.pids()
        shutil.rmtree(tmp, ignore_errors=True)
        assert left == [], f"Ray processes outlived the test cluster: {left}"
        if TIMINGS:
            print("\nray cluster timings:", {k: round(v, 2) for k, v in TIMINGS.items()})


@pytest.fixture
def backend(cluster: LocalCluster) -> Iterator[RayBackend]:
    b = RayBackend(address=cluster.address, init_kwargs={"log_to_driver": False})
    try:
        yield b
    finally:
        b.shutdown()
        assert not ray.is_initialized()  # the connection shoal opened is closed


def live_workers(cluster: LocalCluster) -> list[Node]:
    return [n for n in cluster.nodes[1:] if not n.stopped]


def nodes_of(pool: AgentPool) -> dict[str, int]:
    found: dict[str, int] = {}
    for agent in pool.agents:
        if agent.handle is not None and agent.state.value in ("idle", "busy"):
            found[agent.handle.node_ip] = found.get(agent.handle.node_ip, 0) + 1
    return found


async def until(predicate: Any, timeout: float, what: str) -> float:
    """Wait (bounded) for ``predicate()``; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not predicate():
        if loop.time() - began > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)
    return loop.time() - began


def spread_pool(backend: RayBackend, size: int, **options: Any) -> AgentPool:
    return AgentPool(
        "spread",
        min_size=size,
        max_size=size,
        backend=backend,
        placement={"scheduling_strategy": "SPREAD"},
        **options,
    )


async def test_spread_places_agents_on_every_node_and_handles_name_them(
    cluster: LocalCluster, backend: RayBackend
) -> None:
    async with spread_pool(backend, 3) as p:
        assert nodes_of(p) == {"127.0.0.1": 1, "127.0.0.2": 1, "127.0.0.3": 1}
        assert await asyncio.gather(*(p.run(workers.add, i, 1) for i in range(9))) == [
            i + 1 for i in range(9)
        ]
        assert backend.capacity() == 6
        assert backend.capacity({"num_cpus": 2}) == 3
        # The node of each agent, on the agent and in the pool's metrics.
        assert sorted(a.node or "" for a in p.agents) == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        assert p.metrics.nodes == nodes_of(p)
    # Without max_size, a pool is sized by what the cluster holds, not by this machine's CPUs.
    async with AgentPool("auto", min_size=1, backend=backend) as p:
        assert p.max_size == 6
    async with AgentPool("auto2", min_size=1, backend=backend, placement={"num_cpus": 2}) as p:
        assert p.max_size == 3
    async with AgentPool(
        "pinned",
        min_size=2,
        max_size=2,
        backend=backend,
        placement={"scheduling_strategy": {"node": "127.0.0.3"}, "num_cpus": 0.5},
    ) as p:
        assert nodes_of(p) == {"127.0.0.3": 2}


async def test_a_pool_larger_than_the_cluster_says_what_is_short(
    cluster: LocalCluster, backend: RayBackend
) -> None:
    loop = asyncio.get_running_loop()
    async with AgentPool("big", min_size=2, max_size=10, backend=backend) as p:
        began = loop.time()
        with pytest.raises(ResourcesUnavailable, match="CPU") as info:
            await p.resize(9)
        TIMINGS["resources_unavailable_s"] = loop.time() - began
        assert "CPU" in info.value.short
        assert p.metrics.idle == 6 and not p.broken and p.metrics.start_failures == 0
        waiting = [e for e in p.events if e.kind == "waiting_for_resources"]
        assert len(waiting) == 1 and "1 CPU" in waiting[0].reason
        # It serves with what it has, and takes the room when some frees up.
        assert await asyncio.gather(*(p.run(workers.add, i, 0) for i in range(12))) == list(
            range(12)
        )
    # A floor the cluster cannot hold at all fails at once, naming what is short.
    began = loop.time()
    p = AgentPool("huge", min_size=1, max_size=1, backend=backend, placement={"num_cpus": 4})
    with pytest.raises(ResourcesUnavailable, match="needs 4 CPU, 2 of 6 on one node"):
        await p.start()
    assert loop.time() - began < 30


def test_the_data_pipeline_runs_on_the_cluster(cluster: LocalCluster) -> None:
    import sys

    sys.path.insert(0, str(ROOT / "examples"))  # as a driver that runs the example would
    try:
        from data_pipeline import DataPipeline

        async def main() -> Any:
            # 1 + 10 + 1 agents on 6 CPUs: half a CPU each.
            b = RayBackend(address=cluster.address, num_cpus=0.5)
            try:
                async with Runtime(b) as rt:
                    return await rt.run(DataPipeline, {"n": 24, "seed": 3})
            finally:
                b.shutdown()

        result = asyncio.run(main())
    finally:
        sys.path.remove(str(ROOT / "examples"))
    assert result["sensors"] == 24


@mapreduce(
    pool_size=6,
    max_parallel=6,
    retries=1,
    pool_config={"placement": {"scheduling_strategy": "SPREAD"}, "health_check_interval": 60.0},
)
async def slow_square(ctx: Context, x: int) -> int:
    await asyncio.sleep(0.3)
    return x * x


async def test_a_mapreduce_survives_a_lost_worker(
    cluster: LocalCluster, backend: RayBackend
) -> None:
    victim = cluster.add_worker()
    async with Runtime(backend) as rt:
        run = asyncio.ensure_future(rt.run(slow_square, list(range(60))))
        await until(lambda: any(p.metrics.busy >= 4 for p in rt.pools), 60, "the map in full swing")
        cluster.kill(victim)
        assert await asyncio.wait_for(run, 120) == [x * x for x in range(60)]


async def test_a_lost_worker_with_calls_in_flight_fails_no_run(
    cluster: LocalCluster, backend: RayBackend
) -> None:
    loop = asyncio.get_running_loop()
    cluster.add_worker()  # room for the replacements elsewhere
    async with spread_pool(backend, 6, health_check_interval=60.0) as p:
        victim = next(n for n in live_workers(cluster) if n.ip in nodes_of(p))
        calls = [asyncio.ensure_future(p.call(workers.sleep, (3.0,))) for _ in range(6)]
        await until(lambda: p.metrics.busy == 6, 30, "six calls running")
        began = loop.time()
        cluster.kill(victim)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        lost = [o for o in outcomes if isinstance(o, BaseException)]
        TIMINGS["busy_loss_detected_s"] = loop.time() - began
        assert len(lost) <= 2 and all(type(e).__name__ == "AgentLost" for e in lost), lost
        # The pool recovers to six agents, none on the lost node.
        await until(lambda: p.metrics.idle == 6, 60, "six agents again")
        TIMINGS["busy_loss_recovered_s"] = loop.time() - began
        assert victim.ip not in nodes_of(p)
        assert await asyncio.gather(*(p.run(workers.add, i, 1) for i in range(12))) == [
            i + 1 for i in range(12)
        ]


@mapreduce(
    pool_size=6,
    retries=1,
    pool_config={"placement": {"scheduling_strategy": "SPREAD"}, "health_check_interval": 60.0},
)
async def add_one(ctx: Context, x: int) -> int:
    return x + 1


async def test_a_lost_worker_with_only_idle_agents_fails_no_run(
    cluster: LocalCluster, backend: RayBackend
) -> None:
    # The case: a mapreduce with retries=1 failed its whole run after a node died while
    # healthy agents sat idle.
    loop = asyncio.get_running_loop()
    victim = cluster.add_worker()
    async with Runtime(backend) as rt:
        assert await rt.run(add_one, list(range(12))) == list(range(1, 13))
        (pool,) = [p for p in rt.pools if p.name.endswith("add_one")]
        assert nodes_of(pool).get(victim.ip, 0) >= 1, nodes_of(pool)
        began = loop.time()
        cluster.kill(victim)
        run = asyncio.ensure_future(rt.run(add_one, list(range(60))))  # at once
        TIMINGS["idle_loss_detected_s"] = await until(
            lambda: victim.ip not in nodes_of(pool), 30, "the lost node's agents retired"
        )
        assert await asyncio.wait_for(run, 60) == list(range(1, 61))
        await until(lambda: pool.metrics.idle == 6, 60, "back to full size")
        TIMINGS["idle_loss_recovered_s"] = loop.time() - began
        assert victim.ip not in nodes_of(pool)


async def test_a_frozen_worker_fails_its_calls_in_seconds(
    cluster: LocalCluster, backend: RayBackend
) -> None:
    loop = asyncio.get_running_loop()
    victim = cluster.add_worker()
    try:
        async with AgentPool(
            "frozen",
            min_size=1,
            max_size=1,
            backend=backend,
            placement={"scheduling_strategy": {"node": victim.ip}},
        ) as pinned:
            call = asyncio.ensure_future(pinned.call(workers.sleep, (60.0,)))
            await until(lambda: pinned.metrics.busy == 1, 30, "the call running")
            node = pinned.agents[0].handle.node
            await until(lambda: backend._nodes[node].answered, 60, "the node's probe answering")
            began = loop.time()
            cluster.freeze(victim)
            with pytest.raises(Exception) as info:
                await asyncio.wait_for(call, 30)
            TIMINGS["frozen_call_failed_s"] = loop.time() - began
            assert type(info.value).__name__ == "AgentLost", info.value
            assert TIMINGS["frozen_call_failed_s"] < 15
    finally:
        cluster.kill(victim)
