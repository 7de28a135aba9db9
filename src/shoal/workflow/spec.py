"""``@workflow``, ``@step`` and ``@mapreduce``: decorators that turn code into immutable specs.

Everything that can be checked without running is checked here, at decoration time: a step that
is not ``async``, ``max_parallel < 1``, unknown ``pool_config`` or ``scaling_policy`` keys, a
workflow without steps. The error names the workflow, the step and the key.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from shoal._invoke import StepInvoker, WorkflowSetup
from shoal.errors import ConfigError, WorkflowError

if TYPE_CHECKING:
    from shoal.scaling.config import ScalingPolicyConfig

ExecutionMode = Literal["pooled", "dedicated", "inline"]
_MODES = ("pooled", "dedicated", "inline")
_STEP_ATTR = "__shoal_step__"
_WORKFLOW_ATTR = "__shoal_workflow__"
DEFAULT_RETRIES = 1

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class PoolRequest:
    """The pool a step (or a workflow's instances) runs on, and how it is sized."""

    name: str
    options: Mapping[str, Any]  # PoolConfig keys, name excluded
    scaling: ScalingPolicyConfig | None = None
    shared: bool = False  # named with pool="..." and possibly used by other steps


OnError = Literal["raise", "collect"]
_ON_ERROR = ("raise", "collect")
OnPreempt = Literal["requeue", "fail"]
_ON_PREEMPT = ("requeue", "fail")
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class ErrorPolicy:
    """What a step or mapreduce does when a call fails.

    ``retries`` is how many times a call is tried again: always after its agent was lost or
    timed out, and after the step's own exception when it is one of ``retry_on`` (like Celery's
    ``autoretry_for``), waiting ``retry_backoff`` seconds, doubled at each retry (at most 60 s).
    ``on_error="collect"`` (parallel steps and mapreduce) keeps going past failed items: their
    exceptions stand in the results in place of the items' results, as with
    ``asyncio.gather(return_exceptions=True)``. ``on_preempt="fail"`` fails a call cancelled by
    a spot preemption (:class:`~shoal.errors.Preempted`) instead of re-queueing it at the head
    of its pool's queue (``"requeue"``, the default; the re-run does not count as a retry).
    """

    retries: int = 1
    retry_on: tuple[type[BaseException], ...] = ()
    retry_backoff: float = 0.0
    on_error: OnError = "raise"
    on_preempt: OnPreempt = "requeue"

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt + 1``."""
        if not self.retry_backoff:
            return 0.0
        return float(min(self.retry_backoff * 2 ** (attempt - 1), MAX_BACKOFF_S))


@dataclass(frozen=True)
class StepSpec:
    """One step, as ``@step`` declared it and ``@workflow`` completed it."""

    name: str
    method: str
    parallel: bool
    execution_mode: ExecutionMode
    max_parallel: int | None
    retries: int
    timeout: float | None
    takes_input: bool
    pool_config: Mapping[str, Any] | None
    pool_size: int | None
    scaling_policy: ScalingPolicyConfig | None
    pool: str | None
    invoker: StepInvoker | None = None
    errors: ErrorPolicy = ErrorPolicy()

    @property
    def own_pool(self) -> bool:
        return bool(self.pool_config or self.pool_size or self.scaling_policy)


@dataclass(frozen=True)
class WorkflowSpec:
    """A workflow class with its steps in definition order."""

    name: str
    cls: type
    steps: tuple[StepSpec, ...]
    scaling_policy: ScalingPolicyConfig | None
    pool_config: Mapping[str, Any] | None
    image: str | None

    @property
    def instance_pool(self) -> bool:
        """True for the seed's sequential, auto-scaled case: every run holds one instance."""
        return self.scaling_policy is not None

    def setup(self) -> WorkflowSetup:
        return WorkflowSetup(self.cls)

    def pool_for(self, step: StepSpec) -> PoolRequest:
        """Which pool ``step`` runs on: a named shared pool, its own, or the workflow's."""
        image = {"image": self.image} if self.image else {}
        if step.pool is not None:
            options = {**image, **_step_pool_options(self.name, step)}
            return PoolRequest(step.pool, options, step.scaling_policy, shared=True)
        if step.own_pool:
            options = {**image, **_step_pool_options(self.name, step)}
            return PoolRequest(f"{self.name}.{step.name}", options, step.scaling_policy)
        return self.workflow_pool()

    def workflow_pool(self) -> PoolRequest:
        options: dict[str, Any] = {"image": self.image} if self.image else {}
        options.update(self.pool_config or {})
        options.update(_scaled_options(self.scaling_policy))
        return PoolRequest(self.name, options, self.scaling_policy)


@dataclass(frozen=True)
class MapReduceSpec:
    """A standalone fan-out: ``fn(ctx, item)`` over an iterable, then ``reduce(results)``."""

    name: str
    fn: Callable[..., Any]
    pool_size: int | None
    max_parallel: int | None
    reduce: Callable[[list[Any]], Any] | None
    pool_config: Mapping[str, Any] | None
    retries: int
    timeout: float | None
    errors: ErrorPolicy = ErrorPolicy()

    def pool(self) -> PoolRequest:
        options: dict[str, Any] = dict(self.pool_config or {})
        if self.pool_size is not None:
            options.setdefault("min_size", self.pool_size)
            options.setdefault("max_size", self.pool_size)
        return PoolRequest(self.name, options)


def step(
    fn: F | None = None,
    *,
    name: str | None = None,
    parallel: bool = False,
    execution_mode: ExecutionMode = "pooled",
    pool_config: Mapping[str, Any] | None = None,
    pool_size: int | None = None,
    max_parallel: int | None = None,
    scaling_policy: Mapping[str, Any] | None = None,
    pool: str | None = None,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    retry_backoff: float = 0.0,
    on_error: OnError = "raise",
    max_concurrency: int | None = None,
    on_preempt: OnPreempt = "requeue",
) -> Any:
    """Mark an ``async def`` method of a ``@workflow`` class as a step.

    ``parallel=True`` runs it once per item of the previous step's result, at most
    ``max_parallel`` at a time. ``execution_mode`` is ``"pooled"`` (a warm agent),
    ``"dedicated"`` (a fresh agent per call, stopped after it) or ``"inline"`` (in this process).
    ``max_concurrency`` (the step's own pool) is how many calls one agent runs at once — for
    I/O-bound steps, so 100 LLM calls in flight need not take 100 agents.
    ``retries`` is how many times a call whose agent was lost or timed out is tried again on
    another agent; the step's own exceptions are retried only when listed in ``retry_on``
    (after ``retry_backoff`` seconds, doubling). ``on_error="collect"`` lets a parallel step
    finish its other items and put each failed item's exception in its place;
    ``on_preempt="fail"`` fails a call its agent's spot preemption cut short rather than run it
    again (see :class:`ErrorPolicy`).
    """

    def mark(f: F) -> F:
        label = f"step {name or getattr(f, '__name__', f)!r}"
        if not inspect.iscoroutinefunction(f):
            raise WorkflowError(
                f"{label} must be defined with 'async def' (got a {type(f).__name__} that is not "
                "a coroutine function)"
            )
        params = list(inspect.signature(f).parameters.values())
        if len(params) < 2 or not _is_ctx(params[1]):
            names = ", ".join(p.name for p in params)
            where = f"; the Context would arrive as {params[1].name!r}" if len(params) > 1 else ""
            raise WorkflowError(
                f"{label} must take (self, ctx[, input]); it takes ({names}){where}. Add a "
                "'ctx: Context' parameter after self"
            )
        positional = [p for p in params[2:] if p.default is inspect.Parameter.empty]
        if len(positional) > 1:
            raise WorkflowError(
                f"{label} takes one input after ctx (the previous step's result or one item); "
                f"it declares {len(positional)} required arguments"
            )
        _check_step_options(
            label, parallel, execution_mode, pool_size, max_parallel, retries, timeout
        )
        _check_sizes(label, pool_size, pool_config, scaling_policy)
        spec = StepSpec(
            name=name or f.__name__,
            method=f.__name__,
            parallel=parallel,
            execution_mode=execution_mode,
            max_parallel=max_parallel,
            retries=retries,
            timeout=timeout,
            takes_input=len(params) > 2,
            pool_config=_check_pool_config(
                f"{label} pool_config", _with_concurrency(label, pool_config, max_concurrency)
            ),
            pool_size=pool_size,
            scaling_policy=_scaling(f"{label} scaling_policy", scaling_policy, pool_config),
            pool=pool,
            errors=_errors(label, parallel, retries, retry_on, retry_backoff, on_error, on_preempt),
        )
        if parallel and not spec.takes_input:
            raise WorkflowError(f"{label} is parallel, so it must take (self, ctx, item)")
        setattr(f, _STEP_ATTR, spec)
        return f

    return mark(fn) if fn is not None else mark


def workflow(
    cls: C | None = None,
    *,
    name: str | None = None,
    scaling_policy: Mapping[str, Any] | None = None,
    pool_config: Mapping[str, Any] | None = None,
    image: str | None = None,
) -> Any:
    """Make a class a workflow: its ``@step`` methods run in the order they are defined.

    An optional ``setup(self)`` method runs once per agent as it warms up; state it builds is
    reused by every step that agent runs. With a ``scaling_policy`` every run holds one agent
    (an instance) for its whole duration, and runs queue for instances.
    """

    def build(c: C) -> C:
        wf_name = name or c.__name__
        label = f"workflow {wf_name!r}"
        if not isinstance(c, type):
            raise WorkflowError(f"@workflow decorates a class, not {type(c).__name__}")
        steps = []
        for attr, value in c.__dict__.items():
            spec = getattr(value, _STEP_ATTR, None)
            if isinstance(spec, StepSpec):
                steps.append(replace(spec, invoker=StepInvoker(c, attr)))
        if not steps:
            raise WorkflowError(f"{label} has no steps: mark its async methods with @step")
        names = [s.name for s in steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise WorkflowError(f"{label} has more than one step named {', '.join(dupes)}")
        setup = c.__dict__.get("setup")
        if setup is not None and inspect.iscoroutinefunction(setup):
            raise WorkflowError(f"{label}: setup(self) must be a plain method, not async")
        _check_sizes(label, None, pool_config, scaling_policy)
        policy = _scaling(f"{label} scaling_policy", scaling_policy, pool_config)
        spec = WorkflowSpec(
            name=wf_name,
            cls=c,
            steps=tuple(steps),
            scaling_policy=policy,
            pool_config=_check_pool_config(f"{label} pool_config", pool_config),
            image=image,
        )
        setattr(c, _WORKFLOW_ATTR, spec)
        return c

    return build(cls) if cls is not None else build


def mapreduce(
    fn: F | None = None,
    *,
    name: str | None = None,
    pool_size: int | None = None,
    max_parallel: int | None = None,
    reduce: Callable[[list[Any]], Any] | None = None,
    pool_config: Mapping[str, Any] | None = None,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    retry_backoff: float = 0.0,
    on_error: OnError = "raise",
    max_concurrency: int | None = None,
    on_preempt: OnPreempt = "requeue",
) -> Any:
    """Make ``async def fn(ctx, item)`` a standalone fan-out over an iterable.

    Running it (``await rt.run(fn, items)``) maps ``fn`` over the items on a pool of
    ``pool_size`` agents, at most ``max_parallel`` at a time, and returns ``reduce(results)``
    (the list of results, in input order, when there is no ``reduce``). ``retries``,
    ``retry_on``, ``retry_backoff``, ``on_error``, ``max_concurrency`` and ``on_preempt`` are as
    for :func:`step`.
    """

    def build(f: F) -> F:
        label = f"mapreduce {name or getattr(f, '__name__', f)!r}"
        if not inspect.iscoroutinefunction(f):
            raise WorkflowError(f"{label} must be defined with 'async def'")
        params = list(inspect.signature(f).parameters.values())
        if len(params) < 2 or not _is_ctx(params[0]):
            raise WorkflowError(
                f"{label} must take (ctx, item); it takes ({', '.join(p.name for p in params)})"
            )
        _check_step_options(label, True, "pooled", pool_size, max_parallel, retries, timeout)
        _check_sizes(label, pool_size, pool_config, None)
        if reduce is not None and not callable(reduce):
            raise WorkflowError(f"{label}: reduce must be callable, got {reduce!r}")
        spec = MapReduceSpec(
            name=name or f.__name__,
            fn=f,
            pool_size=pool_size,
            max_parallel=max_parallel,
            reduce=reduce,
            pool_config=_check_pool_config(
                f"{label} pool_config", _with_concurrency(label, pool_config, max_concurrency)
            ),
            retries=retries,
            timeout=timeout,
            errors=_errors(label, True, retries, retry_on, retry_backoff, on_error, on_preempt),
        )
        setattr(f, _WORKFLOW_ATTR, spec)
        return f

    return build(fn) if fn is not None else build


def _with_concurrency(
    label: str, pool_config: Mapping[str, Any] | None, max_concurrency: int | None
) -> Mapping[str, Any] | None:
    """``pool_config`` with ``max_concurrency`` added (it is a pool option)."""
    if max_concurrency is None:
        return pool_config
    if not _is_int(max_concurrency) or max_concurrency < 1:
        raise WorkflowError(f"{label}: max_concurrency={max_concurrency!r} must be an integer >= 1")
    given = (pool_config or {}).get("max_concurrency") if isinstance(pool_config, Mapping) else None
    if given is not None and given != max_concurrency:
        raise WorkflowError(
            f"{label}: max_concurrency={max_concurrency} and pool_config max_concurrency={given} "
            "disagree; give it once"
        )
    return {**(pool_config or {}), "max_concurrency": max_concurrency}


def _errors(
    label: str,
    parallel: bool,
    retries: int,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    retry_backoff: float,
    on_error: str,
    on_preempt: str = "requeue",
) -> ErrorPolicy:
    kinds = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    for kind in kinds:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise WorkflowError(
                f"{label}: retry_on={retry_on!r} must be an exception class or a tuple of them "
                "(subclasses of Exception)"
            )
    if not isinstance(retry_backoff, int | float) or retry_backoff < 0:
        raise WorkflowError(
            f"{label}: retry_backoff={retry_backoff!r} must be a number of seconds >= 0"
        )
    if on_error not in _ON_ERROR:
        raise WorkflowError(f"{label}: on_error={on_error!r}; allowed: {', '.join(_ON_ERROR)}")
    if on_error == "collect" and not parallel:
        raise WorkflowError(
            f"{label}: on_error='collect' applies to parallel steps and mapreduce only; a "
            "single call's failure is the run's"
        )
    if on_preempt not in _ON_PREEMPT:
        raise WorkflowError(
            f"{label}: on_preempt={on_preempt!r}; allowed: {', '.join(_ON_PREEMPT)}"
        )
    return ErrorPolicy(
        retries,
        kinds,
        float(retry_backoff),
        on_error,  # type: ignore[arg-type]
        on_preempt,  # type: ignore[arg-type]
    )


def spec_of(target: Any) -> WorkflowSpec | MapReduceSpec:
    """The spec behind a decorated workflow class or mapreduce function."""
    spec = getattr(target, _WORKFLOW_ATTR, None)
    if isinstance(spec, WorkflowSpec | MapReduceSpec):
        return spec
    raise WorkflowError(
        f"{getattr(target, '__qualname__', target)!r} is not a workflow or mapreduce: decorate "
        "a class with @workflow or an async function with @mapreduce"
    )


def _check_step_options(
    label: str,
    parallel: bool,
    execution_mode: str,
    pool_size: int | None,
    max_parallel: int | None,
    retries: int,
    timeout: float | None,
) -> None:
    if execution_mode not in _MODES:
        raise WorkflowError(
            f"{label}: execution_mode={execution_mode!r}; allowed: {', '.join(_MODES)}"
        )
    if max_parallel is not None and (not _is_int(max_parallel) or max_parallel < 1):
        raise WorkflowError(f"{label}: max_parallel={max_parallel!r} must be an integer >= 1")
    if max_parallel is not None and not parallel:
        raise WorkflowError(f"{label}: max_parallel only applies to parallel=True steps")
    if pool_size is not None and (not _is_int(pool_size) or pool_size < 1):
        raise WorkflowError(f"{label}: pool_size={pool_size!r} must be an integer >= 1")
    if not _is_int(retries) or retries < 0:
        raise WorkflowError(f"{label}: retries={retries!r} must be an integer >= 0")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise WorkflowError(f"{label}: timeout={timeout!r} must be a number of seconds > 0")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_pool_config(
    where: str, pool_config: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    if pool_config is None:
        return None
    if not isinstance(pool_config, Mapping):
        raise WorkflowError(f"{where}: expected a mapping, got {type(pool_config).__name__}")
    if "name" in pool_config:
        raise WorkflowError(f"{where}: 'name' is not a pool_config key; use pool='name'")
    from shoal.config import PoolConfig  # validation needs pydantic: imported on first use

    try:
        PoolConfig.build(where, {"name": "check", **pool_config})
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None
    return dict(pool_config)


def _scaling(
    where: str, policy: Mapping[str, Any] | None, pool_config: Mapping[str, Any] | None
) -> ScalingPolicyConfig | None:
    if policy is None:
        return None
    from shoal.scaling.config import parse_scaling_policy
    from shoal.scaling.guards import build_policy

    price = (pool_config or {}).get("price_per_hour") if isinstance(pool_config, Mapping) else None
    try:
        config = parse_scaling_policy(where, policy)
        build_policy(config, price_per_hour=price)  # e.g. a cost_threshold below min_instances
    except ConfigError as exc:
        message = str(exc).removeprefix("scaling_policy: ")
        raise WorkflowError(message if where in message else f"{where}: {message}") from None
    return config


def _is_ctx(param: inspect.Parameter) -> bool:
    """Whether ``param`` is where the Context goes: named ``ctx`` or annotated ``Context``."""
    from shoal.context import Context

    note = param.annotation
    if note is Context or (isinstance(note, str) and note.rsplit(".", 1)[-1] == "Context"):
        return True
    return param.name in ("ctx", "context", "_ctx") and note is inspect.Parameter.empty


def _check_sizes(
    label: str,
    pool_size: int | None,
    pool_config: Mapping[str, Any] | None,
    scaling_policy: Mapping[str, Any] | None,
) -> None:
    """Refuse two sizes for one pool: one of them would be silently ignored."""
    config = dict(pool_config) if isinstance(pool_config, Mapping) else {}
    sized = {k: config[k] for k in ("min_size", "max_size") if k in config}
    if pool_size is not None and scaling_policy is not None:
        raise WorkflowError(
            f"{label}: pool_size={pool_size} fixes the pool's size, so its scaling_policy "
            "would have nothing to scale; give one of them (the scaling_policy's min and max "
            "bound the pool)"
        )
    if pool_size is not None:
        clash = {k: v for k, v in sized.items() if v != pool_size}
        if clash:
            shown = ", ".join(f"{k}={v}" for k, v in clash.items())
            raise WorkflowError(
                f"{label}: pool_size={pool_size} sets min_size and max_size, but pool_config "
                f"gives {shown}; give the size once"
            )
    if scaling_policy is not None and sized:
        shown = ", ".join(f"{k}={v}" for k, v in sized.items())
        raise WorkflowError(
            f"{label}: pool_config gives {shown} and a scaling_policy; the scaling_policy's "
            "min_instances and max_instances bound the pool, so drop them from pool_config"
        )


def _step_pool_options(workflow: str, step: StepSpec) -> dict[str, Any]:
    options: dict[str, Any] = dict(step.pool_config or {})
    if step.pool_size is not None:
        options.setdefault("min_size", step.pool_size)
        options.setdefault("max_size", step.pool_size)
    options.update(_scaled_options(step.scaling_policy))
    return options


def _scaled_options(policy: ScalingPolicyConfig | None) -> dict[str, Any]:
    """The pool options a scaling policy sets: its bounds; a fixed pool also starts no agents on
    demand, so it stays the size it was given."""
    if policy is None:
        return {}
    options: dict[str, Any] = {
        "min_size": policy.min_instances,
        "max_size": policy.max_instances,
    }
    if policy.policy_name == "fixed":
        options["on_demand"] = False
    return options
