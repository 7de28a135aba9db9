"""The runtime: one object that owns the pools and runs of a process.

``async with Runtime() as rt:`` — local worker processes by default. ``await rt.run(Workflow,
input)`` returns a run's result; ``await rt.submit(...)`` returns a :class:`RunHandle` at once.
Pools are created the first time a run needs them, warmed up concurrently at the start of that
run, and kept warm across runs until the runtime closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Literal

from shoal.backends.base import Backend
from shoal.clock import Clock, LoopClock
from shoal.errors import BackendError, PoolClosed, RunStopped, ShoalError, WorkflowError
from shoal.pool import AgentPool, PoolManager
from shoal.scaling.autoscaler import AutoScaler
from shoal.workflow.runner import Runner, RunProgress, plan_progress, pool_requests
from shoal.workflow.spec import MapReduceSpec, PoolRequest, WorkflowSpec, spec_of

RunStatus = Literal["pending", "running", "succeeded", "failed", "stopped", "cancelled"]


class RunHandle:
    """One submitted run: its status, its progress, and (awaited) its result."""

    def __init__(self, run_id: str, workflow: str, progress: RunProgress, pools: list[str]) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.progress = progress
        self.pools = pools  # the names of the pools this run uses
        self.status: RunStatus = "pending"
        self.started: float | None = None
        self.finished: float | None = None
        self._task: asyncio.Task[Any] | None = None
        self._runner: Runner | None = None

    async def result(self) -> Any:
        """Wait for the run and return its result (or raise its error).

        Cancelling the caller does not cancel the run; :meth:`cancel` does.
        """
        assert self._task is not None
        return await asyncio.shield(self._task)

    def stop(self) -> None:
        """Stop gracefully: start no new step or item, let the calls in flight finish; the run
        then ends with :class:`~shoal.errors.RunStopped`. :meth:`cancel` stops at once."""
        if self._runner is not None:
            self._runner.stopping = True

    def cancel(self) -> bool:
        """Cancel the run: its waiting calls are withdrawn and its running calls' agents killed."""
        return self._task is not None and self._task.cancel()

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    @property
    def wall_s(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id} {self.workflow!r} {self.status}>"


class Runtime:
    """Owns pools (by name, in :attr:`pools`) and the runs submitted to them.

    ``backend`` is ``"process"`` (local worker processes, the default) or any
    :class:`~shoal.backends.Backend` instance; every pool of this runtime uses it. The runtime
    remembers the runs in flight and the last ``history`` finished ones (for :attr:`runs`);
    an older run lives on only in the :class:`RunHandle` its caller kept.
    """

    def __init__(
        self,
        backend: Backend | str | None = None,
        *,
        clock: Clock | None = None,
        history: int = 1000,
    ):
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ShoalError(f"Runtime: history={history!r} must be an integer >= 0")
        self.backend = _make_backend(backend)
        self._owns_backend = backend is None or isinstance(backend, str)
        self.clock: Clock = clock or LoopClock()
        self.pools = PoolManager()
        self._pool_options: dict[str, Mapping[str, Any]] = {}
        self._pool_ready: dict[str, asyncio.Future[AgentPool]] = {}
        self._runs: dict[str, RunHandle] = {}  # in flight
        self._finished: OrderedDict[str, RunHandle] = OrderedDict()  # the last `history`
        self._history = history
        self._ids = itertools.count(1)
        self._starters: set[asyncio.Task[None]] = set()
        self.autoscalers: dict[str, AutoScaler] = {}
        # Calls that waited for their pool's first warm-up, by pool: cold starts the pool
        # itself cannot see (its agents were idle by the time the calls reached it).
        self.warmup_waits: Counter[str] = Counter()
        self._open = False
        self._closed = False
        self.default_parallelism = os.cpu_count() or 1

    async def __aenter__(self) -> Runtime:
        if self._closed:
            raise ShoalError("this Runtime was closed; create a new one")
        self._open = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def pool(self, name: str) -> AgentPool:
        """The pool named ``name`` (a ``KeyError`` lists the pools there are)."""
        return self.pools.get(name)

    @property
    def runs(self) -> list[RunHandle]:
        """The recent finished runs (up to ``history``), then the runs in flight."""
        return [*self._finished.values(), *self._runs.values()]

    def get_run(self, run_id: str) -> RunHandle | None:
        """A run in flight or among the recent finished ones, by id."""
        return self._runs.get(run_id) or self._finished.get(run_id)

    async def run(self, target: Any, input: Any = None) -> Any:
        """Run a ``@workflow`` class or ``@mapreduce`` function on ``input``; return the result."""
        handle = await self.submit(target, input)
        return await handle.result()

    async def stream(
        self, target: Any, items: Iterable[Any], *, ordered: bool = False
    ) -> AsyncIterator[Any]:
        """Run a ``@mapreduce`` over ``items`` and yield each item's result as it finishes
        (``ordered=True``: in input order, each as soon as those before it are done).

        ``reduce`` is not applied. With ``on_error="collect"`` a failed item yields its
        exception; otherwise the run's error is raised after the results that came before it.
        Leaving the loop early cancels the rest of the run.
        """
        spec = spec_of(target)
        if not isinstance(spec, MapReduceSpec):
            raise WorkflowError(
                f"stream() maps a @mapreduce function over items; {spec.name!r} is a workflow: "
                "use run() or submit()"
            )
        done: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        handle = await self._submit(spec, items, lambda i, r: done.put_nowait((i, r)))
        assert handle._task is not None
        ended = asyncio.ensure_future(asyncio.shield(handle._task))
        waiting: dict[int, Any] = {}
        next_i = 0
        try:
            while True:
                if done.empty():
                    if ended.done():
                        break
                    got = asyncio.ensure_future(done.get())
                    await asyncio.wait({got, ended}, return_when=asyncio.FIRST_COMPLETED)
                    if not got.done():
                        got.cancel()
                        continue
                    i, result = got.result()
                else:
                    i, result = done.get_nowait()
                if not ordered:
                    yield result
                    continue
                waiting[i] = result
                while next_i in waiting:
                    yield waiting.pop(next_i)
                    next_i += 1
            for i in sorted(waiting):  # after a gap a failed item left
                yield waiting[i]
            ended.result()  # the run's error, if it failed
        finally:
            if not handle.done:
                handle.cancel()
            ended.cancel()

    async def submit(self, target: Any, input: Any = None) -> RunHandle:
        """Start a run and return its handle at once."""
        return await self._submit(spec_of(target), input, None)

    async def _submit(
        self,
        spec: WorkflowSpec | MapReduceSpec,
        input: Any,
        on_result: Callable[[int, Any], None] | None,
    ) -> RunHandle:
        if not self._open:
            raise ShoalError("the runtime is not open: use 'async with Runtime() as rt:'")
        run_id = f"run-{next(self._ids)}"
        requests = pool_requests(spec)
        handle = RunHandle(run_id, spec.name, plan_progress(spec), [r.name for r in requests])
        for request in requests:
            setup = spec.setup() if isinstance(spec, WorkflowSpec) else None
            self._start_pool(request, setup)  # warm every pool of the run up front
        runner = Runner(self, spec, input, run_id, handle.progress)
        runner.on_result = on_result
        handle._runner = runner
        handle._task = asyncio.get_running_loop().create_task(
            self._drive(handle, runner), name=f"shoal-{run_id}"
        )
        handle._task.add_done_callback(functools.partial(self._settle, handle))
        self._runs[run_id] = handle
        return handle

    async def warm(self, target: Any) -> list[AgentPool]:
        """Create every pool ``target``'s runs use and wait until each holds its minimum warm
        (a service does this before it calls itself ready)."""
        spec = spec_of(target)
        setup = spec.setup() if isinstance(spec, WorkflowSpec) else None
        pools = (self.pool_for(r, setup) for r in pool_requests(spec))
        return list(await asyncio.gather(*pools))

    def forget(self, run_id: str) -> None:
        """Drop a finished run from :attr:`runs` before ``history`` would (a service that
        keeps its own records)."""
        self._finished.pop(run_id, None)

    async def aclose(self) -> None:
        """Cancel unfinished runs, then close every pool."""
        self._open = False
        self._closed = True
        tasks = [h._task for h in list(self._runs.values()) if h._task is not None and not h.done]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for starter in self._starters:
            starter.cancel()
        await asyncio.gather(*self._starters, return_exceptions=True)
        await asyncio.gather(*(s.stop() for s in self.autoscalers.values()))
        await self.pools.aclose()
        if self._owns_backend:
            shutdown = getattr(self.backend, "shutdown", None)
            if shutdown is not None:
                shutdown()  # e.g. the local Ray instance a "ray" backend started

    def _settle(self, handle: RunHandle, task: asyncio.Task[Any]) -> None:
        """A run ended: move it to the bounded history. One cancelled before it began never
        ran _drive: give it its final status."""
        if task.cancelled() and handle.status == "pending":
            handle.status = "cancelled"
            handle.finished = self.clock.now()
        handle._runner = None  # the run's working state is no longer needed
        if self._runs.pop(handle.run_id, None) is not None and self._history:
            self._finished[handle.run_id] = handle
            while len(self._finished) > self._history:
                self._finished.popitem(last=False)
        if not task.cancelled():
            task.exception()  # retrieved: the handle's owner may never ask for it

    async def _drive(self, handle: RunHandle, runner: Runner) -> Any:
        handle.status = "running"
        handle.started = self.clock.now()
        try:
            result = await runner.run()
        except asyncio.CancelledError:
            handle.status = "cancelled"
            raise
        except RunStopped:
            handle.status = "stopped"
            raise
        except BaseException:
            handle.status = "failed"
            raise
        finally:
            handle.finished = self.clock.now()
        handle.status = "succeeded"
        return result

    # -- the runner's host (workflow.runner.PoolHost) ---------------------------------------

    def _start_pool(
        self, request: PoolRequest, setup: Callable[[], object] | None
    ) -> asyncio.Future[AgentPool]:
        known = self._pool_options.get(request.name)
        if known is not None:
            if request.options and dict(request.options) != dict(known):
                raise WorkflowError(
                    f"pool {request.name!r} is already configured as {dict(known)}; a step asks "
                    f"for it as {dict(request.options)}. Give one of them another pool name."
                )
            return self._pool_ready[request.name]
        pool = AgentPool(
            request.name,
            backend=self.backend,
            clock=None if isinstance(self.clock, LoopClock) else self.clock,
            setup=setup,
            **dict(request.options),
        )
        self.pools.register_pool(pool)
        self._pool_options[request.name] = dict(request.options)
        ready: asyncio.Future[AgentPool] = asyncio.get_running_loop().create_future()
        self._pool_ready[request.name] = ready

        async def start() -> None:
            # Any failure — the pool's start or its autoscaler's construction — reaches every
            # run waiting for this pool, and the pool is closed and forgotten, so a later run
            # may try again. Nothing here may leave `ready` unset: a run would wait forever.
            scaler: AutoScaler | None = None
            try:
                if request.scaling is not None and request.scaling.policy_name != "fixed":
                    scaler = AutoScaler(pool, request.scaling)
                await pool.start()
                if scaler is not None:
                    scaler.start()
                    self.autoscalers[pool.name] = scaler
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)
                self.pools.unregister_pool(request.name)
                del self._pool_options[request.name]
                del self._pool_ready[request.name]
                with contextlib.suppress(Exception):
                    if scaler is not None:
                        await scaler.stop()
                    await pool.aclose()
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                if not ready.done():
                    ready.set_result(pool)

        self._starters.add(
            asyncio.get_running_loop().create_task(start(), name=f"shoal-start-{pool.name}")
        )
        # A start error is delivered to whichever run awaits the pool; if none does, it is
        # still retrieved here so asyncio does not report it as never retrieved.
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        return ready

    async def pool_for(self, request: PoolRequest, setup: Callable[[], object] | None) -> AgentPool:
        """The pool ``request`` names, warm; created (and its autoscaler started) on first use."""
        if not self._open:
            raise PoolClosed("the runtime is closed")
        ready = self._start_pool(request, setup)
        if not ready.done():
            self.warmup_waits[request.name] += 1  # this call pays the pool's cold start
        return await asyncio.shield(ready)

    async def dedicated_call(
        self,
        request: PoolRequest,
        setup: Callable[[], object] | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> Any:
        """The cold path: a fresh agent for one call, stopped after it."""
        options = {k: v for k, v in request.options.items() if k not in ("min_size", "max_size")}
        async with AgentPool(
            f"{request.name}.dedicated",
            min_size=1,
            max_size=1,
            backend=self.backend,
            setup=setup,
            **options,
        ) as pool:
            return await pool.call(fn, args, timeout=timeout)


def _make_backend(backend: Backend | str | None) -> Backend:
    if backend is None or backend == "process":
        from shoal.backends.process import ProcessBackend

        return ProcessBackend()
    if backend == "ray":
        from shoal.backends.ray import RayBackend

        return RayBackend()
    if backend == "container":
        from shoal.backends.container import ContainerBackend

        return ContainerBackend()  # each pool's image= names the image
    if isinstance(backend, str):
        raise BackendError(
            f"unknown backend {backend!r}; choose 'process' (local worker processes), 'ray' "
            "(Ray actors) or 'container' (a container per agent), or pass a Backend instance"
        )
    return backend


def run(target: Any, input: Any = None, *, backend: Backend | str | None = None) -> Any:
    """Run a workflow or mapreduce to completion from synchronous code and return its result.

    Works in a notebook too, where an event loop already runs (the run then gets a loop of
    its own in another thread); in async code, ``await Runtime().run(...)`` instead.
    """
    from shoal.sync import run_blocking

    async def main() -> Any:
        async with Runtime(backend) as rt:
            return await rt.run(target, input)

    return run_blocking(main)
