"""Agents in containers, through the Docker Engine API served by Podman.

`scripts/container-setup.sh` (run by .ci/run) installs Podman, starts its API service and
builds the tiny local image `shoal-agent:latest`; the backend mounts the host's Python into it.
With SHOAL_REQUIRE_CONTAINERS=1 (as in CI) a missing engine fails these tests instead of
skipping them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shoal import AgentLost, AgentPool, AgentStartError, CallTimeout, RemoteTraceback, Runtime
from tests.integration import faults, workers

pytestmark = [pytest.mark.container, pytest.mark.real_time]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "shoal-agent:latest"
SOCKET = "/run/podman/podman.sock"


def _engine_ready() -> str | None:
    try:
        import docker
    except ImportError:
        return "the docker SDK is not installed"
    if not os.path.exists(SOCKET):
        return f"no container engine at {SOCKET} (run scripts/container-setup.sh)"
    try:
        client = docker.DockerClient(base_url=f"unix://{SOCKET}")
        client.images.get(IMAGE)
    except Exception as exc:
        return f"the engine or the image {IMAGE} is not ready: {exc}"
    return None


@pytest.fixture(scope="module", autouse=True)
def engine() -> None:
    problem = _engine_ready()
    if problem is not None:
        if os.environ.get("SHOAL_REQUIRE_CONTAINERS") == "1":
            pytest.fail(problem)
        pytest.skip(problem)


def backend() -> Any:
    from shoal.backends.container import ContainerBackend

    return ContainerBackend(IMAGE, base_url=f"unix://{SOCKET}")


def cpool(**options: Any) -> AgentPool:
    options.setdefault("min_size", 1)
    options.setdefault("max_size", 2)
    return AgentPool("box", backend=backend(), **options)


def containers() -> list[str]:
    out = subprocess.run(
        ["podman", "ps", "-aq", "--filter", "label=shoal.pool"], capture_output=True, text=True
    )
    return out.stdout.split()


@pytest.fixture(autouse=True)
def no_leaked_containers() -> Any:
    yield
    deadline = time.monotonic() + 10
    while containers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert containers() == [], "containers outlived their pool"


async def test_agents_in_containers_warm_up_once_and_have_no_network() -> None:
    async with cpool(min_size=2, max_size=2, setup=workers.setup_counter) as p:
        infos = await asyncio.gather(*(p.run(workers.agent_info) for _ in range(10)))
        assert {runs for _, runs in infos} == {1}
        assert await p.run(os.listdir, "/sys/class/net") == ["lo"]
        factor = 5
        assert await p.run(lambda x: x * factor, 8) == 40
        with pytest.raises(ValueError, match="nope") as info:
            await p.run(workers.fail, "nope")
        assert isinstance(info.value.__cause__, RemoteTraceback)


async def test_a_container_agent_that_dies_is_lost_and_replaced() -> None:
    async with cpool(min_size=1, max_size=1) as p:
        with pytest.raises(AgentLost, match="exit code 3"):
            await p.run(workers.exit_now, 3)
        with pytest.raises(AgentLost):
            await p.call(faults.running, ("crashes",))
        assert await p.run(workers.add, 2, 2) == 4
        assert p.metrics.agents_started == 3


async def test_a_container_killed_from_outside_is_lost_and_replaced() -> None:
    async with cpool(min_size=1, max_size=1) as p:
        agent = p.agents[0]
        running = asyncio.ensure_future(p.run(workers.sleep, 30))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(agent.handle.container.kill)  # as `podman kill` would
        with pytest.raises(AgentLost):
            await running
        assert await p.run(workers.add, 1, 1) == 2


async def test_a_hung_container_call_times_out_and_is_replaced() -> None:
    async with cpool(min_size=1, max_size=1) as p:
        first = p.agents[0].agent_id
        with pytest.raises(CallTimeout):
            await p.call(faults.running, ("hangs",), timeout=1.0)
        assert await p.run(workers.add, 1, 1) == 2
        assert p.agents[0].agent_id != first


async def test_a_failing_setup_and_a_missing_image_are_start_errors() -> None:
    with pytest.raises(AgentStartError, match="cannot load the model file"):
        await cpool(setup=workers.broken_setup).start()
    from shoal.backends.container import ContainerBackend

    missing = ContainerBackend("no-such-image:1", base_url=f"unix://{SOCKET}")
    with pytest.raises(AgentStartError, match="not found"):
        await AgentPool("nope", min_size=1, max_size=1, backend=missing).start()


async def test_the_data_pipeline_gives_the_same_result_in_containers() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from data_pipeline import DataPipeline

        request = {"n": 16, "seed": 5}
        async with Runtime(backend()) as rt:
            in_containers = await rt.run(DataPipeline, request)
        async with Runtime() as rt:
            on_processes = await rt.run(DataPipeline, request)
    finally:
        sys.path.remove(str(ROOT / "examples"))
    assert in_containers == on_processes and in_containers["sensors"] == 16


async def test_many_container_agents_do_not_starve_the_engine_calls() -> None:
    # Each agent's exit is awaited in a thread of its own, not the loop's small shared pool.
    async with cpool(min_size=6, max_size=9) as p:
        await p.resize(9)
        results = await asyncio.gather(*(p.run(workers.add, i, 1) for i in range(30)))
        assert results == [i + 1 for i in range(30)] and p.size == 9


async def test_a_cancelled_container_start_leaves_no_container() -> None:
    pool = cpool(min_size=1, max_size=1)
    start = asyncio.ensure_future(pool.start())
    await asyncio.sleep(0.03)  # the engine is creating the container
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    # no_leaked_containers checks that the engine's container was removed anyway


async def test_a_container_agent_reports_liveness_by_heartbeat_and_host_pid() -> None:
    from shoal.backends.base import AgentSpec

    b = backend()
    handle = await b.start(AgentSpec(pool="box", agent_id="box-live", heartbeat_interval=0.2))
    try:
        assert handle.cpu is not None, "the agent's host pid was not found"
        loop = asyncio.get_running_loop()
        call = b.call(handle, workers.sleep, (2,), {})
        worst = 0.0
        while not call.done():
            worst = max(worst, b.unresponsive_for(handle, loop.time()))
            await asyncio.wait({call}, timeout=0.05)
        assert await call == 2
        assert worst < 1.0
        # The same channel machinery as a local agent: a forking step does not shift results.
        assert await b.call(handle, workers.fork_and_return, (1,), {}) == "parent 1"
        for i in range(10):
            assert await b.call(handle, workers.add, (i, 1), {}) == i + 1
    finally:
        await b.kill(handle)
