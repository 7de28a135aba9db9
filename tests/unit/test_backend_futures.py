"""Backend.call returns a future, on the fake and simulated backends (virtual time)."""

from __future__ import annotations

import asyncio

import pytest

from shoal import AgentLost, FakeBackend
from shoal.backends.base import AgentSpec, ReportsLiveness
from shoal.errors import agent_failed
from shoal.sim.backend import SimBackend, serve


def raise_agent_lost() -> None:
    raise AgentLost("a nested pool lost its agent", "elsewhere-1")


async def test_a_frozen_fake_agent_is_unresponsive_on_the_loop_clock() -> None:
    backend = FakeBackend(call_time=1.0)
    assert isinstance(backend, ReportsLiveness)
    agent = await backend.start(AgentSpec(pool="p", agent_id="p-1"))
    loop = asyncio.get_running_loop()
    assert backend.unresponsive_for(agent, loop.time()) == 0.0
    call = backend.call(agent, lambda: "done", (), {})
    await asyncio.sleep(0.5)
    backend.freeze("p-1")
    await asyncio.sleep(10)
    assert not call.done()  # frozen: the call does not finish
    assert backend.unresponsive_for(agent, loop.time()) == pytest.approx(10.0)
    backend.thaw("p-1")
    assert await call == "done"
    assert backend.unresponsive_for(agent, loop.time()) == 0.0


async def test_killing_a_frozen_fake_agent_fails_its_call() -> None:
    backend = FakeBackend()
    agent = await backend.start(AgentSpec(pool="p", agent_id="p-1"))
    backend.freeze("p-1")
    call = backend.call(agent, lambda: "done", (), {})
    await asyncio.sleep(5)
    await backend.kill(agent)
    with pytest.raises(AgentLost):
        await call


@pytest.mark.parametrize("make", [FakeBackend, SimBackend])
async def test_an_agent_lost_raised_by_the_users_code_is_remote(make: type) -> None:
    backend = make()
    agent = await backend.start(AgentSpec(pool="p", agent_id="p-1"))
    with pytest.raises(AgentLost) as info:
        await backend.call(agent, raise_agent_lost, (), {})
    assert info.value.remote and not agent_failed(info.value)


async def test_a_cancelled_simulated_call_stays_cancelled() -> None:
    backend = SimBackend()
    agent = await backend.start(AgentSpec(pool="p", agent_id="p-1"))
    call = backend.call(agent, serve, (5.0,), {})
    assert isinstance(call, asyncio.Future) and not isinstance(call, asyncio.Task)
    call.cancel()
    await asyncio.sleep(10)  # its timer fires into a cancelled future: nothing happens
    assert call.cancelled()
    assert await backend.call(agent, serve, (1.0,), {}) is None
