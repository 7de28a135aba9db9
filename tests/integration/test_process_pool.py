"""The pool on real agent processes; every test checks that no child process outlives it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from shoal import (
    AgentLost,
    AgentPool,
    AgentStartError,
    CallTimeout,
    ConfigError,
    ProcessBackend,
    RemoteError,
    RemoteTraceback,
    SerializationError,
)
from tests.integration import workers

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]


def pool(**options: object) -> AgentPool:
    options.setdefault("min_size", 1)
    options.setdefault("max_size", 2)
    return AgentPool("it", backend=ProcessBackend(), **options)  # type: ignore[arg-type]


async def test_calls_run_in_warm_agents_and_setup_runs_once_per_agent() -> None:
    async with pool(min_size=2, max_size=2, setup=workers.setup_counter) as p:
        infos = await asyncio.gather(*(p.run(workers.agent_info) for _ in range(50)))
        pids = {pid for pid, _ in infos}
        assert len(pids) <= 2 and os.getpid() not in pids
        assert {runs for _, runs in infos} == {1}
        assert await p.run(workers.add, 2, b=3) == 5
        assert await p.run(workers.async_double, 21) == 42


async def test_lambdas_and_closures_travel_by_value() -> None:
    factor = 7
    async with pool() as p:
        assert await p.run(lambda x: x * factor, 6) == 42

        def local(x: int) -> int:
            return x + factor

        assert await p.run(local, 1) == 8
        assert await p.run(local, 2) == 9  # second time the agent uses its cached copy


async def test_remote_exception_keeps_its_type_and_traceback_and_the_agent() -> None:
    async with pool(min_size=1, max_size=1) as p:
        before = await p.run(workers.pid)
        with pytest.raises(ValueError, match="bad input") as info:
            await p.run(workers.fail, "bad input")
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback) and "in fail" in cause.tb
        with pytest.raises(RemoteError, match="Unrebuildable: x/y"):
            await p.run(workers.raise_unrebuildable)
        assert await p.run(workers.pid) == before  # same warm agent


async def test_unpicklable_arguments_and_results_are_clear_errors() -> None:
    async with pool(min_size=1, max_size=1) as p:
        before = await p.run(workers.pid)
        with pytest.raises(SerializationError, match=r"argument 0 of 'echo' \(lock\)"):
            await p.run(workers.echo, threading.Lock())
        with pytest.raises(SerializationError, match="the result of 'return_lock'"):
            await p.run(workers.return_lock)
        with pytest.raises(SerializationError, match="generator"):
            await p.run(lambda: (i for i in range(3)))
        assert await p.run(workers.pid) == before
        assert p.metrics.agents_started == 1


async def test_agent_dying_mid_call_is_agent_lost_and_replaced() -> None:
    async with pool(min_size=1, max_size=1) as p:
        with pytest.raises(AgentLost, match="exit code 3") as info:
            await p.run(workers.exit_now, 3)
        assert info.value.exit_code == 3
        with pytest.raises(AgentLost, match="SIGKILL") as info:
            await p.run(workers.kill_self)
        assert info.value.exit_code == -signal.SIGKILL
        assert await p.run(workers.add, 1, 1) == 2
        assert p.metrics.agents_started == 3


async def test_idle_agent_killed_from_outside_is_replaced() -> None:
    async with pool(min_size=2, max_size=2) as p:
        victim = await p.run(workers.pid)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (
            any(a.handle is not None and a.handle.pid == victim for a in p.agents)
            or p.metrics.idle < 2
        ):
            assert time.monotonic() < deadline, p.events
            await asyncio.sleep(0.01)
        assert any(e.kind == "lost" for e in p.events)
        pids = set(await asyncio.gather(*(p.run(workers.pid) for _ in range(10))))
        assert victim not in pids


async def test_setup_that_raises_is_a_start_error_and_leaves_nothing() -> None:
    p = pool(min_size=1, setup=workers.broken_setup)
    with pytest.raises(AgentStartError, match="cannot load the model file") as info:
        await p.start()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert isinstance(info.value.__cause__.__cause__, RemoteTraceback)


async def test_call_timeout_kills_the_hung_agent() -> None:
    async with pool(min_size=1, max_size=1) as p:
        hung = await p.run(workers.pid)
        with pytest.raises(CallTimeout):
            await p.call(workers.sleep, (30,), timeout=0.5)
        assert await p.run(workers.pid) != hung


async def test_health_check_pings_idle_agents() -> None:
    async with pool(min_size=2, max_size=2, health_check_interval=0.05) as p:
        agents = list(p.agents)
        await asyncio.sleep(0.3)
        assert all(a.last_checked > a.ready_at for a in agents)  # type: ignore[operator]
        assert [a.agent_id for a in p.agents] == [a.agent_id for a in agents]


async def test_close_waits_for_in_flight_calls() -> None:
    p = pool(min_size=1, max_size=1, stop_grace=10)
    await p.start()
    running = asyncio.create_task(p.run(workers.sleep, 0.3))
    await asyncio.sleep(0.05)
    await p.aclose()
    assert await running == 0.3


async def test_big_payloads_cross_both_ways() -> None:
    blob = os.urandom(8 << 20)
    async with pool(min_size=1, max_size=1) as p:
        assert await p.run(workers.echo, blob) == blob


def test_agents_die_with_a_sigkilled_parent(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            from shoal import AgentPool
            from tests.integration import workers

            async def main():
                async with AgentPool("orphans", min_size=2, max_size=2) as pool:
                    pids = await asyncio.gather(*(pool.run(workers.pid) for _ in range(4)))
                    # One agent is busy in a long call when the parent dies.
                    busy = asyncio.ensure_future(pool.run(workers.sleep, 60))
                    await asyncio.sleep(0.2)
                    print(" ".join(str(a.handle.pid) for a in pool.agents), flush=True)
                    await asyncio.sleep(60)

            asyncio.run(main())
            """
        )
    )
    root = Path(__file__).resolve().parents[2]
    owner = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        cwd=root,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert owner.stdout is not None
    with owner.stdout:
        line = owner.stdout.readline()
    pids = [int(p) for p in line.split()]
    assert len(pids) == 2
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 5
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        time.sleep(0.02)
    assert alive == [], f"agents {alive} outlived their parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_closing_while_agents_start_leaves_no_process() -> None:
    async with AgentPool("slow", min_size=0, max_size=3, setup=workers.slow_setup) as p:
        calls = [asyncio.create_task(p.run(workers.pid)) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert p.metrics.starting == 3
    for call in calls:
        with pytest.raises(Exception, match="closed"):
            await call


@pytest.mark.parametrize("spin", [0.0, 1e-3])
async def test_agents_work_with_and_without_spinning(spin: float) -> None:
    backend = ProcessBackend(spin=spin)
    async with AgentPool("spin", min_size=2, max_size=2, backend=backend) as p:
        results = await asyncio.gather(*(p.run(workers.add, i, 1) for i in range(200)))
        assert results == [i + 1 for i in range(200)]


def test_negative_spin_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="spin=-1"):
        ProcessBackend(spin=-1)


async def test_a_64_mib_payload_crosses_both_ways_and_the_pool_stays_healthy() -> None:
    blob = os.urandom(64 << 20)
    async with pool(min_size=1, max_size=1) as p:
        before = await p.run(workers.pid)
        assert await p.run(workers.echo, blob) == blob
        assert await p.run(workers.pid) == before
