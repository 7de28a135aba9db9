"""shoal from synchronous code: a pool for scripts, the way ``ProcessPoolExecutor`` is used.

``with shoal.pool(max_size=4) as p: p.map(fn, xs)`` runs an :class:`~shoal.pool.AgentPool` on an
event loop of its own, in a background thread, so plain scripts and notebooks need no
``async``. Everything the async pool guarantees holds: warm agents, FIFO, each call answered once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from shoal.errors import ShoalError

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread, for synchronous callers."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncPool:
    """A pool of warm agents for synchronous code (see :func:`shoal.pool`).

    Options are :class:`~shoal.pool.AgentPool`'s (``min_size``, ``max_size``, ``setup``,
    ``backend``, ...). Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, name: str = "pool", **options: Any) -> None:
        from shoal.pool.pool import AgentPool

        self._thread = LoopThread(f"shoal-{name}")
        self._closed = False

        async def start() -> AgentPool:
            p = AgentPool(name, **options)
            await p.start()
            return p

        try:
            self.pool = self._thread.run(start())
        except BaseException:
            self._thread.close()
            raise

    def __enter__(self) -> SyncPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on a warm agent; blocks until its result."""
        return self.submit(fn, *args, **kwargs).result()

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Start ``fn(*args, **kwargs)`` on an agent; a ``concurrent.futures.Future`` for it."""
        self._check_open()
        return self._thread.submit(self.pool.call(fn, args, kwargs))

    def map(
        self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None
    ) -> Iterator[T]:
        """Like ``Executor.map``: results in input order, as an iterator; all calls are
        submitted at once and queue for the pool's agents first come, first served."""
        self._check_open()
        futures = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]

        def results() -> Iterator[T]:
            try:
                for fut in futures:
                    yield fut.result(timeout)
            finally:
                for fut in futures:
                    fut.cancel()

        return results()

    def close(self) -> None:
        """Finish the calls in flight (within the pool's ``stop_grace``) and stop the agents."""
        if self._closed:
            return
        self._closed = True
        try:
            self._thread.run(self.pool.aclose())
        finally:
            self._thread.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ShoalError("this pool is closed; create a new one with shoal.pool(...)")

    def __repr__(self) -> str:
        return f"<SyncPool {self.pool!r}>"


_ids = itertools.count(1)


def run_blocking(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, even where an event loop is
    already running in this thread (a notebook): then it runs on a loop in another thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_fn())
    box: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(asyncio.run(coro_fn()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"shoal-run-{next(_ids)}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]
