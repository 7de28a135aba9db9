"""The service behind ``shoal serve``: runs by id, admission control, and a live event feed.

Everything HTTP-shaped lives in :mod:`shoal.serve.app`; this module only knows the runtime. It
reads pools through their public surface (``snapshot()``, ``events``, ``target_size``) and runs
through :class:`~shoal.runtime.RunHandle`, polling both on one watcher task: scaling events and
run progress are published to subscribers (the ``/events`` stream) as the watcher sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import pickle
import sys
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.errors import ShoalError
from shoal.pool import AgentPool, PooledAgent
from shoal.pool.events import ScalingEvent
from shoal.runtime import RunHandle, RunStatus, Runtime
from shoal.serve.metrics import EventTally, ServeMetrics
from shoal.workflow.spec import WorkflowSpec, spec_of

_HISTORY = 600  # samples per pool kept for the dashboard's chart (5 min at 0.5 s)
_RECENT_RUNS = 200  # finished runs listed by /pools and the dashboard
_KEEP_RUNS = 10_000  # finished runs still answerable by GET /runs/{id}
_KEEP_BYTES = 256 * 2**20  # ... and at most this many bytes of their results (the newest: any)
_SUBSCRIBER_BACKLOG = 1_000  # messages a slow /events client may fall behind before it is cut


class Rejected(ShoalError):
    """A run was refused before it started; ``status`` is the HTTP status that says why."""

    def __init__(self, message: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass
class RunRecord:
    """One run submitted through the service, and what became of it."""

    handle: RunHandle
    submitted: float
    result: Any = None
    error: BaseException | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    size: int = 0  # bytes of its result, as pickled (what the service keeps it for)
    cancelled_by: str | None = None  # who cancelled the run, for its error's message
    stopped_server: bool = False  # cancelled because the server stopped: worth retrying

    @property
    def status(self) -> RunStatus:
        """The run's status as the service shows it: an ended run reads as running until the
        service has stored its result or error (a turn or two of the loop later), so nobody
        reads "succeeded" with no result yet."""
        status = self.handle.status
        if self.done.is_set() or status in ("pending", "running"):
            return status
        return "running"

    @property
    def queued(self) -> bool:
        """Admitted but not started on any step yet (waiting for an instance or a pool)."""
        return not self.handle.done and all(
            s.status == "pending" for s in self.handle.progress.steps
        )


class Service:
    """Serves the workflows in ``targets`` (by workflow name) on one :class:`Runtime`.

    ``max_queue`` bounds, per workflow, the runs admitted but not yet started; a workflow whose
    own pool sets ``max_queue`` uses that instead. Past it :meth:`submit` raises
    :class:`Rejected` with status 429 and a ``retry_after`` estimate.
    """

    def __init__(
        self,
        rt: Runtime,
        targets: Iterable[Any],
        *,
        max_queue: int = 100,
        tick_s: float = 0.25,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.rt = rt
        self.targets: dict[str, Any] = {}
        self.aliases: dict[str, str] = {}
        self.max_queue: dict[str, int] = {}
        for target in targets:
            spec = spec_of(target)
            self.targets[spec.name] = target
            self.aliases[getattr(target, "__name__", spec.name)] = spec.name
            own = (
                spec.workflow_pool().options.get("max_queue")
                if isinstance(spec, WorkflowSpec)
                else None
            )
            self.max_queue[spec.name] = own if isinstance(own, int) else max_queue
        self.tick_s = tick_s
        self.metrics = metrics or ServeMetrics(rt)
        self.runs: dict[str, RunRecord] = {}
        self.workflow_pools: dict[str, set[str]] = {}
        self.first_pool: dict[str, str] = {}
        self.in_flight: Counter[str] = Counter()
        self.finished: deque[str] = deque()
        self.kept_bytes = 0  # the sizes of the finished runs' results
        self.history: dict[str, deque[dict[str, Any]]] = {}
        self.timeline: dict[str, deque[dict[str, Any]]] = {}
        self.draining = False
        self.warm = False
        self.warm_error: BaseException | None = None
        self._warming: asyncio.Task[None] | None = None
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._feed_closed = False
        self._tally: EventTally = self.metrics.tally
        self._seen_progress: dict[str, tuple[Any, ...]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._waiters: set[asyncio.Task[None]] = set()

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching the pools and warming every pool the served workflows use."""
        loop = asyncio.get_running_loop()
        self._watcher = loop.create_task(self._watch(), name="shoal-serve-watch")
        self._warming = loop.create_task(self._warm(), name="shoal-serve-warm")

    async def _warm(self) -> None:
        try:
            await asyncio.gather(*(self.rt.warm(t) for t in self.targets.values()))
        except Exception as exc:  # reported by /readyz; runs will try the pools again
            self.warm_error = exc
        else:
            self.warm = True

    def ready(self) -> bool:
        """True once every pool holds at least its minimum of warm agents and we take runs."""
        if not self.warm or self.draining:
            return False
        for pool in self.rt.pools:
            m = pool.snapshot()
            if m.idle + m.busy < m.min_size:
                return False
        return True

    async def drain(self, grace: float) -> int:
        """Take no new runs; wait up to ``grace`` s for those in flight, then cancel the rest.

        Returns how many runs had to be cancelled.
        """
        self.draining = True
        self.publish({"type": "draining", "grace": grace})
        pending = [r.done.wait() for r in self.runs.values() if not r.done.is_set()]
        if pending:
            tasks = [asyncio.ensure_future(p) for p in pending]
            _, late = await asyncio.wait(tasks, timeout=grace)
            for t in late:
                t.cancel()
        cancelled = 0
        for record in self.runs.values():
            why = f"the server stopped and the run did not finish within the {grace:g} s grace"
            if not record.done.is_set() and self.cancel(record.handle.run_id, why):
                record.stopped_server = True
                cancelled += 1
        return cancelled

    def close_feed(self) -> None:
        """End every ``/events`` stream (so a stopping server is not held open by them), and
        any that starts after this at once."""
        self._feed_closed = True
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._subscribers.clear()

    async def aclose(self) -> None:
        self.close_feed()
        for task in (self._watcher, self._warming, *self._waiters):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._watcher, self._warming, *self._waiters) if t is not None),
            return_exceptions=True,
        )

    # -- runs --------------------------------------------------------------------------------

    def resolve(self, name: str) -> str:
        """The workflow name for ``name`` (its name or its Python name); ``KeyError`` if none."""
        if name in self.targets:
            return name
        if name in self.aliases:
            return self.aliases[name]
        raise KeyError(name)

    def queue_depth(self, workflow: str) -> int:
        """Runs of ``workflow`` admitted beyond what its first pool can run at once.

        Counted from the service's own books (runs in flight) and the pool's ``max_size``, so
        it covers runs waiting for an instance, for a step's agent, or for the pool to start.
        """
        first = self.first_pool.get(workflow)
        capacity = 0
        if first is not None:
            with contextlib.suppress(KeyError):
                capacity = self.rt.pool(first).snapshot().max_size
        return max(0, self.in_flight[workflow] - capacity)

    async def submit(self, workflow: str, payload: Any) -> RunRecord:
        """Admit and start one run of ``workflow`` (a name :meth:`resolve` returned)."""
        if self.draining:
            raise Rejected("the server is shutting down and takes no new runs", 503, 5.0)
        limit = self.max_queue[workflow]
        queued = self.queue_depth(workflow)
        if queued >= limit:
            self.metrics.runs_total.labels(workflow, "rejected").inc()
            raise Rejected(
                f"workflow {workflow!r} has {queued} runs waiting (max_queue={limit}); retry later",
                429,
                self._retry_after(workflow, queued),
            )
        handle = await self.rt.submit(self.targets[workflow], payload)
        record = RunRecord(handle, asyncio.get_running_loop().time())
        self.runs[handle.run_id] = record
        self.workflow_pools.setdefault(workflow, set()).update(handle.pools)
        steps = handle.progress.steps
        if workflow not in self.first_pool and steps and steps[0].pool is not None:
            self.first_pool[workflow] = steps[0].pool
        self.in_flight[workflow] += 1
        task = asyncio.get_running_loop().create_task(self._settle(record))
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)
        self.publish({"type": "run", **self.run_summary(record)})
        return record

    def _retry_after(self, workflow: str, queued: int) -> float:
        """Seconds until the queue has likely drained: queued runs over recent throughput."""
        pools = self.workflow_pools.get(workflow, set())
        throughput = sum(p.snapshot().throughput for p in self.rt.pools if p.name in pools)
        if throughput <= 0:
            return 1.0
        return float(min(60, max(1, math.ceil(queued / throughput))))

    async def _settle(self, record: RunRecord) -> None:
        handle = record.handle
        try:
            record.result = await handle.result()
        except BaseException as exc:  # the run's error is data here, not ours
            record.error = exc
        finally:
            record.done.set()
            self.in_flight[handle.workflow] -= 1
            self.metrics.observe_run(handle, record.submitted)
            record.size = _size_of(record.result)
            self.kept_bytes += record.size
            self.finished.append(handle.run_id)
            while len(self.finished) > _KEEP_RUNS or (
                self.kept_bytes > _KEEP_BYTES and len(self.finished) > 1
            ):
                old = self.finished.popleft()
                gone = self.runs.pop(old, None)
                self.kept_bytes -= 0 if gone is None else gone.size
                self.rt.forget(old)
            self.publish({"type": "run", **self.run_summary(record)})

    def cancel(self, run_id: str, why: str) -> bool:
        """Cancel run ``run_id`` (``why`` becomes its error's message); False if it had ended."""
        record = self.runs[run_id]
        if record.handle.done or record.cancelled_by is not None:
            return False
        record.cancelled_by = why
        return record.handle.cancel()

    def run_summary(self, record: RunRecord) -> dict[str, Any]:
        h = record.handle
        return {
            "id": h.run_id,
            "workflow": h.workflow,
            "status": record.status,
            "queued": record.queued,
            "wall_s": h.wall_s,
            "steps": [
                {
                    "name": s.name,
                    "status": s.status,
                    "pool": s.pool,
                    "done": s.done,
                    "total": s.total,
                    "seconds": s.seconds,
                }
                for s in h.progress.steps
            ],
        }

    def recent_runs(self) -> list[dict[str, Any]]:
        records = list(self.runs.values())[-_RECENT_RUNS:]
        return [self.run_summary(r) for r in reversed(records)]

    # -- pools -------------------------------------------------------------------------------

    def pool_view(self, pool: AgentPool, history: bool = False) -> dict[str, Any]:
        m = pool.snapshot()
        view: dict[str, Any] = {
            "name": pool.name,
            "target": pool.target_size,
            "metrics": {k: getattr(m, k) for k in m.__dataclass_fields__},
            "agents": [agent_view(a, m.time) for a in pool.agents],
            "events": [event_view(e, m.time) for e in list(pool.events)[-50:]],
        }
        if history:
            view["history"] = list(self.history.get(pool.name, ()))
        return view

    # -- the feed ----------------------------------------------------------------------------

    def publish(self, message: Mapping[str, Any]) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(dict(message))
            except asyncio.QueueFull:  # a client that cannot keep up is cut off
                self._subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any] | None]]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(_SUBSCRIBER_BACKLOG)
        if self._feed_closed:
            queue.put_nowait(None)
        else:
            self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    async def _watch(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(self.tick_s)

    def tick(self) -> None:
        """Publish what changed since the last tick: a sample per pool, new events, progress."""
        for pool in list(self.rt.pools):
            m = pool.snapshot()
            sample = {
                "t": m.time,
                "size": m.size,
                "target": pool.target_size,
                "busy": m.busy,
                "idle": m.idle,
                "starting": m.starting,
                "queue": m.queue_depth,
                "wait_p50": m.wait_p50,
                "wait_p99": m.wait_p99,
                "exec_avg": m.avg_execution_time,
                "throughput": m.throughput,
                "nodes": m.nodes,
            }
            self.history.setdefault(pool.name, deque(maxlen=_HISTORY)).append(sample)
            self.publish({"type": "sample", "pool": pool.name, **sample})
            for event in self._tally.new_events(pool):
                self.publish({"type": "scaling", "pool": pool.name, **event_view(event, m.time)})
        for record in list(self.runs.values())[-_RECENT_RUNS:]:
            if record.done.is_set():
                continue
            h = record.handle
            key = (h.status, *((s.status, s.done) for s in h.progress.steps))
            if self._seen_progress.get(h.run_id) != key:
                self._seen_progress[h.run_id] = key
                self.publish({"type": "run", **self.run_summary(record)})
        for run_id in [
            k for k in self._seen_progress if k not in self.runs or self.runs[k].done.is_set()
        ]:
            del self._seen_progress[run_id]


def _size_of(result: Any) -> int:
    """About how many bytes ``result`` holds: its pickle's length (it crossed from an agent
    pickled), or the shallow size of one that does not pickle."""
    if result is None:
        return 0
    try:
        return len(pickle.dumps(result, pickle.HIGHEST_PROTOCOL))
    except Exception:
        return sys.getsizeof(result)


def agent_view(agent: PooledAgent, now: float) -> dict[str, Any]:
    """One agent as ``/pools`` shows it: where it runs (``node``: None on a backend without
    nodes), its state and how much it has been used."""
    return {
        "agent_id": agent.agent_id,
        "state": agent.state.value,
        "node": agent.node,
        "uses": agent.usage_count,
        "age_s": now - agent.created_at,
    }


def event_view(event: ScalingEvent, now: float) -> dict[str, Any]:
    return {
        "time": event.time,
        "age_s": now - event.time,
        "kind": event.kind,
        "agent_id": event.agent_id,
        "from_size": event.from_size,
        "to_size": event.to_size,
        "reason": event.reason,
    }
