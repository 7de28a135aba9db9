"""The pool's bookkeeping on the fake backend, in virtual time."""

from __future__ import annotations

import asyncio

import pytest

from shoal import (
    AgentLost,
    AgentPool,
    AgentStartError,
    AgentState,
    CallTimeout,
    ConfigError,
    FakeBackend,
    PoolAtCapacity,
    PoolClosed,
    PoolError,
    PoolTimeout,
)


def make_pool(backend: FakeBackend | None = None, **options: object) -> AgentPool:
    options.setdefault("min_size", 1)
    options.setdefault("max_size", 4)
    return AgentPool("p", backend=backend or FakeBackend(), **options)  # type: ignore[arg-type]


def who() -> str:
    """Stands in for a call: the fake backend runs it in-process, so tag by agent instead."""
    return "ok"


async def hold(pool: AgentPool, seconds: float) -> str:
    async with pool.acquire() as agent:
        await asyncio.sleep(seconds)
        return agent.agent_id


async def test_start_warms_min_size_agents_before_returning() -> None:
    backend = FakeBackend(start_time=2.0)
    async with make_pool(backend, min_size=3) as pool:
        m = pool.metrics
        assert (m.size, m.idle, m.starting) == (3, 3, 0)
        assert asyncio.get_running_loop().time() == pytest.approx(2.0)
        assert await pool.run(who) == "ok"
        assert pool.metrics.warm_hits == 1 and pool.metrics.cold_starts == 0


async def test_mru_assignment_reuses_the_most_recent_agent() -> None:
    backend = FakeBackend()
    async with make_pool(backend, min_size=3) as pool:
        for _ in range(5):
            await pool.run(who)
        assert len([a for a, n in backend.calls_by_agent.items() if n]) == 1


async def test_round_robin_assignment_spreads_calls() -> None:
    backend = FakeBackend()
    async with make_pool(backend, min_size=3, assignment="round_robin") as pool:
        for _ in range(6):
            await pool.run(who)
        assert sorted(backend.calls_by_agent.values()) == [2, 2, 2]


async def test_waiters_are_served_in_fifo_order() -> None:
    async with make_pool(min_size=1, max_size=1) as pool:
        first = await pool.get_agent()
        order: list[int] = []

        async def waiter(i: int) -> None:
            agent = await pool.get_agent()
            order.append(i)
            await asyncio.sleep(1)
            await pool.release_agent(agent)

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(waiter(i)))
            await asyncio.sleep(0.1)  # arrive in a known order
        assert pool.metrics.queue_depth == 5
        await pool.release_agent(first)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]


async def test_caller_waits_for_an_agent_started_for_it_at_once() -> None:
    backend = FakeBackend(start_time=3.0)
    async with make_pool(backend, min_size=0, max_size=2) as pool:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await pool.run(who)
        assert loop.time() - t0 == pytest.approx(3.0)  # no extra delay before the start
        m = pool.metrics
        assert m.cold_starts == 1 and m.warm_hits == 0 and m.size == 1


async def test_starts_only_as_many_agents_as_uncovered_waiters() -> None:
    backend = FakeBackend(start_time=1.0)
    async with make_pool(backend, min_size=0, max_size=10) as pool:
        await asyncio.gather(*(pool.run(who) for _ in range(3)))
        assert len(backend.started) == 3
        # Now three warm agents: a burst of three more starts nothing.
        await asyncio.gather(*(pool.run(who) for _ in range(3)))
        assert len(backend.started) == 3


async def test_no_more_agents_than_max_size_and_calls_queue() -> None:
    backend = FakeBackend(start_time=0.5, call_time=1.0)
    async with make_pool(backend, min_size=0, max_size=3) as pool:
        results = await asyncio.gather(*(pool.run(lambda i=i: i) for i in range(20)))
        assert results == list(range(20))
        assert backend.max_alive == 3
        assert len(backend.started) == 3


async def test_get_agent_timeout_raises_pool_timeout_with_state() -> None:
    async with make_pool(min_size=1, max_size=1) as pool:
        held = await pool.get_agent()
        with pytest.raises(PoolTimeout) as info:
            await pool.get_agent(timeout=2.0)
        message = str(info.value)
        assert "within 2.0 s" in message and "1 busy" in message and "size 1/1" in message
        assert pool.metrics.queue_depth == 0
        await pool.release_agent(held)
        assert await pool.run(who) == "ok"


async def test_full_queue_raises_pool_at_capacity() -> None:
    async with make_pool(min_size=1, max_size=1, max_queue=2) as pool:
        held = await pool.get_agent()
        waiting = [asyncio.create_task(pool.get_agent()) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(PoolAtCapacity) as info:
            await pool.get_agent()
        assert "max_queue=2" in str(info.value) and "waiting 2/2" in str(info.value)
        await pool.release_agent(held)
        for task in waiting:
            await pool.release_agent(await task)


async def test_idle_agents_above_min_size_retire_after_idle_timeout() -> None:
    backend = FakeBackend(call_time=1.0)
    async with make_pool(backend, min_size=1, max_size=4, idle_timeout=60) as pool:
        await asyncio.gather(*(pool.run(who) for _ in range(4)))
        assert pool.size == 4
        await asyncio.sleep(59)
        assert pool.size == 4
        await asyncio.sleep(2)
        assert pool.size == 1
        retired = [e for e in pool.events if e.kind == "retire"]
        assert len(retired) == 3 and all("idle" in e.reason for e in retired)
        await asyncio.sleep(3600)
        assert pool.size == 1  # never below min_size


async def test_resize_grows_and_shrinks_without_touching_busy_agents() -> None:
    backend = FakeBackend(call_time=10.0)
    async with make_pool(backend, min_size=1, max_size=6) as pool:
        await pool.resize(5)
        assert pool.metrics.idle == 5
        calls = [asyncio.create_task(pool.run(who)) for _ in range(3)]
        await asyncio.sleep(1)
        await pool.resize(1)
        m = pool.metrics
        assert m.busy == 3 and m.idle == 0  # two idle agents retired at once
        assert not any(backend.agents[a].exit_code for a in backend.calls_by_agent)
        assert await asyncio.gather(*calls) == ["ok"] * 3  # the busy ones finished their calls
        await asyncio.sleep(0)
        assert pool.size == 1
        with pytest.raises(ConfigError, match=r"\[min_size=1, max_size=6\]"):
            await pool.resize(7)


async def test_dead_idle_agent_is_replaced_to_keep_min_size() -> None:
    backend = FakeBackend()
    async with make_pool(backend, min_size=2) as pool:
        victim = backend.started[0]
        backend.crash(victim)
        await asyncio.sleep(0)
        assert pool.size == 2 and victim not in [a.agent_id for a in pool.agents]
        assert any(e.kind == "lost" and e.agent_id == victim for e in pool.events)


async def test_unhealthy_idle_agent_is_replaced_at_its_health_check() -> None:
    backend = FakeBackend()
    async with make_pool(backend, min_size=2, health_check_interval=30) as pool:
        sick = backend.started[0]
        backend.make_unhealthy(sick)
        await asyncio.sleep(31)
        ids = [a.agent_id for a in pool.agents]
        assert sick not in ids and pool.size == 2 and pool.metrics.idle == 2
        assert backend.agents[sick].exit_code is not None


async def test_crash_mid_call_fails_only_that_call_and_replaces_the_agent() -> None:
    backend = FakeBackend(call_time=1.0)
    async with make_pool(backend, min_size=2, max_size=2) as pool:
        backend.crash_next_calls(1)
        results = await asyncio.gather(
            pool.run(lambda: "a"), pool.run(lambda: "b"), return_exceptions=True
        )
        lost = [r for r in results if isinstance(r, AgentLost)]
        assert len(lost) == 1 and lost[0].exit_code is not None and lost[0].delivered
        assert "b" in results or "a" in results
        await asyncio.sleep(0)
        assert pool.size == 2
        assert await pool.run(lambda: "after") == "after"


async def test_call_to_an_agent_dead_before_delivery_is_retried() -> None:
    backend = FakeBackend()
    async with make_pool(backend, min_size=1, max_size=1) as pool:
        # Die silently (no exit notice), as an agent that vanished between two calls.
        agent = next(iter(backend.agents.values()))
        agent.exit_code = -9
        assert await pool.run(lambda: 42) == 42
        assert len(backend.started) == 2


async def test_call_timeout_kills_and_replaces_the_agent() -> None:
    backend = FakeBackend()
    async with make_pool(backend, min_size=1, max_size=1) as pool:
        backend.hang_next_calls(1)
        with pytest.raises(CallTimeout, match="timeout of 5 s"):
            await pool.call(who, timeout=5)
        await asyncio.sleep(0)
        assert backend.agents[backend.started[0]].exit_code is not None
        assert await pool.run(who) == "ok"
        assert pool.size == 1


async def test_cancelled_waiter_frees_its_queue_slot() -> None:
    async with make_pool(min_size=1, max_size=1) as pool:
        held = await pool.get_agent()
        task = asyncio.create_task(pool.get_agent())
        await asyncio.sleep(0)
        assert pool.metrics.queue_depth == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.metrics.queue_depth == 0
        await pool.release_agent(held)
        assert pool.metrics.idle == 1


async def test_agent_handed_to_a_waiter_cancelled_at_that_moment_is_not_leaked() -> None:
    async with make_pool(min_size=1, max_size=1) as pool:
        held = await pool.get_agent()
        task = asyncio.create_task(pool.get_agent())
        await asyncio.sleep(0)
        await pool.release_agent(held)  # hands the agent to the waiter...
        task.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await task
        m = pool.metrics
        assert (m.busy, m.idle) == (0, 1)


async def test_cancelled_running_call_kills_its_agent_and_is_replaced() -> None:
    backend = FakeBackend(call_time=100.0)
    async with make_pool(backend, min_size=1, max_size=1) as pool:
        task = asyncio.create_task(pool.run(who))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        assert backend.agents[backend.started[0]].exit_code is not None
        m = pool.metrics
        assert (m.busy, m.size) == (0, 1)


async def test_max_uses_recycles_an_agent_between_calls() -> None:
    backend = FakeBackend()
    async with make_pool(backend, min_size=1, max_size=1, max_uses=3) as pool:
        for _ in range(7):
            await pool.run(who)
        assert [backend.calls_by_agent[a] for a in backend.started] == [3, 3, 1]
        assert any("max_uses=3" in e.reason for e in pool.events)


async def test_max_lifetime_recycles_idle_agents() -> None:
    backend = FakeBackend()
    async with make_pool(backend, min_size=1, max_size=1, max_lifetime=100) as pool:
        first = backend.started[0]
        await asyncio.sleep(101)
        assert backend.agents[first].exit_code is not None
        assert pool.size == 1 and len(backend.started) == 2


async def test_failed_start_fails_the_waiting_caller_not_forever() -> None:
    backend = FakeBackend()
    async with make_pool(backend, min_size=0, max_size=2) as pool:
        backend.fail_next_starts(1)
        with pytest.raises(AgentStartError, match="scripted start failure"):
            await pool.run(who)
        assert pool.size == 0 and pool.metrics.start_failures == 1
        await asyncio.sleep(1)  # past the start backoff
        assert await pool.run(who) == "ok"


async def test_setup_that_raises_fails_pool_start_and_leaves_nothing() -> None:
    backend = FakeBackend()

    def broken_setup() -> None:
        raise RuntimeError("no model file")

    pool = make_pool(backend, min_size=2, setup=broken_setup)
    with pytest.raises(AgentStartError, match="no model file"):
        await pool.start()
    assert pool.closed and backend.alive == []


async def test_close_lets_in_flight_calls_finish_and_fails_waiters() -> None:
    backend = FakeBackend(call_time=5.0)
    pool = make_pool(backend, min_size=1, max_size=1, stop_grace=10)
    await pool.start()
    running = asyncio.create_task(pool.run(lambda: "done"))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(pool.run(who))
    await asyncio.sleep(1)
    await pool.aclose()
    assert await running == "done"
    with pytest.raises(PoolClosed):
        await waiting
    assert backend.alive == []
    with pytest.raises(PoolClosed):
        await pool.run(who)


async def test_close_kills_calls_that_outlive_the_grace_period() -> None:
    backend = FakeBackend()
    pool = make_pool(backend, min_size=1, max_size=1, stop_grace=2)
    await pool.start()
    backend.hang_next_calls(1)
    running = asyncio.create_task(pool.run(who))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await pool.aclose()
    assert loop.time() - t0 == pytest.approx(2.0)
    with pytest.raises(AgentLost):
        await running
    assert backend.alive == []


async def test_release_rules() -> None:
    async with make_pool(min_size=1, max_size=2) as pool, make_pool(min_size=1) as other:
        agent = await pool.get_agent()
        await pool.release_agent(agent)
        await pool.release_agent(agent)  # a second release of the same lease does nothing
        assert pool.metrics.idle == 1
        with pytest.raises(PoolError, match="already released"):
            await agent.run(who)
        with pytest.raises(PoolError, match="takes the Lease"):
            await pool.release_agent(pool.agents[0])  # type: ignore[arg-type]
        foreign = await other.get_agent()
        with pytest.raises(PoolError, match="belongs to pool"):
            await pool.release_agent(foreign)
        await other.release_agent(foreign)


async def test_pool_must_be_started_and_cannot_be_restarted() -> None:
    pool = make_pool()
    with pytest.raises(PoolError, match="not started"):
        await pool.run(who)
    async with pool:
        pass
    with pytest.raises(PoolError, match="already started"):
        await pool.start()


async def test_metrics_and_repr() -> None:
    backend = FakeBackend(call_time=2.0)
    async with make_pool(backend, min_size=1, max_size=2) as pool:
        await asyncio.gather(*(pool.run(who) for _ in range(4)))
        m = pool.metrics
        assert m.requests_total == 4 and m.requests_active == 0
        assert m.avg_execution_time == pytest.approx(2.0)
        assert m.warm_hits + m.cold_starts == 4 and m.cold_starts == 1
        assert m.wait_p99 == pytest.approx(2.0)  # the last two waited for a busy agent
        assert m.throughput > 0 and m.size == 2 and m.utilization_rate == 0.0
        assert repr(pool) == "<AgentPool 'p' [agents: 0 busy, 2 idle, 0 starting | queue: 0]>"
        with pytest.raises(AttributeError):
            m.size = 3  # type: ignore[misc]
        assert [a.state for a in pool.agents] == [AgentState.IDLE] * 2


async def test_without_on_demand_starts_the_size_moves_only_with_the_target() -> None:
    backend = FakeBackend(start_time=1.0, call_time=1.0)
    async with make_pool(backend, min_size=1, max_size=4, on_demand=False) as pool:
        calls = [asyncio.create_task(pool.run(who)) for _ in range(4)]
        await asyncio.sleep(0.5)
        assert pool.size == 1 and pool.metrics.queue_depth == 3
        await pool.resize(3, wait=False)
        assert await asyncio.gather(*calls) == ["ok"] * 4
        assert len(backend.started) == 3


async def _warm_up(pool: AgentPool, calls: int) -> None:
    """Time a start (the pool's own) and a few calls, two at a time."""
    for _ in range(calls // 2):
        await asyncio.gather(pool.run(who), pool.run(who))


async def test_callers_the_busy_agents_reach_before_a_start_get_no_new_agent() -> None:
    # Starts take 2 s and calls 0.5 s: two busy agents serve 8 callers before a new agent
    # would be up, so a short queue waits for them instead of starting agents that would come
    # after their callers had gone (on a steady load: hundreds of surplus starts an hour).
    backend = FakeBackend(start_time=2.0, call_time=0.5)
    async with make_pool(backend, min_size=2, max_size=40) as pool:
        await _warm_up(pool, 4)
        assert len(backend.started) == 2
        assert await asyncio.gather(*(pool.run(who) for _ in range(6))) == ["ok"] * 6
        assert len(backend.started) == 2, "4 callers that 2 agents reach in 1 s started agents"
        # 2 running + 20 waiting: 8 are reached within a start, the other 12 get agents now.
        calls = [asyncio.create_task(pool.run(who)) for _ in range(22)]
        await asyncio.sleep(0)
        assert pool.metrics.starting == 12
        assert await asyncio.gather(*calls) == ["ok"] * 22


async def test_callers_get_an_agent_at_once_while_calls_outlast_a_start() -> None:
    backend = FakeBackend(start_time=2.0, call_time=5.0)
    async with make_pool(backend, min_size=2, max_size=40) as pool:
        await _warm_up(pool, 2)
        calls = [asyncio.create_task(pool.run(who)) for _ in range(6)]
        await asyncio.sleep(0)
        assert pool.metrics.starting == 4
        assert await asyncio.gather(*calls) == ["ok"] * 6


async def test_an_agent_held_with_get_agent_is_not_counted_on_to_free_up() -> None:
    # A holder decides when it gives an agent back: its agent serves no waiting caller soon.
    backend = FakeBackend(start_time=2.0, call_time=0.5)
    async with make_pool(backend, min_size=2, max_size=40) as pool:
        await _warm_up(pool, 4)
        held = [await pool.get_agent(), await pool.get_agent()]
        waiting = asyncio.create_task(pool.run(who))
        await asyncio.sleep(0)
        assert pool.metrics.starting == 1
        assert await waiting == "ok"
        for lease in held:
            await pool.release_agent(lease)


async def test_callers_left_to_busy_agents_get_one_once_those_calls_outrun_a_start() -> None:
    # Calls took 0.1 s, so two callers were left to the two busy agents; these calls take
    # 30 s: once they have run as long as a start (2 s), the callers get agents of their own,
    # without waiting for anything else to happen.
    backend = FakeBackend(start_time=2.0, call_time=0.1)
    async with make_pool(backend, min_size=2, max_size=8) as pool:
        await _warm_up(pool, 8)
        long = [asyncio.create_task(pool.run(asyncio.sleep, 30.0, "long")) for _ in range(2)]
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        late = [asyncio.create_task(pool.run(who)) for _ in range(2)]
        await asyncio.sleep(0)
        assert pool.metrics.starting == 0
        assert await asyncio.gather(*late) == ["ok"] * 2
        assert loop.time() - t0 < 5.0, "the callers waited for the 30-s calls to end"
        assert await asyncio.gather(*long) == ["long"] * 2


async def test_eager_on_demand_starts_for_every_waiting_caller() -> None:
    # on_demand="eager" is a FaaS platform's rule (the simulator's keep-alive baseline): an
    # agent for every caller no agent can take at once, whatever the busy agents will do.
    backend = FakeBackend(start_time=2.0, call_time=0.5)
    async with make_pool(backend, min_size=2, max_size=40, on_demand="eager") as pool:
        await _warm_up(pool, 4)
        calls = [asyncio.create_task(pool.run(who)) for _ in range(6)]
        await asyncio.sleep(0)
        assert pool.metrics.starting == 4
        assert await asyncio.gather(*calls) == ["ok"] * 6


def test_a_bad_on_demand_names_the_key_and_the_values() -> None:
    with pytest.raises(ConfigError, match=r"on_demand.*'eager'"):
        make_pool(on_demand="yes")
