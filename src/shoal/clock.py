"""Time, in one place.

Nothing else in shoal reads ``time.time()`` or ``time.monotonic()``: components read the running
event loop's clock through :class:`LoopClock`, so the same code runs in real time or on
:class:`VirtualTimeLoop`, where a ten-second sleep takes no real time at all.
"""

from __future__ import annotations

import asyncio
import heapq
import selectors
import time
from asyncio import base_events
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    """What a component needs of time: the current instant, in float seconds."""

    def now(self) -> float: ...


class LoopClock:
    """The running event loop's clock (monotonic in real time, virtual on a virtual loop)."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()


def wall_time() -> float:
    """Seconds since the epoch, for timestamps shown to people (never for measuring)."""
    return time.time()


def perf_counter() -> float:
    """A high-resolution real-time counter, for benchmarks and cold-start measurements."""
    return time.perf_counter()


class VirtualTimeDeadlock(RuntimeError):
    """Every task on a virtual-time loop is waiting and nothing is scheduled to wake any."""


class _VirtualSelector(selectors.BaseSelector):
    """Wraps a real selector; instead of blocking for ``timeout`` it advances virtual time."""

    _POLL_EVERY = 256  # with only the loop's own wake-up pipe registered, drain it this rarely

    def __init__(self, loop: VirtualTimeLoop, inner: selectors.BaseSelector) -> None:
        self._loop = loop
        self._inner = inner
        self._skipped = 0
        self._registered = 0  # descriptors registered (the loop's wake-up pipe is one)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # A simulation registers no descriptor but the loop's wake-up pipe, which matters only
        # to a loop that blocks (this one never does) and to signal handlers: skip the system
        # call on most iterations then, as it would otherwise cost more than the step it runs.
        if (
            self._registered <= 1
            and self._skipped < self._POLL_EVERY
            and not self._loop.has_signal_handlers()
        ):
            self._skipped += 1
            ready = []
        else:
            self._skipped = 0
            ready = self._inner.select(0)
        if ready:
            return ready
        if timeout is None:
            if self._loop.block_on_deadlock:
                return self._inner.select(None)
            raise VirtualTimeDeadlock(
                "every task is waiting and no timer is scheduled: nothing can ever wake up"
            )
        if timeout > 0:
            self._loop.advance(timeout)
        return []

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = self._inner.register(fileobj, events, data)
        self._registered += 1
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = self._inner.unregister(fileobj)
        self._registered -= 1
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def close(self) -> None:
        self._inner.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Any:
        return self._inner.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock jumps to the next timer whenever every task is waiting.

    Real file descriptors still work (they are polled without blocking), so virtual time only
    suits code whose waiting is all timers: the fake and simulated backends, policies, pools.
    """

    def __init__(self, start: float = 0.0, *, block_on_deadlock: bool = False) -> None:
        self._virtual_now = start
        self.block_on_deadlock = block_on_deadlock
        super().__init__(_VirtualSelector(self, selectors.DefaultSelector()))

    def time(self) -> float:
        return self._virtual_now

    def has_signal_handlers(self) -> bool:
        """Whether ``add_signal_handler`` is in use (its signals arrive through a pipe)."""
        return bool(getattr(self, "_signal_handlers", None))

    def _run_once(self) -> None:
        """asyncio's loop iteration, trimmed for virtual time: the same order of work (drop
        cancelled timers, poll, move due timers to the ready queue, run what was ready), with
        no real clock to read and no I/O to process when nothing is ready. A simulation runs
        millions of these, so each saved lookup counts."""
        if self._debug:  # type: ignore[attr-defined]
            super()._run_once()  # type: ignore[misc]
            return
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        count = len(scheduled)
        if (
            count > base_events._MIN_SCHEDULED_TIMER_HANDLES  # type: ignore[attr-defined]
            and self._timer_cancelled_count / count  # type: ignore[attr-defined]
            > base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION  # type: ignore[attr-defined]
        ):
            super()._run_once()  # type: ignore[misc]  # it sweeps the cancelled timers
            return
        while scheduled and scheduled[0]._cancelled:
            self._timer_cancelled_count -= 1  # type: ignore[attr-defined]
            heapq.heappop(scheduled)._scheduled = False  # type: ignore[attr-defined]
        ready = self._ready  # type: ignore[attr-defined]
        if ready or self._stopping:  # type: ignore[attr-defined]
            timeout: float | None = 0
        elif scheduled:
            timeout = max(0.0, scheduled[0]._when - self._virtual_now)  # type: ignore[attr-defined]
        else:
            timeout = None
        sel: _VirtualSelector = self._selector  # type: ignore[attr-defined]
        if (
            timeout is not None
            and sel._registered <= 1
            and sel._skipped < sel._POLL_EVERY
            and not self.has_signal_handlers()
        ):
            sel._skipped += 1  # what select() would do, without the call
            if timeout > 0:
                self._virtual_now += timeout
        else:
            events = sel.select(timeout)
            if events:
                self._process_events(events)  # type: ignore[attr-defined]
        end = self._virtual_now + self._clock_resolution  # type: ignore[attr-defined]
        pop = heapq.heappop
        while scheduled and scheduled[0]._when < end:  # type: ignore[attr-defined]
            handle = pop(scheduled)
            handle._scheduled = False  # type: ignore[attr-defined]
            ready.append(handle)
        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()

    def advance(self, seconds: float) -> None:
        """Move the clock forward; timers due by then run on the next loop iteration."""
        if seconds < 0:
            raise ValueError(f"cannot move virtual time backwards (by {seconds} s)")
        self._virtual_now += seconds


def run_virtual(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """Run ``main`` to completion on a fresh :class:`VirtualTimeLoop`."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)
