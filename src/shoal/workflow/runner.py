"""The runner: turns one run of a workflow or mapreduce into calls on pools.

Steps run in definition order; each receives the previous step's result. A parallel step fans
out over the items of its input, at most ``max_parallel`` in flight, and hands the list of its
results, in input order, to the next step. A failing item stops new items from starting; the
items already running finish (their agents stay warm) and the run fails with :class:`StepFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from shoal._invoke import ContextCall
from shoal.clock import Clock
from shoal.context import Context, InputMissing
from shoal.errors import (
    AgentLost,
    CallTimeout,
    Preempted,
    RunStopped,
    StepFailed,
    WorkflowError,
    agent_failed,
)
from shoal.pool import AgentPool, Lease
from shoal.pool.pool import PREEMPTED_RETRIES, UNDELIVERED_RETRIES
from shoal.workflow.spec import ErrorPolicy, MapReduceSpec, PoolRequest, StepSpec, WorkflowSpec


class PoolHost(Protocol):
    """What the runner needs of whoever owns the pools (the :class:`~shoal.runtime.Runtime`)."""

    clock: Clock
    default_parallelism: int  # how many calls a non-pooled parallel step runs at once

    async def pool_for(self, request: PoolRequest, setup: Callable[[], object] | None) -> AgentPool:
        """The (warm) pool ``request`` names, created on first use."""
        ...

    async def dedicated_call(
        self,
        request: PoolRequest,
        setup: Callable[[], object] | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> Any:
        """``fn(*args)`` on a fresh agent, stopped after it."""
        ...


_RETRYABLE = (AgentLost, CallTimeout)


class _Skipped(Exception):
    """An item that had waited for an agent found the run failed or stopping: not sent."""


@dataclass
class StepProgress:
    """How far one step of a run has come (read by ``shoal run`` to draw its bars)."""

    name: str
    pool: str | None
    parallel: bool
    mode: str
    status: str = "pending"  # pending, running, done, failed
    total: int | None = None
    done: int = 0
    started: float | None = None
    finished: float | None = None

    @property
    def seconds(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished if self.finished is not None else self.started) - self.started


@dataclass
class RunProgress:
    steps: list[StepProgress] = field(default_factory=list)

    def step(self, name: str) -> StepProgress:
        return next(s for s in self.steps if s.name == name)


def plan_progress(spec: WorkflowSpec | MapReduceSpec) -> RunProgress:
    if isinstance(spec, MapReduceSpec):
        return RunProgress([StepProgress(spec.name, spec.name, True, "pooled")])
    steps = []
    for s in spec.steps:
        pool = spec.pool_for(s).name if s.execution_mode == "pooled" else None
        steps.append(StepProgress(s.name, pool, s.parallel, s.execution_mode))
    return RunProgress(steps)


class Runner:
    """Runs one workflow or mapreduce to its result on a runtime's pools."""

    def __init__(
        self,
        rt: PoolHost,
        spec: WorkflowSpec | MapReduceSpec,
        input: Any,
        run_id: str,
        progress: RunProgress,
    ) -> None:
        self.rt = rt
        self.spec = spec
        self.input = input
        self.ctx = Context(run_id=run_id, workflow=spec.name, input=input)
        self.progress = progress
        self._held: Lease | None = None  # the run's instance, for instance-pool workflows
        self.stopping = False  # set by RunHandle.stop(): take no new work
        self._failed = False  # an item failed: send no further item
        self._input_on: set[str] = set()  # agents that hold this run's input already
        # Set for a streamed mapreduce: hears of each item's result as it finishes.
        self.on_result: Callable[[int, Any], None] | None = None

    async def run(self) -> Any:
        if isinstance(self.spec, MapReduceSpec):
            return await self._run_mapreduce(self.spec)
        spec = self.spec
        if not spec.instance_pool:
            return await self._run_steps(spec)
        pool = await self.rt.pool_for(spec.workflow_pool(), spec.setup())
        self._held = await pool.get_agent()
        try:
            return await self._run_steps(spec)
        finally:
            if self._held is not None:
                await pool.release_agent(self._held)

    @contextlib.contextmanager
    def _tracking(self, prog: StepProgress) -> Iterator[None]:
        """Keep a step's progress record: running, then done or failed, with its times."""
        clock = self.rt.clock
        prog.status, prog.started = "running", clock.now()
        try:
            yield
        except BaseException:
            prog.status = "failed"
            raise
        finally:
            prog.finished = clock.now()
        prog.status = "done"

    async def _run_steps(self, spec: WorkflowSpec) -> Any:
        value = self.input
        for step in spec.steps:
            self._check_stop(step.name)
            prog = self.progress.step(step.name)
            with self._tracking(prog):
                if step.parallel:
                    value = await self._fan_out(step, value, prog)
                else:
                    args = (value,) if step.takes_input else ()
                    value = await self._call_step(step, args, None)
                    prog.done = 1
        return value

    async def _fan_out(self, step: StepSpec, value: Any, prog: StepProgress) -> list[Any]:
        items = _as_items(self.spec.name, step.name, value)
        prog.total = len(items)
        limit = step.max_parallel
        if limit is None:
            limit = await self._natural_parallelism(step)
        elif self._on_held(step):
            limit = 1  # the run's own instance serves one call at a time
        return await self._map(
            items,
            limit,
            lambda i, item: self._call_step(step, (item,), i),
            prog,
            step.errors.on_error == "collect",
        )

    async def _natural_parallelism(self, step: StepSpec) -> int:
        assert isinstance(self.spec, WorkflowSpec)
        if step.execution_mode != "pooled":
            return 1 if step.execution_mode == "inline" else self.rt.default_parallelism
        if self._on_held(step):
            return 1  # the run's own instance serves one call at a time
        pool = await self.rt.pool_for(self.spec.pool_for(step), self.spec.setup())
        return pool.max_size * pool.config.max_concurrency

    def _on_held(self, step: StepSpec) -> bool:
        """True when ``step`` runs on the instance this run holds."""
        assert isinstance(self.spec, WorkflowSpec)
        return (
            self._held is not None
            and step.execution_mode == "pooled"
            and self.spec.pool_for(step).name == self.spec.name
        )

    async def _map(
        self,
        items: list[Any],
        limit: int,
        call: Callable[[int, Any], Any],
        prog: StepProgress,
        collect: bool = False,
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """Call ``call(i, item)`` for every item, ``limit`` at a time; results in input order.

        A failed item stops the others from starting, unless ``collect``: then its exception
        (the step's own, not the StepFailed around it) takes its place in the results.
        ``on_result`` hears of each item as it finishes.
        """
        results: list[Any] = [None] * len(items)
        pending = iter(enumerate(items))
        failure: list[BaseException] = []

        async def worker() -> None:
            for i, item in pending:
                if failure or self.stopping or self._failed:
                    return
                try:
                    results[i] = await call(i, item)
                except _Skipped:
                    return
                except RunStopped as exc:  # its agent was lost during a stop: not retried
                    failure.append(exc)
                    return
                except StepFailed as exc:
                    if not collect:
                        failure.append(exc)
                        self._failed = True
                        return
                    results[i] = exc.__cause__ if exc.__cause__ is not None else exc
                prog.done += 1
                if on_result is not None:
                    on_result(i, results[i])

        await asyncio.gather(*(worker() for _ in range(min(limit, len(items)))))
        if failure:
            raise failure[0]
        self._check_stop(prog.name, prog.done, len(items))
        return results

    def _check_stop(self, step: str, done: int | None = None, total: int | None = None) -> None:
        if self.stopping:
            where = f"step {step!r}" + (f" after {done} of {total} items" if total else "")
            raise RunStopped(
                f"run {self.ctx.run_id} of {self.spec.name!r} was stopped at {where}; "
                "the calls in flight were allowed to finish"
            )

    async def _call_step(self, step: StepSpec, args: tuple[Any, ...], item: int | None) -> Any:
        spec = self.spec
        assert isinstance(spec, WorkflowSpec) and step.invoker is not None
        invoker = step.invoker
        if step.execution_mode == "inline":
            return await self._attempt(
                step.name, item, ErrorPolicy(retries=0), lambda ctx: invoker(ctx, *args)
            )
        request = spec.pool_for(step)
        if step.execution_mode == "dedicated":
            return await self._attempt(
                step.name,
                item,
                step.errors,
                lambda ctx: self.rt.dedicated_call(
                    request, spec.setup(), invoker, (ctx, *args), step.timeout
                ),
            )
        if self._on_held(step):
            return await self._attempt(
                step.name,
                item,
                step.errors,
                lambda ctx: self._call_held(invoker, ctx, args, step.timeout),
            )
        pool = await self.rt.pool_for(request, spec.setup())
        return await self._attempt(
            step.name,
            item,
            step.errors,
            lambda ctx: self._on_pool(
                pool, invoker, ctx, args, step.timeout, step.errors.on_preempt
            ),
        )

    async def _on_pool(
        self,
        pool: AgentPool,
        fn: Callable[..., Any],
        ctx: Context,
        args: tuple[Any, ...],
        timeout: float | None,
        on_preempt: str = "requeue",
    ) -> Any:
        """One call on an agent of ``pool``; one that never reached its agent is retried, and
        one its agent's preemption cut short goes again at the head of the queue."""
        lost = preempted = 0
        while True:
            lease = await pool.get_agent(head=preempted > 0)
            try:
                if self.stopping or self._failed:
                    raise _Skipped  # waited for an agent while the run failed or was stopped
                return await self._send(lease, fn, ctx, args, timeout)
            except Preempted:
                preempted += 1
                if on_preempt == "fail" or preempted > PREEMPTED_RETRIES:
                    raise
            except AgentLost as exc:
                lost += 1
                if exc.delivered or exc.remote or lost >= UNDELIVERED_RETRIES:
                    raise
            finally:
                await pool.release_agent(lease)

    async def _send(
        self,
        lease: Lease,
        fn: Callable[..., Any],
        ctx: Context,
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> Any:
        """Call ``fn(ctx, *args)`` on the agent held; the run's input goes to it only once."""
        agent = lease.agent_id
        if agent in self._input_on:
            try:
                return await lease.call(fn, (ctx.without_input(), *args), timeout=timeout)
            except InputMissing:
                pass  # the agent dropped it (it keeps the inputs of its recent runs only)
        self._input_on.add(agent)
        return await lease.call(fn, (ctx, *args), timeout=timeout)

    async def _call_held(
        self, fn: Callable[..., Any], ctx: Context, args: tuple[Any, ...], timeout: float | None
    ) -> Any:
        assert self._held is not None and isinstance(self.spec, WorkflowSpec)
        lease = self._held
        try:
            return await self._send(lease, fn, ctx, args, timeout)
        except _RETRYABLE:
            # The run's instance is gone: give it back (the pool retires it) and take another.
            pool = lease.pool
            self._held = None
            await pool.release_agent(lease)
            self._held = await pool.get_agent()
            raise

    async def _attempt(
        self,
        step: str,
        item: int | None,
        errors: ErrorPolicy,
        call: Callable[[Context], Any],
    ) -> Any:
        where = f"workflow {self.spec.name!r} step {step!r}" + (
            f" item {item}" if item is not None else ""
        )
        retries = errors.retries
        for attempt in itertools.count(1):
            ctx = self.ctx.for_step(step, item_index=item, attempt=attempt)
            try:
                return await call(ctx)
            except _Skipped:
                raise
            except errors.retry_on as exc:  # the step's own exception, retried as asked
                if attempt > retries or self.stopping or self._failed:
                    raise StepFailed(
                        f"{where} raised {type(exc).__name__}: {exc} (after {attempt} attempt(s))",
                        workflow=self.spec.name,
                        step=step,
                        item_index=item,
                        attempts=attempt,
                    ) from exc
                await asyncio.sleep(errors.delay(attempt))
            except _RETRYABLE as exc:
                if self.stopping and agent_failed(exc):
                    # A stopping run starts nothing new, a retry included: the agent may have
                    # died of the very signal that is stopping us, and the call may have run.
                    raise RunStopped(
                        f"run {self.ctx.run_id} of {self.spec.name!r} was stopped; {where} "
                        f"lost its agent during the stop and was not retried: {exc}"
                    ) from exc
                opted_out = isinstance(exc, Preempted) and errors.on_preempt == "fail"
                if attempt > retries or not agent_failed(exc) or opted_out:
                    raise StepFailed(
                        f"{where} failed after {attempt} attempt(s): {type(exc).__name__}: {exc}",
                        workflow=self.spec.name,
                        step=step,
                        item_index=item,
                        attempts=attempt,
                    ) from exc
            except StepFailed:
                raise
            except Exception as exc:
                raise StepFailed(
                    f"{where} raised {type(exc).__name__}: {exc}",
                    workflow=self.spec.name,
                    step=step,
                    item_index=item,
                    attempts=attempt,
                ) from exc
        raise AssertionError("unreachable")

    async def _run_mapreduce(self, spec: MapReduceSpec) -> Any:
        prog = self.progress.steps[0]
        with self._tracking(prog):
            items = _as_items(spec.name, spec.name, self.input)
            prog.total = len(items)
            pool: AgentPool = await self.rt.pool_for(spec.pool(), None)
            limit = spec.max_parallel or pool.max_size * pool.config.max_concurrency
            fn = ContextCall(spec.fn)

            def call(i: int, item: Any) -> Any:
                return self._attempt(
                    spec.name,
                    i,
                    spec.errors,
                    lambda ctx: self._on_pool(
                        pool, fn, ctx, (item,), spec.timeout, spec.errors.on_preempt
                    ),
                )

            collect = spec.errors.on_error == "collect"
            results = await self._map(items, limit, call, prog, collect, self.on_result)
            if self.on_result is not None:
                return None  # streamed: each result went out as it came
            return spec.reduce(results) if spec.reduce is not None else results


def _as_items(workflow: str, step: str, value: Any) -> list[Any]:
    if isinstance(value, Mapping):  # iterating would hand out its keys alone
        raise WorkflowError(
            f"workflow {workflow!r}: parallel step {step!r} got a dict; pass a list of items "
            "(e.g. list(d.items()))"
        )
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise WorkflowError(
            f"workflow {workflow!r} step {step!r} is parallel, so its input must be an iterable "
            f"of items (a list, a generator, ...), got {type(value).__name__}"
        )
    return list(value)


def pool_requests(spec: WorkflowSpec | MapReduceSpec) -> list[PoolRequest]:
    """Every pool a run of ``spec`` may use, so the runtime can warm them up front."""
    if isinstance(spec, MapReduceSpec):
        return [spec.pool()]
    requests = {}
    if spec.instance_pool:
        requests[spec.name] = spec.workflow_pool()
    for step in spec.steps:
        if step.execution_mode == "pooled":
            req = spec.pool_for(step)
            requests.setdefault(req.name, req)
    return list(requests.values())
