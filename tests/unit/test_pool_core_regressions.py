"""Regression tests for the pool-core defects a hostile review found, on the fake backend in
virtual time. Each of them failed on the pool before it became ``PoolState`` + shell."""

from __future__ import annotations

import asyncio

import pytest

from shoal import AgentLost, AgentPool, FakeBackend, PoolAtCapacity, PoolError


def who() -> str:
    return "ok"


def make_pool(backend: FakeBackend | None = None, **options: object) -> AgentPool:
    options.setdefault("min_size", 1)
    options.setdefault("max_size", 1)
    return AgentPool("p", backend=backend or FakeBackend(), **options)  # type: ignore[arg-type]


# -- 2. a stale second release must never hand someone else's agent on ---------------------------


async def test_a_stale_second_release_does_not_hand_over_the_agent_another_caller_holds() -> None:
    backend = FakeBackend(call_time=5.0)
    async with make_pool(backend) as pool:
        a = await pool.get_agent()
        await pool.release_agent(a)
        b = await pool.get_agent()  # the same agent, now B's
        b_call = asyncio.create_task(b.run(who))
        await asyncio.sleep(1.0)
        c_wait = asyncio.create_task(pool.get_agent())
        await asyncio.sleep(0)
        with pytest.raises(PoolError):
            await a.run(who)  # A's lease is spent
        await pool.release_agent(a)  # stale: must do nothing
        await asyncio.sleep(0)
        assert not c_wait.done(), "C was handed the agent B's call is running on"
        m = pool.metrics
        assert (m.busy, m.idle, m.queue_depth) == (1, 0, 1)
        assert await b_call == "ok"
        await pool.release_agent(b)
        c = await c_wait
        assert await c.run(who) == "ok"
        await pool.release_agent(c)
        assert (pool.metrics.busy, pool.metrics.idle) == (0, 1)


async def test_release_inside_acquire_is_not_released_twice() -> None:
    async with make_pool(FakeBackend(call_time=5.0)) as pool:
        other: asyncio.Task[str] | None = None
        async with pool.acquire() as agent:
            await agent.run(who)
            await pool.release_agent(agent)
            lease = await pool.get_agent()  # someone else takes it meanwhile
            other = asyncio.create_task(lease.run(who))
            await asyncio.sleep(1.0)
        # acquire's own release of the spent lease did not free the agent under `other`
        assert pool.metrics.busy == 1
        assert await other == "ok"
        await pool.release_agent(lease)
        assert pool.metrics.idle == 1


# -- 5. user code raising AgentLost is the user's exception ----------------------------------------


def raise_agent_lost() -> None:
    raise AgentLost("a nested pool lost its agent", "nested-1")


async def test_agent_lost_raised_by_user_code_keeps_the_agent() -> None:
    backend = FakeBackend()
    async with make_pool(backend) as pool:
        first = pool.agents[0].agent_id
        with pytest.raises(AgentLost, match="nested pool"):
            await pool.run(raise_agent_lost)
        assert await pool.run(who) == "ok"
        assert [a.agent_id for a in pool.agents] == [first]
        assert backend.started == [first]
        assert not [e for e in pool.events if e.kind in ("lost", "retire")]


# -- 6. max_queue holds whenever no agent can be started -------------------------------------


async def test_max_queue_holds_while_starts_back_off() -> None:
    backend = FakeBackend(start_time=1.0)
    async with make_pool(backend, min_size=0, max_size=4, max_queue=2) as pool:
        backend.fail_next_starts(1)
        first = asyncio.create_task(pool.run(who))
        await asyncio.sleep(1.01)  # that start failed: starts back off now
        assert first.done()
        callers = [asyncio.ensure_future(pool.get_agent()) for _ in range(1000)]
        await asyncio.sleep(0)
        assert pool.metrics.queue_depth <= 2, "the queue grew past max_queue"
        done, pending = await asyncio.wait(callers, timeout=30)
        refused = [t for t in done if isinstance(t.exception(), PoolAtCapacity)]
        assert len(refused) >= 990
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is None:
                await pool.release_agent(t.result())


# -- 7. a frozen busy agent is found even when its call has no timeout -----------------------------


async def test_a_frozen_busy_agent_is_killed_and_its_caller_told() -> None:
    backend = FakeBackend()
    async with make_pool(backend, heartbeat_timeout=10.0) as pool:
        agent_id = pool.agents[0].agent_id
        backend.hang_next_calls(1)
        backend.freeze(agent_id)
        call = asyncio.create_task(pool.run(who))
        # Found within the timeout plus a quarter of it (how often maintenance looks), not at
        # the next health check 30 s on: the pool watches a call from its first moment.
        done, _ = await asyncio.wait([call], timeout=10.0 + 2.5 + 0.1)
        assert done, "the caller waited past heartbeat_timeout on a frozen agent"
        with pytest.raises(AgentLost):
            call.result()
        assert any("unresponsive" in e.reason for e in pool.events)
        assert await pool.run(who) == "ok"  # replaced


async def test_a_slow_but_live_agent_is_not_taken_for_frozen() -> None:
    async with make_pool(FakeBackend(call_time=100.0), heartbeat_timeout=10.0) as pool:
        assert await pool.run(who) == "ok"
        assert not any("unresponsive" in e.reason for e in pool.events)


# -- 8. an agent under health check is its own state, not a hidden flag -----------------------


async def test_an_agent_under_health_check_is_counted_as_checking() -> None:
    backend = FakeBackend()
    gate = asyncio.Event()

    async def slow_check(handle: object) -> bool:
        await gate.wait()
        return True

    backend.check_health = slow_check  # type: ignore[method-assign]
    async with make_pool(backend, health_check_interval=10.0) as pool:
        await asyncio.sleep(10.5)
        m = pool.metrics
        assert (m.idle, m.checking, m.size) == (0, 1, 1)
        assert "1 checking" in pool.state_line()
        waiter = asyncio.create_task(pool.run(who))
        await asyncio.sleep(0)
        assert not waiter.done()  # not assignable while checked
        gate.set()
        assert await waiter == "ok"


async def test_a_crash_loop_keeps_bounded_memory() -> None:
    backend = FakeBackend()
    async with make_pool(backend, crash_loop_starts=3) as pool:
        backend.fail_next_starts(200)
        backend.crash(pool.agents[0].agent_id)  # its replacements keep failing
        await asyncio.sleep(1200)  # the broken pool probes once per back-off (at most 5 s)
        assert pool.metrics.start_failures == 200
        assert len(pool._state.breaker._failures) <= 3  # not every failure of the loop
        assert not pool.broken and await pool.run(who) == "ok"  # recovered
