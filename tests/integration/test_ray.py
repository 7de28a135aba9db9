"""Agents as Ray actors, on a real local Ray instance (kept on loopback).

The same pool and workflow tests as on local processes: warm setup, calls, errors, lost and hung
agents, failed starts, and the data-pipeline example with the same results as on processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.real_time]

ray = pytest.importorskip("ray")

from shoal import (  # noqa: E402
    AgentLost,
    AgentPool,
    AgentStartError,
    CallTimeout,
    RemoteTraceback,
    Runtime,
)
from shoal.backends.ray import RayBackend, init_on_loopback  # noqa: E402
from tests.integration import faults, sockets, workers  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    init_on_loopback(ray, num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()  # this driver's instance only; never `ray stop`


def backend() -> RayBackend:
    return RayBackend(num_cpus=0.1)


def ray_pool(**options: Any) -> AgentPool:
    options.setdefault("min_size", 1)
    options.setdefault("max_size", 2)
    return AgentPool("ray", backend=backend(), **options)


async def test_actors_warm_up_once_and_serve_calls() -> None:
    async with ray_pool(min_size=2, max_size=2, setup=workers.setup_counter) as p:
        infos = await asyncio.gather(*(p.run(workers.agent_info) for _ in range(20)))
        assert len({pid for pid, _ in infos}) == 2 and os.getpid() not in {i[0] for i in infos}
        assert {runs for _, runs in infos} == {1}
        factor = 3
        assert await p.run(lambda x: x * factor, 14) == 42
        with pytest.raises(ValueError, match="bad") as info:
            await p.run(workers.fail, "bad")
        assert isinstance(info.value.__cause__, RemoteTraceback)


async def test_a_lost_actor_is_agent_lost_and_replaced() -> None:
    async with ray_pool(min_size=1, max_size=1) as p:
        before = await p.run(workers.pid)
        with pytest.raises(AgentLost):
            await p.run(workers.exit_now, 3)
        after = await p.run(workers.pid)
        assert after != before and p.metrics.agents_started == 2


async def test_a_replacement_on_the_only_node_is_not_taken_for_lost() -> None:
    # On a one-node instance, a replacement slower to start than node_timeout was at once taken
    # for lost with its node (the node's watch kept its last answer from before the loss), and
    # so was every replacement after it: the pool never served again. Replacements were also
    # sent to avoid the only node there is.
    b = RayBackend(num_cpus=0.1, node_timeout=0.5)
    async with AgentPool("ray", min_size=1, max_size=1, backend=b, setup=workers.slow_setup) as p:
        before = await p.run(workers.pid)
        with pytest.raises(AgentLost):
            await p.run(workers.exit_now, 3)
        after = await asyncio.wait_for(p.run(workers.pid), 45)
        assert after != before
        await asyncio.sleep(2.0)  # rounds of the liveness watch over the new agent
        assert await p.run(workers.pid) == after
        assert p.metrics.agents_started == 2, [e.reason for e in p.events]


async def test_a_hung_call_times_out_and_the_actor_is_replaced() -> None:
    async with ray_pool(min_size=1, max_size=1) as p:
        before = await p.run(workers.pid)
        with pytest.raises(CallTimeout):
            await p.call(faults.running, ("hangs",), timeout=1.0)
        assert await p.run(workers.pid) != before


async def test_a_failing_setup_is_a_start_error() -> None:
    p = ray_pool(setup=workers.broken_setup)
    with pytest.raises(AgentStartError, match="cannot load the model file"):
        await p.start()


async def test_health_check_notices_a_dead_idle_actor() -> None:
    async with ray_pool(min_size=1, max_size=1, health_check_interval=0.2) as p:
        agent = p.agents[0]
        ray.kill(agent.handle.actor, no_restart=True)
        for _ in range(200):
            if agent.state.value in ("stopping", "stopped"):
                break
            await asyncio.sleep(0.05)
        assert agent.state.value in ("stopping", "stopped")
        assert await p.run(workers.add, 1, 2) == 3


async def test_an_idle_actor_that_dies_is_replaced_without_waiting_for_a_health_check() -> None:
    async with ray_pool(min_size=1, max_size=1, health_check_interval=3600.0) as p:
        agent = p.agents[0]
        ray.kill(agent.handle.actor, no_restart=True)
        for _ in range(600):  # bounded (30 s): its death reaches the pool at once
            if agent.state.value in ("stopping", "stopped"):
                break
            await asyncio.sleep(0.05)
        assert agent.state.value in ("stopping", "stopped")
        assert await p.run(workers.add, 1, 2) == 3 and p.metrics.requests_failed == 0


async def test_a_backend_naming_another_cluster_than_the_one_connected_is_refused() -> None:
    p = AgentPool(
        "elsewhere", min_size=1, max_size=1, backend=RayBackend("127.0.0.1:1", num_cpus=0.1)
    )
    with pytest.raises(Exception) as info:
        await p.start()
    said = f"{info.value} {info.value.__cause__}"
    assert "a process talks to one cluster" in said and "127.0.0.1:1" in said, said


async def test_the_data_pipeline_gives_the_same_result_on_ray_and_on_processes() -> None:
    sys.path.insert(0, str(ROOT / "examples"))  # as a driver that runs the example would
    try:
        from data_pipeline import DataPipeline

        request = {"n": 24, "seed": 3}
        async with Runtime(backend()) as rt:
            on_ray = await rt.run(DataPipeline, request)
        async with Runtime() as rt:
            on_processes = await rt.run(DataPipeline, request)
    finally:
        sys.path.remove(str(ROOT / "examples"))
    assert on_ray == on_processes and on_ray["sensors"] == 24


def test_shoal_run_backend_ray_runs_a_script_workflow_unchanged(tmp_path: Path) -> None:
    script = tmp_path / "only_here.py"  # importable only from the driver's path
    script.write_text(
        "from shoal import Context, step, workflow\n"
        "@workflow\n"
        "class OnlyHere:\n"
        "    @step(parallel=True, pool_size=2)\n"
        "    async def double(self, ctx: Context, x: int) -> int:\n"
        "        return 2 * x\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoal.cli",
            "run",
            str(script),
            "--input",
            "[1, 2, 3]",
            "--backend",
            "ray",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["result"] == [2, 4, 6]


LOOPBACK_PROBE = """
import asyncio, json, os, sys
from shoal import AgentPool
from shoal.backends.ray import RayBackend
from tests.integration import sockets, workers

async def main():
    backend = RayBackend(num_cpus=0.1, init_kwargs={"num_cpus": 1, "log_to_driver": False})
    async with AgentPool("probe", min_size=1, max_size=1, backend=backend) as pool:
        assert await pool.run(workers.add, 1, 2) == 3
        print(json.dumps(sockets.listeners_of(os.getpid())))
    backend.shutdown()

asyncio.run(main())
"""


def test_a_local_ray_instance_listens_on_loopback_only() -> None:
    # Without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER: nobody should need to know about it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{ROOT}"
    done = subprocess.run(
        [sys.executable, "-c", LOOPBACK_PROBE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    listeners = json.loads(done.stdout.strip().splitlines()[-1])
    commands = {comm for _, _, comm in listeners}
    assert {"gcs_server", "raylet"} <= commands, listeners  # the probe saw Ray's processes
    exposed = [row for row in listeners if not sockets.is_loopback(row[0])]
    assert exposed == [], f"Ray listens beyond loopback: {exposed}"


@pytest.mark.parametrize("fn", [workers.overlap_probe, workers.overlap_probe_sync])
async def test_an_actor_runs_max_concurrency_calls_at_once(fn: Any) -> None:
    async with ray_pool(min_size=1, max_size=1, max_concurrency=8) as p:
        spans = await asyncio.gather(*(p.run(fn, 0.5) for _ in range(16)))
        assert p.metrics.agents_started == 1
    edges = sorted([(start, 1) for _, start, _ in spans] + [(end, -1) for _, _, end in spans])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    assert len({pid for pid, _, _ in spans}) == 1 and peak >= 4, spans  # 8 slots; load staggers


async def test_a_pool_without_max_size_is_sized_by_the_cluster_and_agents_name_their_node() -> None:
    # The instance has 2 CPUs: room for 4 agents of half a CPU, whatever this machine has.
    async with AgentPool("sized", min_size=1, backend=backend(), placement={"num_cpus": 0.5}) as p:
        assert p.max_size == 4
        assert [a.node for a in p.agents] == ["127.0.0.1"]
        assert p.metrics.nodes == {"127.0.0.1": 1}


async def test_a_spot_placement_of_ray_actors_preempted_with_calls_in_flight_loses_none() -> None:
    """Placements on Ray: spot capacity as Ray actors beside on-demand local processes. A notice
    for the Ray placement with calls running there: the calls are re-queued and answered by
    replacements on the on-demand placement, and the actors are gone."""
    from shoal import PreemptionNotice, ProcessBackend

    pool = AgentPool(
        "ray-spot",
        min_size=0,
        max_size=2,
        start_timeout=120,
        placements=[
            {"name": "ray-spot", "capacity": "spot", "price_per_hour": 0.3, "backend": backend()},
            {"name": "local", "price_per_hour": 1.0, "backend": ProcessBackend()},
        ],
    )
    async with pool:
        pool.set_spot(True, spot_fraction=1.0, on_demand_base=0)
        await pool.resize(2)
        assert {a.placement.name for a in pool.agents} == {"ray-spot"}
        actors = {a.agent_id for a in pool.agents}
        ray_pids = set(await asyncio.gather(*(pool.run(workers.pid) for _ in range(4))))
        calls = [asyncio.create_task(pool.run(workers.sleep_and_pid, 3.0)) for _ in range(3)]
        for _ in range(1200):  # bounded (60 s): both calls out on the spot agents
            if pool.metrics.busy == 2:
                break
            await asyncio.sleep(0.05)
        assert pool.metrics.busy == 2
        loop = asyncio.get_running_loop()
        hit = pool.preempt(PreemptionNotice("ray-spot", deadline=loop.time() + 0.5, source="test"))
        assert {a.agent_id for a in hit} == actors
        pids = await asyncio.wait_for(asyncio.gather(*calls), 120)
        assert len(pids) == 3 and pool.metrics.preemptions == 1
        assert pool.metrics.requeued == 2  # the two running on the actors, cut short, run again
        assert not set(pids) & ray_pids  # every answer came from a local replacement
        assert not actors & {a.agent_id for a in pool.agents}
        assert {a.placement.name for a in pool.agents} == {"local"}
