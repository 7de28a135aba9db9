"""Prefetch against a lease holder, a cancel, a preemption notice, an acquire_timeout and
a recall, on real agent processes: each the case a review found broken (see the README's
"Prefetch" and "Failure semantics")."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from shoal import AgentLost, AgentPool, PoolAtCapacity, PoolTimeout
from shoal.pool.placement import PreemptionNotice
from shoal.pool.state import Recall
from tests.integration import workers
from tests.integration.test_prefetch import PATIENCE, lines, open_gates, until

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]
BIG = b"x" * 2_000_000  # arguments far larger than a pipe holds


async def two_running(pool: AgentPool, tmp_path: Path) -> dict[str, asyncio.Task[Any]]:
    """Both agents of ``pool`` run a gated call (tags a, b); returns them by tag."""
    log = tmp_path / "log"
    gated = {
        tag: asyncio.create_task(pool.run(workers.gated, str(tmp_path / tag), str(log), tag))
        for tag in ("a", "b")
    }
    await until(lambda: len(lines(log)) == 2, "both agents running a gated call")
    return gated


def pids(tmp_path: Path) -> dict[str, int]:
    return {line.split()[1]: int(line.split()[2]) for line in lines(tmp_path / "log")}


async def test_no_call_is_prefetched_onto_an_agent_held_with_get_agent(tmp_path: Path) -> None:
    log = tmp_path / "log"
    async with AgentPool("rv", min_size=1, max_size=1) as pool:
        st = pool._state
        lease = await pool.get_agent()
        held = await lease.run(workers.pid)
        other = asyncio.create_task(pool.run(workers.gated, str(tmp_path / "g"), str(log), "o"))
        await until(lambda: bool(st.queue or st.queued), "the other caller waiting")
        assert not st.queued, "another caller's call was queued on the held agent"
        # The holder's own call runs at once: nothing of anyone else's is ahead of it.
        async with asyncio.timeout(PATIENCE):
            tag, pid = await lease.call(workers.logged, (str(log), "holder"), timeout=PATIENCE)
        assert (tag, pid) == ("holder", held) and not other.done()
        await pool.release_agent(lease)
        await until(lambda: len(lines(log)) == 2, "the other call started once released")
        (tmp_path / "g").touch()
        async with asyncio.timeout(PATIENCE):
            assert await other == ("o", held)
    assert [line.split()[1] for line in lines(log)] == ["holder", "o"]


async def test_cancelling_a_queued_call_with_big_arguments_spares_the_call_ahead(
    tmp_path: Path,
) -> None:
    async with AgentPool("rv", min_size=2, max_size=2) as pool:
        st = pool._state
        gated = await two_running(pool, tmp_path)
        queued = asyncio.create_task(pool.run(workers.echo, BIG))
        await until(lambda: len(st.queued) == 1, "the big call queued on a busy agent")
        (lease,) = st.queued
        await until(lambda: lease.future is not None, "the big call sent to its agent")
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        open_gates(tmp_path)
        async with asyncio.timeout(PATIENCE):
            results = await asyncio.gather(*gated.values())  # neither was killed
        assert sorted(tag for tag, _ in results) == ["a", "b"]
        assert pool.metrics.agents_started == 2
        n, pid = await pool.run(workers.size_and_pid, BIG)
        assert n == len(BIG) and pid in {p for _, p in results}


async def test_a_queued_call_with_big_arguments_is_taken_back_for_a_free_agent(
    tmp_path: Path,
) -> None:
    async with AgentPool("rv", min_size=2, max_size=2) as pool:
        st = pool._state
        gated = await two_running(pool, tmp_path)
        queued = asyncio.create_task(pool.run(workers.size_and_pid, BIG))
        await until(lambda: len(st.queued) == 1, "the big call queued on a busy agent")
        (lease,) = st.queued
        behind = lease.agent.handle.pid
        (other,) = [tag for tag, pid in pids(tmp_path).items() if pid != behind]
        (tmp_path / other).touch()  # the other agent comes free; the one ahead stays blocked
        async with asyncio.timeout(PATIENCE):
            n, pid = await queued
        assert n == len(BIG) and pid == pids(tmp_path)[other]
        assert not gated["ab".replace(other, "")].done()
        open_gates(tmp_path)
        async with asyncio.timeout(PATIENCE):
            await asyncio.gather(*gated.values())


async def test_a_recalled_call_keeps_its_place_and_is_counted_once(tmp_path: Path) -> None:
    log = tmp_path / "log"
    late: list[asyncio.Future[Any]] = []
    async with AgentPool("rv", min_size=2, max_size=2, max_queue=1) as pool:
        st = pool._state
        flush = pool._flush

        def arrive_at_recall() -> Any:
            # Later callers arrive between the recall and the recalled caller's next step.
            if not late and any(isinstance(a, Recall) for a in st.actions):
                for i in range(3):
                    gate, tag = str(tmp_path / f"L{i}"), f"L{i}"
                    late.append(asyncio.ensure_future(pool.run(workers.gated, gate, str(log), tag)))
            return flush()

        pool._flush = arrive_at_recall  # type: ignore[method-assign]
        gated = await two_running(pool, tmp_path)
        queued = asyncio.create_task(pool.run(workers.logged, str(log), "C"))
        await until(lambda: len(st.queued) == 1, "C queued on a busy agent")
        (lease,) = st.queued
        (other,) = [t for t, pid in pids(tmp_path).items() if pid != lease.agent.handle.pid]
        (tmp_path / other).touch()
        async with asyncio.timeout(PATIENCE):
            tag, pid = await queued  # the oldest caller gets the agent that came free
        assert (tag, pid) == ("C", pids(tmp_path)[other])
        for name in ["a", "b", "L0", "L1", "L2"]:
            (tmp_path / name).touch()
        async with asyncio.timeout(PATIENCE):
            done = await asyncio.gather(*gated.values(), *late, return_exceptions=True)
        m = pool.metrics
    assert len(late) == 3
    refused = [r for r in done if isinstance(r, PoolAtCapacity)]
    assert not [r for r in done if isinstance(r, BaseException) and r not in refused]
    starts = [line.split()[1] for line in lines(log)]
    assert starts.index("C") < min(starts.index(t) for t in ["L0", "L1", "L2"] if t in starts)
    # a, b, C, and the late callers the queue admitted: each request counted once.
    assert m.requests_total == 6
    assert m.warm_hits + m.cold_starts == 6 - len(refused)


async def test_acquire_timeout_holds_with_every_agent_busy(tmp_path: Path) -> None:
    log = tmp_path / "log"
    async with AgentPool("rv", min_size=1, max_size=1) as pool:
        st = pool._state
        busy = asyncio.create_task(pool.run(workers.gated, str(tmp_path / "g"), str(log), "b"))
        await until(lambda: len(lines(log)) == 1, "the agent busy")
        call = asyncio.create_task(pool.call(workers.echo, ("x",), acquire_timeout=0.5))
        await until(lambda: bool(st.queue or st.queued), "the call waiting")
        assert not st.queued, "a call with an acquire_timeout was queued behind another"
        with pytest.raises(PoolTimeout):
            async with asyncio.timeout(PATIENCE):
                await call
        # A prefetched call is still waiting, and the wait metrics say so.
        other = asyncio.create_task(pool.run(workers.echo, "y"))
        await until(lambda: len(st.queued) == 1, "a call without timeouts queued")
        await until(lambda: pool.metrics.oldest_wait > 0.1, "its wait seen in oldest_wait")
        assert pool.metrics.queue_depth == 1
        (tmp_path / "g").touch()
        async with asyncio.timeout(PATIENCE):
            assert await other == "y"
            await busy
        assert pool.metrics.wait_p99 > 0.1  # its wait counted when it started


async def test_a_queued_call_on_an_agent_under_notice_runs_elsewhere_and_is_not_preempted(
    tmp_path: Path,
) -> None:
    async with AgentPool("rv", min_size=2, max_size=2) as pool:
        st = pool._state
        gated = await two_running(pool, tmp_path)
        log = str(tmp_path / "log")
        queued = asyncio.create_task(pool.call(workers.logged, (log, "C"), on_preempt="fail"))
        await until(lambda: len(st.queued) == 1, "C queued on a busy agent")
        (lease,) = st.queued
        doomed = lease.agent
        loop = asyncio.get_running_loop()
        pool.preempt(
            PreemptionNotice(
                placement=pool.placements[0].name,
                deadline=loop.time() + 4 * PATIENCE,
                agent_ids=(doomed.agent_id,),
            )
        )
        assert lease not in st.queued and lease.recalled, "C left behind the doomed agent's call"
        async with asyncio.timeout(PATIENCE):
            tag, pid = await queued  # on the replacement, while the doomed agent still runs
        assert tag == "C" and pid != doomed.handle.pid
        assert pool.metrics.requeued == 0  # taken back unstarted: no preemption of it
        open_gates(tmp_path)
        async with asyncio.timeout(PATIENCE):
            await asyncio.gather(*gated.values())


async def test_a_call_that_crashes_its_agent_under_a_far_notice_fails_and_is_not_rerun(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    async with AgentPool("rv", min_size=1, max_size=1) as pool:
        call = asyncio.create_task(pool.run(workers.crash_at_gate, str(tmp_path / "g"), str(log)))
        await until(lambda: len(lines(log)) == 1, "the call running")
        loop = asyncio.get_running_loop()
        pool.preempt(
            PreemptionNotice(placement=pool.placements[0].name, deadline=loop.time() + 600)
        )
        (tmp_path / "g").touch()
        with pytest.raises(AgentLost) as lost:
            async with asyncio.timeout(PATIENCE):
                await call
        assert lost.value.delivered
    assert len(lines(log)) == 1, "the call was run again"


async def test_a_call_killed_at_close_under_a_far_notice_is_agent_lost(tmp_path: Path) -> None:
    log = tmp_path / "log"
    pool = AgentPool("rv", min_size=1, max_size=1, stop_grace=1)
    await pool.start()
    busy = asyncio.create_task(pool.run(workers.gated, str(tmp_path / "g"), str(log), "b"))
    await until(lambda: len(lines(log)) == 1, "the call running")
    loop = asyncio.get_running_loop()
    pool.preempt(PreemptionNotice(placement=pool.placements[0].name, deadline=loop.time() + 600))
    async with asyncio.timeout(PATIENCE):
        await pool.aclose()
    with pytest.raises(AgentLost):
        await busy
