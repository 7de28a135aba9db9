"""Agents in containers, through the Docker Engine API served by Podman.

`scripts/container-setup.sh` (run by .ci/run) installs Podman, starts its API service and
builds the tiny local image `shoal-agent:latest`; the backend mounts the host's Python into it.
With SHOAL_REQUIRE_CONTAINERS=1 (as in CI) a missing engine fails these tests instead of
skipping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import subprocess
import sys
import time
import warnings
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
    problem = None
    try:
        client = docker.DockerClient(base_url=f"unix://{SOCKET}")
        client.images.get(IMAGE)
        client.close()
    except Exception as exc:
        problem = f"the engine or the image {IMAGE} is not ready: {exc}"
    if problem is not None:
        # The SDK leaves the socket of a refused connection open (the exception held it);
        # collect it here, or its ResourceWarning fails some later test's teardown.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    return problem


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
    """This process's agent containers (the engine may be shared with other test runs)."""
    mine = f"label=shoal.owner={_owner_of(os.getpid())}"
    out = subprocess.run(
        ["podman", "ps", "-aq", "--filter", "label=shoal.pool", "--filter", mine],
        capture_output=True,
        text=True,
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


# -- isolation: what an agent's container is given -------------------------------------------


async def test_a_container_is_confined_as_configured() -> None:
    from shoal.backends.container import ContainerBackend

    confined = ContainerBackend(IMAGE, base_url=f"unix://{SOCKET}", pids_limit=256)
    async with AgentPool("box", min_size=1, max_size=1, backend=confined) as p:
        container = p.agents[0].handle.container
        await asyncio.to_thread(container.reload)
        config, host = container.attrs["Config"], container.attrs["HostConfig"]
        sources = {m["Source"] for m in container.attrs["Mounts"]}
        assert "/" not in sources and "/etc" not in sources, sources
        assert config["User"] == f"{os.getuid()}:{os.getgid()}"
        dropped = {c.upper().removeprefix("CAP_") for c in host.get("CapDrop") or []}
        assert "ALL" in dropped or {"CHOWN", "DAC_OVERRIDE", "SETUID", "NET_RAW"} <= dropped
        assert await p.run(workers.capabilities) == (0, 0)  # effective, bounding
        assert host["ReadonlyRootfs"] is True
        assert any("no-new-privileges" in o for o in host.get("SecurityOpt") or []), host
        assert host["PidsLimit"] == 256
        assert await p.run(workers.write_and_read, "/tmp/scratch") == "ok"  # tmpfs /tmp
        with pytest.raises(OSError):
            await p.run(workers.write_and_read, "/usr/scratch")  # read-only everything else


async def test_an_agent_cannot_read_the_hosts_secrets_or_another_agents_socket_folder(
    tmp_path: Path,
) -> None:
    # `shoal run /tmp/flow.py` puts the whole temporary folder on sys.path, where every
    # agent's socket folder lives: it must not be mounted because of that.
    import tempfile

    sys.path.append(tempfile.gettempdir())
    try:
        async with cpool(min_size=2, max_size=2) as p:
            one, other = (a.handle for a in p.agents)
            secret = Path(other.folder) / "secret"
            secret.write_text("only for the other agent")
            probes = [str(secret), "/etc/shadow"]
            assert one.folder != other.folder
            seen = await asyncio.gather(*(p.run(workers.can_read, path) for path in probes))
            assert seen == [False, False], dict(zip(probes, seen, strict=True))
    finally:
        sys.path.remove(tempfile.gettempdir())


# -- orphans: only those whose controller is provably gone ----------------------------------


def _labelled_container(client: Any, owner: str, folder: str) -> Any:
    return client.containers.run(
        IMAGE,
        ["/usr/bin/sleep", "120"],
        detach=True,
        network_mode="none",
        volumes={p: {"bind": p, "mode": "ro"} for p in ("/usr", "/lib", "/lib64", "/bin")},
        labels={"shoal.pool": "orphans", "shoal.owner": owner, "shoal.folder": folder},
    )


def _owner_of(pid: int) -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    with open(f"/proc/{pid}/stat") as f:
        started = f.read().rsplit(")", 1)[1].split()[19]
    return f"{boot}/{pid}/{started}"


def test_orphan_cleanup_spares_live_controllers_and_removes_dead_ones_with_their_folders() -> None:
    import docker

    client = docker.DockerClient(base_url=f"unix://{SOCKET}")
    live = subprocess.Popen(["sleep", "120"])  # stands for another controller, still running
    dead = subprocess.Popen(["true"])
    dead_owner = _owner_of(dead.pid)
    dead.wait()
    import tempfile

    live_folder = tempfile.mkdtemp(prefix="shoal-", dir="/tmp")
    dead_folder = tempfile.mkdtemp(prefix="shoal-", dir="/tmp")
    made = []
    try:
        made.append(spared := _labelled_container(client, _owner_of(live.pid), live_folder))
        made.append(removed := _labelled_container(client, dead_owner, dead_folder))
        backend()._engine()  # a backend connecting to the engine cleans up
        names = {c.id for c in client.containers.list(all=True)}
        assert spared.id in names, "a live controller's running container was removed"
        assert os.path.isdir(live_folder)
        assert removed.id not in names, "a dead controller's container was left"
        assert not os.path.exists(dead_folder), "a dead controller's socket folder was left"
    finally:
        live.kill()
        live.wait()
        for c in made:
            with contextlib.suppress(Exception):
                c.remove(force=True)
        for folder in (live_folder, dead_folder):
            shutil.rmtree(folder, ignore_errors=True)
