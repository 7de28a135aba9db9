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
from asyncio import base_events, events, format_helpers
from collections import deque
from collections.abc import Callable, Coroutine
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

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


def _handles_are_plain() -> bool:
    """Whether asyncio's handles have exactly the slots :func:`_handle` and :func:`_timer` fill
    (true of CPython 3.11-3.13); otherwise the loop builds them through their constructors."""
    return set(events.Handle.__slots__) == {
        "_callback",
        "_args",
        "_cancelled",
        "_loop",
        "_source_traceback",
        "_repr",
        "__weakref__",
        "_context",
    } and set(events.TimerHandle.__slots__) == {"_scheduled", "_when"}


_PLAIN_HANDLES = _handles_are_plain()
_ASYNCIO: Any = base_events
_new_handle = events.Handle.__new__
_new_timer = events.TimerHandle.__new__


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock jumps to the next timer whenever every task is waiting.

    Real file descriptors still work (they are polled without blocking), so virtual time only
    suits code whose waiting is all timers: the fake and simulated backends, policies, pools.

    A simulation runs millions of timers and callbacks on this loop, so it schedules them
    itself (outside debug mode): its timer heap holds ``(when, handle)`` pairs, which the heap
    compares in C where asyncio's holds handles compared by a Python ``__lt__``; handles are
    filled in directly rather than through their constructors; a ready callback runs without
    the extra frame of ``Handle._run``. The order of everything is asyncio's own: a tie on
    ``when`` compares the handles, which are then neither less nor greater, exactly as
    asyncio's heap sees them, so equal-time timers come out in the same order. ``lean=False``
    keeps asyncio's scheduling (the reference that order is tested against). In debug mode the
    lean loop builds handles with their constructors (so they keep where they were created)
    but does not time callbacks; use ``lean=False`` for asyncio's slow-callback warnings.
    """

    if TYPE_CHECKING:  # asyncio's internals that this loop works with
        _debug: bool
        _closed: bool
        _stopping: bool
        _ready: deque[Any]
        _scheduled: list[Any]
        _timer_cancelled_count: int
        _clock_resolution: float
        _selector: Any

        def _process_events(self, event_list: Any) -> None: ...

    def __init__(
        self, start: float = 0.0, *, block_on_deadlock: bool = False, lean: bool = True
    ) -> None:
        self._virtual_now = start
        self.block_on_deadlock = block_on_deadlock
        super().__init__(_VirtualSelector(self, selectors.DefaultSelector()))
        self._lean = lean and _PLAIN_HANDLES
        # add_signal_handler fills this dict in place (a stand-in where there is none)
        self._signals: dict[int, Any] = getattr(self, "_signal_handlers", {})

    def time(self) -> float:
        return self._virtual_now

    def has_signal_handlers(self) -> bool:
        """Whether ``add_signal_handler`` is in use (its signals arrive through a pipe)."""
        return bool(getattr(self, "_signal_handlers", None))

    # -- scheduling ---------------------------------------------------------------------------

    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: Context | None = None
    ) -> asyncio.Handle:
        if not self._lean or self._debug:
            return super().call_soon(callback, *args, context=context)
        if self._closed:
            raise RuntimeError("Event loop is closed")
        handle: Any = _new_handle(events.Handle)
        handle._context = copy_context() if context is None else context
        handle._loop = self
        handle._callback = callback
        handle._args = args
        handle._cancelled = False
        handle._repr = None
        handle._source_traceback = None
        self._ready.append(handle)
        return handle  # type: ignore[no-any-return]

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        if not self._lean or self._debug:
            return super().call_later(delay, callback, *args, context=context)
        if delay is None:
            raise TypeError("delay must not be None")
        return self.call_at(self._virtual_now + delay, callback, *args, context=context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        if not self._lean:
            return super().call_at(when, callback, *args, context=context)
        if when is None:
            raise TypeError("when cannot be None")
        if self._closed:
            raise RuntimeError("Event loop is closed")
        timer: Any
        if self._debug:
            timer = events.TimerHandle(when, callback, args, self, context)
        else:
            timer = _new_timer(events.TimerHandle)
            timer._context = copy_context() if context is None else context
            timer._loop = self
            timer._callback = callback
            timer._args = args
            timer._cancelled = False
            timer._repr = None
            timer._source_traceback = None
            timer._when = when
        heapq.heappush(self._scheduled, (when, timer))
        timer._scheduled = True
        return timer  # type: ignore[no-any-return]

    # -- one iteration ------------------------------------------------------------------------

    def _run_once(self) -> None:
        """asyncio's loop iteration, trimmed for virtual time: the same order of work (drop
        cancelled timers, poll, move due timers to the ready queue, run what was ready), with
        no real clock to read and no I/O to process when nothing is ready."""
        if not self._lean:
            self._run_once_reference()
            return
        # run_forever calls this and stops once _stopping is set after it: iterating here until
        # then is the same, without a call and a check per iteration.
        pop = heapq.heappop
        ready = self._ready
        popleft = ready.popleft
        sel = self._selector
        signals = self._signals
        resolution = self._clock_resolution
        most = _ASYNCIO._MIN_SCHEDULED_TIMER_HANDLES
        fraction = _ASYNCIO._MIN_CANCELLED_TIMER_HANDLES_FRACTION
        while True:
            scheduled: list[Any] = self._scheduled
            count = len(scheduled)
            swept = count > most and self._timer_cancelled_count / count > fraction
            if swept:
                kept = []  # asyncio's sweep of cancelled timers, on the pairs
                for entry in scheduled:
                    if entry[1]._cancelled:
                        entry[1]._scheduled = False
                    else:
                        kept.append(entry)
                heapq.heapify(kept)
                self._scheduled = scheduled = kept
                self._timer_cancelled_count = 0
            else:
                while scheduled and scheduled[0][1]._cancelled:
                    self._timer_cancelled_count -= 1
                    pop(scheduled)[1]._scheduled = False
            if ready or self._stopping:
                timeout: float | None = 0
            elif scheduled:
                timeout = max(0.0, scheduled[0][0] - self._virtual_now)
                if swept:  # asyncio's own iteration, which sweeps, caps its wait
                    timeout = min(timeout, _ASYNCIO.MAXIMUM_SELECT_TIMEOUT)
            else:
                timeout = None
            # (what _poll does, inline: this runs millions of times)
            if (
                timeout is not None
                and sel._registered <= 1
                and sel._skipped < sel._POLL_EVERY
                and not signals
            ):
                sel._skipped += 1
                if timeout > 0:
                    self._virtual_now += timeout
            else:
                events_ = sel.select(timeout)
                if events_:
                    self._process_events(events_)
            end = self._virtual_now + resolution
            while scheduled and scheduled[0][0] < end:
                handle = pop(scheduled)[1]
                handle._scheduled = False
                ready.append(handle)
            for _ in range(len(ready)):
                handle = popleft()
                if handle._cancelled:
                    continue
                try:
                    handle._context.run(handle._callback, *handle._args)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._callback_failed(handle, exc)
            if self._stopping:
                return

    def _poll(self, timeout: float | None) -> None:
        """Poll the selector, or skip the system call (most iterations: see
        :class:`_VirtualSelector`) and just move the clock on by ``timeout``."""
        sel: _VirtualSelector = self._selector
        if (
            timeout is not None
            and sel._registered <= 1
            and sel._skipped < sel._POLL_EVERY
            and not self._signals
        ):
            sel._skipped += 1  # what select() would do, without the call
            if timeout > 0:
                self._virtual_now += timeout
        else:
            events_ = sel.select(timeout)
            if events_:
                self._process_events(events_)

    def _callback_failed(self, handle: Any, exc: BaseException) -> None:
        """What ``Handle._run`` does when its callback raises."""
        cb = format_helpers._format_callback_source(handle._callback, handle._args)
        context: dict[str, Any] = {
            "message": f"Exception in callback {cb}",
            "exception": exc,
            "handle": handle,
        }
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)

    def _run_once_reference(self) -> None:
        """The iteration on asyncio's own heap of handles (``lean=False``), in the same order
        and with the same clock arithmetic as the lean one."""
        if self._debug:
            super()._run_once()  # type: ignore[misc]
            return
        scheduled: list[Any] = self._scheduled
        count = len(scheduled)
        if (
            count > _ASYNCIO._MIN_SCHEDULED_TIMER_HANDLES
            and self._timer_cancelled_count / count > _ASYNCIO._MIN_CANCELLED_TIMER_HANDLES_FRACTION
        ):
            super()._run_once()  # type: ignore[misc]  # it sweeps the cancelled timers
            return
        while scheduled and scheduled[0]._cancelled:
            self._timer_cancelled_count -= 1
            heapq.heappop(scheduled)._scheduled = False
        ready = self._ready
        if ready or self._stopping:
            timeout: float | None = 0
        elif scheduled:
            timeout = max(0.0, scheduled[0]._when - self._virtual_now)
        else:
            timeout = None
        self._poll(timeout)
        end = self._virtual_now + self._clock_resolution
        pop = heapq.heappop
        while scheduled and scheduled[0]._when < end:
            handle = pop(scheduled)
            handle._scheduled = False
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
