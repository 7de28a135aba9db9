"""The virtual-time loop: sleeps cost no real time, and a deadlock is reported, not hung."""

from __future__ import annotations

import asyncio
import time

import pytest

from shoal.clock import VirtualTimeDeadlock, VirtualTimeLoop, run_virtual


def test_a_day_of_sleeping_takes_no_real_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(asyncio.sleep(3600 * h) for h in range(1, 25)))
        return loop.time()

    started = time.perf_counter()
    assert run_virtual(main()) == pytest.approx(86400)
    assert time.perf_counter() - started < 5


def test_timers_fire_in_order_at_their_virtual_instants() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[str, float]] = []

        async def at(name: str, t: float) -> None:
            await asyncio.sleep(t)
            seen.append((name, loop.time()))

        await asyncio.gather(at("c", 3.5), at("a", 1.0), at("b", 2.25))
        return seen

    assert run_virtual(main(), start=100.0) == [("a", 101.0), ("b", 102.25), ("c", 103.5)]


def test_waiting_forever_is_reported_as_a_deadlock() -> None:
    async def main() -> None:
        await asyncio.Event().wait()

    with pytest.raises(VirtualTimeDeadlock):
        run_virtual(main())


def test_time_cannot_go_backwards() -> None:
    loop = VirtualTimeLoop()
    try:
        with pytest.raises(ValueError, match="backwards"):
            loop.advance(-1)
    finally:
        loop.close()


@pytest.mark.parametrize("debug", [False, True])
def test_cancelled_timers_never_fire_and_the_rest_fire_in_order(debug: bool) -> None:
    """Enough cancelled timers make the loop sweep its heap (asyncio's own iteration then);
    fewer are dropped from the heap's head; either way only live timers fire, in order."""

    async def main() -> list[tuple[float, int]]:
        loop = asyncio.get_running_loop()
        loop.set_debug(debug)
        fired: list[tuple[float, int]] = []
        handles = [
            loop.call_later(i * 0.5, lambda i=i: fired.append((loop.time(), i))) for i in range(300)
        ]
        for i, handle in enumerate(handles):
            if i % 4 or i > 280:  # 3 in 4 cancelled: past asyncio's sweeping threshold
                handle.cancel()
        await asyncio.sleep(200.0)
        return fired

    fired = run_virtual(main(), start=10.0)
    assert [i for _, i in fired] == [i for i in range(281) if i % 4 == 0]
    assert all(t == 10.0 + i * 0.5 for t, i in fired)
