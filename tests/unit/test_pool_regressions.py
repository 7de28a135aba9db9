"""Regression tests for races and bookkeeping bugs found in review, on the fake backend in
virtual time."""

from __future__ import annotations

import asyncio

import pytest

from shoal import AgentLost, AgentPool, AgentStartError, FakeBackend, PoolClosed, PoolTimeout


def make_pool(backend: FakeBackend | None = None, **options: object) -> AgentPool:
    options.setdefault("min_size", 1)
    options.setdefault("max_size", 1)
    return AgentPool("p", backend=backend or FakeBackend(), **options)  # type: ignore[arg-type]


def who() -> str:
    return "ok"


def now() -> float:
    return asyncio.get_running_loop().time()


async def sleep_until(t: float) -> None:
    await asyncio.sleep(t - now())


# -- a waiter cancelled in the same loop pass as the event that would serve it ------------------


async def test_release_skips_a_waiter_cancelled_in_the_same_pass() -> None:
    async with make_pool() as pool:
        held = await pool.get_agent()
        waiter = asyncio.create_task(pool.get_agent())
        await asyncio.sleep(0)
        assert pool.metrics.queue_depth == 1
        waiter.cancel()  # its future is cancelled now; its task has not run yet
        await pool.release_agent(held)  # must not hand the agent to the cancelled waiter
        with pytest.raises(asyncio.CancelledError):
            await waiter
        m = pool.metrics
        assert (m.busy, m.idle, m.size, m.queue_depth) == (0, 1, 1, 0)
        assert await pool.run(who) == "ok"


async def test_call_finishing_as_the_next_caller_is_cancelled_keeps_its_result() -> None:
    backend = FakeBackend(call_time=1.0)
    async with make_pool(backend) as pool:
        queued: asyncio.Task[str] | None = None

        def cancel_the_queued_caller() -> str:
            # The fake backend runs this in-process, in the loop pass that ends the call.
            assert queued is not None
            queued.cancel()
            return "result"

        running = asyncio.create_task(pool.run(cancel_the_queued_caller))
        await asyncio.sleep(0)
        queued = asyncio.create_task(pool.run(who))
        await asyncio.sleep(0.5)
        assert pool.metrics.queue_depth == 1
        results = await asyncio.gather(running, queued, return_exceptions=True)
        assert results[0] == "result"
        assert isinstance(results[1], asyncio.CancelledError)
        m = pool.metrics
        assert (m.busy, m.idle, m.size, m.queue_depth) == (0, 1, 1, 0)
        assert backend.calls_by_agent[backend.started[0]] == 1


async def test_waiter_timing_out_as_an_agent_is_released_is_skipped() -> None:
    async with make_pool(stop_grace=1) as pool:
        errors: list[BaseException] = []

        async def holder() -> None:
            agent = await pool.get_agent()
            await asyncio.sleep(1.0)  # wakes at t=1.0 ...
            try:
                await pool.release_agent(agent)
            except BaseException as exc:
                errors.append(exc)
                raise

        h = asyncio.create_task(holder())
        await asyncio.sleep(0)
        # ... in the same loop pass as this waiter's timeout, whose timer was set after.
        w = asyncio.create_task(pool.get_agent(timeout=1.0))
        await asyncio.gather(h, w, return_exceptions=True)
        assert errors == []
        assert isinstance(w.exception(), PoolTimeout)
        m = pool.metrics
        assert (m.busy, m.idle, m.size, m.queue_depth) == (0, 1, 1, 0)
        assert await pool.run(who) == "ok"


@pytest.mark.parametrize("fail_at", [0.999, 1.0, 1.0000001])
async def test_task_group_abort_cancelling_queued_callers_leaves_the_agent_idle(
    fail_at: float,
) -> None:
    async with make_pool(stop_grace=1) as pool:

        async def holder() -> None:
            async with pool.acquire():
                await asyncio.sleep(1.0)

        async def sibling_fails() -> None:
            await asyncio.sleep(fail_at)
            raise ValueError("sibling failed")

        with pytest.raises(ExceptionGroup) as info:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(holder())
                for _ in range(2):
                    tg.create_task(pool.run(who))
                tg.create_task(sibling_fails())
        assert [type(e) for e in info.value.exceptions] == [ValueError]
        m = pool.metrics
        assert (m.busy, m.idle, m.size, m.queue_depth) == (0, 1, 1, 0)
        assert await pool.run(who) == "ok"


async def test_aclose_skips_a_cancelled_waiter_and_a_second_aclose_returns() -> None:
    backend = FakeBackend()
    pool = make_pool(backend, stop_grace=5)
    await pool.start()
    await pool.get_agent()  # held through the close: killed after stop_grace
    waiter = asyncio.create_task(pool.get_agent())
    await asyncio.sleep(0)
    waiter.cancel()
    await pool.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(pool.aclose(), 100)
    assert pool.closed and pool.size == 0 and backend.alive == []


# -- cancelled aclose() and start() ----------------------------------------------------------


async def test_cancelled_aclose_does_not_stick_and_a_second_aclose_kills_the_hung_call() -> None:
    backend = FakeBackend()
    pool = make_pool(backend, stop_grace=10)
    await pool.start()
    backend.hang_next_calls(1)
    running = asyncio.create_task(pool.run(who))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pool.aclose(), 1)  # a shutdown budget shorter than stop_grace
    await asyncio.wait_for(pool.aclose(), 1000)
    assert now() == pytest.approx(10.0)  # stop_grace, then the hung call's agent was killed
    assert pool.closed and pool.size == 0 and backend.alive == []
    with pytest.raises(AgentLost, match="died"):
        await running
    with pytest.raises(PoolClosed):
        await pool.run(who)


async def test_cancelled_start_closes_the_pool_and_no_agent_starts_later() -> None:
    backend = FakeBackend(start_time=10.0)
    pool = make_pool(backend, min_size=2, max_size=2, health_check_interval=30)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1):
            async with pool:
                pass
    assert pool.closed
    await asyncio.sleep(100)
    assert pool.closed and pool.size == 0
    assert backend.alive == [] and backend.started == []
    with pytest.raises(PoolClosed):
        await pool.run(who)
    await pool.aclose()


async def test_cancelled_resize_leaves_the_pool_owned_starts_running() -> None:
    backend = FakeBackend(start_time=5.0)
    async with make_pool(backend, min_size=1, max_size=4) as pool:
        t0 = now()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                await pool.resize(4)
        assert pool.metrics.starting == 3
        assert not any(e.kind == "start_failed" for e in pool.events)
        await sleep_until(t0 + 5.5)
        m = pool.metrics
        assert (m.size, m.idle, m.starting) == (4, 4, 0)


# -- start() with some of its min_size starts failing ------------------------------------------


@pytest.mark.parametrize("failing_start", [1, 2])
async def test_start_raises_if_any_min_size_start_fails(failing_start: int) -> None:
    backend = FakeBackend(start_time=1.0)
    setups: list[int] = []

    def setup() -> None:
        setups.append(1)
        if len(setups) == failing_start:
            raise RuntimeError(f"setup number {failing_start} failed")

    pool = make_pool(backend, min_size=2, max_size=2, setup=setup)
    with pytest.raises(AgentStartError, match=f"setup number {failing_start} failed"):
        await pool.start()
    assert len(setups) == 2  # one start failed and the other succeeded
    assert pool.closed and pool.size == 0 and backend.alive == []


# -- abandoned waiters ---------------------------------------------------------------------------


async def test_handoff_to_a_cancelled_waiter_does_not_count_as_a_use() -> None:
    backend = FakeBackend()
    async with make_pool(backend, max_uses=2) as pool:
        held = await pool.get_agent()
        first = held.agent_id
        await held.run(who)
        waiter = asyncio.create_task(pool.get_agent())
        await asyncio.sleep(0)
        await pool.release_agent(held)  # use 1; the agent is handed to the waiter...
        waiter.cancel()  # ...which never uses it
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await pool.run(who) == "ok"  # use 2, on the same agent
        assert backend.calls_by_agent[first] == 2
        retired = [e for e in pool.events if e.kind == "retire" and e.agent_id == first]
        assert [e.reason for e in retired] == ["served max_uses=2 calls"]


async def test_timed_out_waiters_do_not_accumulate() -> None:
    async with make_pool() as pool:
        held = await pool.get_agent()
        longest = 0
        for _ in range(10_000):
            with pytest.raises(PoolTimeout):
                await pool.get_agent(timeout=0.01)
            longest = max(longest, len(pool._state.queue))
        assert longest <= 1100  # compacted once more than 1024 are dead
        assert pool.metrics.queue_depth == 0
        await pool.release_agent(held)
        assert await pool.run(who) == "ok"


# -- maintenance deadlines and health checks -----------------------------------------------------


class FirstAgentHangsInHealthChecks(FakeBackend):
    async def check_health(self, handle: object) -> bool:
        if getattr(handle, "agent_id", None) == "p-1":
            await asyncio.sleep(3600)  # a wedged agent: its ping never answers
        return await super().check_health(handle)  # type: ignore[arg-type]


async def test_one_hung_health_check_does_not_hold_other_idle_agents_aside() -> None:
    backend = FirstAgentHangsInHealthChecks()
    async with make_pool(
        backend, min_size=3, max_size=3, health_check_interval=30, health_check_timeout=5
    ) as pool:
        await sleep_until(30.5)  # the checks of p-1, p-2 and p-3 began at t=30
        t0 = now()
        async with pool.acquire() as agent:
            assert now() == t0  # served at once by an agent that passed its check
            assert agent.agent_id in ("p-2", "p-3")
        await sleep_until(36)  # p-1's check timed out at t=35
        assert backend.agents["p-1"].exit_code is not None
        assert "p-1" not in [a.agent_id for a in pool.agents] and pool.size == 3


async def test_replacement_agent_is_health_checked_on_time() -> None:
    backend = FakeBackend()
    async with make_pool(backend, min_size=2, max_size=2, health_check_interval=30) as pool:
        await sleep_until(1)
        backend.crash("p-2")  # replaced at once by p-3, which is due for a check at t=31
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert "p-3" in [a.agent_id for a in pool.agents]
        backend.make_unhealthy("p-3")
        await sleep_until(31.5)
        assert backend.agents["p-3"].exit_code is not None
        assert any(e.agent_id == "p-3" and "health check" in e.reason for e in pool.events)


async def test_max_lifetime_is_honoured_on_time_for_a_released_agent() -> None:
    backend = FakeBackend()
    async with make_pool(
        backend, min_size=2, max_size=2, max_lifetime=100, health_check_interval=1000
    ) as pool:
        await sleep_until(50)
        backend.crash("p-2")  # replaced by p-3, created at t=50: its lifetime ends at t=150
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        a, b = await pool.get_agent(), await pool.get_agent()
        p1, p3 = (a, b) if a.agent_id == "p-1" else (b, a)
        assert (p1.agent_id, p3.agent_id) == ("p-1", "p-3")
        await pool.release_agent(p3)  # maintenance now sleeps until t=150
        await sleep_until(51)
        await pool.release_agent(p1)  # its lifetime ends at t=100
        await sleep_until(101)
        assert backend.agents["p-1"].exit_code is not None
        assert any(e.agent_id == "p-1" and "max_lifetime" in e.reason for e in pool.events)
        assert pool.size == 2
