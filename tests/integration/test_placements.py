"""Placements on real backends: two process backends standing for two regions, a container
placement, a placement whose engine is not there (failover), and a preemption notice with
calls in flight on real agent processes. The spot market and the regions' distance are the
simulated part (a notice is sent by the test; rtt_ms is a number the pool ranks by); the
agents, their starts, their deaths and the calls are real."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
from typing import Any

import pytest

from shoal import AgentPool, PreemptionNotice, ProcessBackend
from shoal.backends.base import AgentSpec
from tests.integration import workers

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]


def _engine_listening(path: str) -> str | None:
    """Why nothing answers on the engine's socket, or None (checked without the docker SDK,
    which leaves a socket open when the engine refuses the connection)."""
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(path)
        except OSError as exc:
            return f"no container engine listening at {path}: {exc}"
    return None


class Counting(ProcessBackend):
    """A process backend that remembers which agents it started."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []

    async def start(self, spec: AgentSpec) -> Any:
        self.started.append(spec.agent_id)
        return await super().start(spec)


async def test_two_process_backends_as_two_regions_each_start_their_own_agents() -> None:
    near, far = Counting(), Counting()
    pool = AgentPool(
        "regions",
        min_size=3,
        max_size=4,
        placements=[
            {"region": "near", "price_per_hour": 1.0, "rtt_ms": 5, "max_size": 2, "backend": near},
            {"region": "far", "price_per_hour": 1.0, "rtt_ms": 80, "backend": far},
        ],
    )
    async with pool:
        by_region = sorted(a.placement.region for a in pool.agents)
        assert by_region == ["far", "near", "near"]
        assert len(near.started) == 2 and len(far.started) == 1
        pids = await asyncio.gather(*(pool.run(workers.pid) for _ in range(30)))
        assert len(set(pids)) <= 4
        # Every agent (on-demand starts for the burst included) at its placement's price.
        assert pool.metrics.cost_per_hour == pytest.approx(1.0 * len(pool.agents))


async def test_a_placement_that_cannot_start_agents_fails_over_and_no_call_is_lost(
    tmp_path: Any,
) -> None:
    # A "region" whose machines cannot run an agent: every start there really fails (its
    # interpreter is not there), as a region whose engine or API is down would.
    down = ProcessBackend(python=str(tmp_path / "no-python-here"))
    fallback = Counting()
    pool = AgentPool(
        "failover",
        min_size=0,
        max_size=3,
        start_timeout=60,
        placements=[
            {"name": "cheap-but-down", "price_per_hour": 0.1, "backend": down},
            {"name": "dearer", "price_per_hour": 1.0, "backend": fallback},
        ],
    )
    async with pool:
        results = await asyncio.gather(*(pool.run(workers.add, i, 1) for i in range(12)))
        assert results == [i + 1 for i in range(12)]
        assert not pool.broken
        assert {a.placement.name for a in pool.agents} == {"dearer"}
        failed = [e for e in pool.events if e.kind == "start_failed"]
        assert failed and fallback.started


async def test_a_preemption_with_calls_in_flight_requeues_them_and_they_are_answered() -> None:
    spot, on_demand = Counting(), Counting()
    pool = AgentPool(
        "spot",
        min_size=0,
        max_size=2,
        start_timeout=60,
        placements=[
            {"name": "spot", "capacity": "spot", "price_per_hour": 0.3, "backend": spot},
            {"name": "od", "price_per_hour": 1.0, "backend": on_demand},
        ],
    )
    async with pool:
        pool.set_spot(True, spot_fraction=1.0, on_demand_base=0)
        await pool.resize(2)
        assert {a.placement.name for a in pool.agents} == {"spot"}
        doomed = {a.agent_id for a in pool.agents}
        # Two calls that cannot finish within the notice, one waiting behind them.
        calls = [asyncio.create_task(pool.run(workers.sleep_and_pid, 3.0)) for _ in range(3)]
        for _ in range(1200):  # bounded (60 s): both calls out on the spot agents
            if pool.metrics.busy == 2:
                break
            await asyncio.sleep(0.05)
        assert pool.metrics.busy == 2
        loop = asyncio.get_running_loop()
        hit = pool.preempt(PreemptionNotice("spot", deadline=loop.time() + 0.5, source="test"))
        assert {a.agent_id for a in hit} == doomed
        pids = await asyncio.wait_for(asyncio.gather(*calls), 120)
        assert len(pids) == 3
        m = pool.metrics
        assert m.requeued == 2 and m.preemptions == 1
        assert not doomed & {a.agent_id for a in pool.agents}
        assert on_demand.started  # the replacements went to on-demand capacity


async def test_a_placement_whose_agents_are_all_killed_at_once_loses_no_call() -> None:
    # A region goes dark: every agent there is SIGKILLed at once with a call running on it.
    # The calls run again on the other placement; each is answered, once.
    region_a, region_b = Counting(), Counting()
    pool = AgentPool(
        "outage",
        min_size=3,
        max_size=6,
        start_timeout=60,
        placements=[
            {"name": "a", "price_per_hour": 0.5, "max_size": 3, "backend": region_a},
            {"name": "b", "price_per_hour": 1.0, "backend": region_b},
        ],
    )
    async with pool:
        assert {a.placement.name for a in pool.agents} == {"a"}
        pids = {a.handle.pid for a in pool.agents}
        calls = [asyncio.create_task(pool.run(workers.sleep_and_pid, 5.0)) for _ in range(3)]
        for _ in range(1200):  # until the three calls run (up to a minute on a busy machine)
            if pool.snapshot().busy == 3:
                break
            await asyncio.sleep(0.05)
        assert pool.snapshot().busy == 3
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        answered = await asyncio.wait_for(asyncio.gather(*calls), 180)
        assert len(answered) == 3 and not set(answered) & pids
        m = pool.metrics
        assert m.requeued == 3 and m.requests_total == 3
        assert any("placement a down" in e.reason for e in pool.events)


def _dead_socket(tmp_path: Any) -> str:
    """A unix socket file nobody listens on: an engine that is not running."""
    path = str(tmp_path / "engine.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
    return path


def _unraisable(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(repr(u.exc_value)))
    return seen


def test_a_container_engine_refusing_connections_leaks_no_socket(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("docker")
    from shoal.backends.container import ContainerBackend
    from shoal.errors import BackendError

    seen = _unraisable(monkeypatch)
    boxes = ContainerBackend("python:3.11-slim", base_url=f"unix://{_dead_socket(tmp_path)}")
    with pytest.raises(BackendError, match=r"cannot reach a container engine at unix://.*refused"):
        boxes._engine()
    gc.collect()
    assert not [w for w in seen if "unclosed" in w], seen


async def test_a_container_placement_with_no_engine_fails_over_and_no_call_is_lost(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cheaper placement's engine is down (its socket refuses connections): its starts fail,
    # the pool says so and starts agents on the process placement; every call is answered.
    pytest.importorskip("docker")
    from shoal.backends.container import ContainerBackend

    seen = _unraisable(monkeypatch)
    boxes = ContainerBackend("python:3.11-slim", base_url=f"unix://{_dead_socket(tmp_path)}")
    fallback = Counting()
    pool = AgentPool(
        "boxes-down",
        min_size=1,
        max_size=3,
        start_timeout=60,
        placements=[
            {"name": "box", "price_per_hour": 0.1, "backend": boxes},
            {"name": "proc", "price_per_hour": 1.0, "backend": fallback},
        ],
    )
    async with pool:
        results = await asyncio.gather(*(pool.run(workers.add, i, 1) for i in range(12)))
        assert results == [i + 1 for i in range(12)]
        assert not pool.broken
        assert {a.placement.name for a in pool.agents} == {"proc"} and fallback.started
        failed = [e for e in pool.events if e.kind == "start_failed"]
        assert failed and all("cannot reach a container engine" in e.reason for e in failed)
    gc.collect()
    assert not [w for w in seen if "unclosed" in w], seen


@pytest.mark.container
async def test_a_container_placement_beside_a_process_one() -> None:
    from tests.integration.test_container import IMAGE, SOCKET, _engine_ready

    problem = _engine_listening(SOCKET) or _engine_ready()
    if problem is not None:
        if os.environ.get("SHOAL_REQUIRE_CONTAINERS") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    from shoal.backends.container import ContainerBackend

    boxes = ContainerBackend(IMAGE, base_url=f"unix://{SOCKET}")
    pool = AgentPool(
        "mixed",
        min_size=2,
        max_size=2,
        start_timeout=120,
        placements=[
            {"name": "box", "price_per_hour": 0.2, "max_size": 1, "backend": boxes},
            {"name": "proc", "price_per_hour": 0.5},
        ],
    )
    async with pool:
        assert sorted(a.placement.name for a in pool.agents) == ["box", "proc"]
        box = next(a for a in pool.agents if a.placement.name == "box")
        assert hasattr(box.handle, "container")  # a real container
        nets = await asyncio.gather(*(pool.run(os.listdir, "/sys/class/net") for _ in range(6)))
        assert ["lo"] in nets  # some calls ran in the container (no network there)
