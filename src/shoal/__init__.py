"""shoal: warm, reusable agents in auto-scaling pools for async Python workflows.

Names are imported on first use, so ``import shoal`` is cheap — it matters inside agents, which
import a little of shoal for every workflow step they run.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from shoal.backends import AgentHandle, AgentSpec, Backend, FakeBackend, ProcessBackend
    from shoal.clock import Clock, LoopClock, VirtualTimeLoop, run_virtual
    from shoal.config import PoolConfig
    from shoal.context import Context
    from shoal.errors import (
        AgentError,
        AgentLost,
        AgentStartError,
        BackendError,
        CallTimeout,
        ConfigError,
        PoolAtCapacity,
        PoolBroken,
        PoolClosed,
        PoolError,
        PoolTimeout,
        Preempted,
        RemoteError,
        RemoteTraceback,
        RunStopped,
        SerializationError,
        ShoalError,
        StepFailed,
        WorkflowError,
    )
    from shoal.pool import (
        AgentPool,
        AgentState,
        Lease,
        PooledAgent,
        PoolManager,
        PoolMetrics,
        ScalingEvent,
    )
    from shoal.pool.placement import Placement, PreemptionNotice, PreemptionSource
    from shoal.runtime import RunHandle, Runtime, run
    from shoal.sync import SyncPool

# Bound eagerly, and cheaply (the decorators import only the standard library until they are
# used): the subpackage shoal.workflow would otherwise shadow the decorator of the same name.
from shoal.workflow import mapreduce, step, workflow

__version__ = "0.1.0"

_WHERE = {
    "shoal.backends": "AgentHandle AgentSpec Backend FakeBackend ProcessBackend",
    "shoal.clock": "Clock LoopClock VirtualTimeLoop run_virtual",
    "shoal.config": "PoolConfig",
    "shoal.context": "Context",
    "shoal.errors": (
        "AgentError AgentLost AgentStartError BackendError CallTimeout ConfigError PoolAtCapacity "
        "PoolBroken PoolClosed PoolError PoolTimeout Preempted RemoteError RemoteTraceback "
        "RunStopped SerializationError ShoalError StepFailed WorkflowError"
    ),
    "shoal.pool": "AgentPool AgentState Lease PooledAgent ScalingEvent PoolManager PoolMetrics",
    "shoal.pool.placement": "Placement PreemptionNotice PreemptionSource",
    "shoal.runtime": "RunHandle Runtime run",
    "shoal.sync": "SyncPool",
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names.split()}

__all__ = [
    "AgentError",
    "AgentHandle",
    "AgentLost",
    "AgentPool",
    "AgentSpec",
    "AgentStartError",
    "AgentState",
    "Backend",
    "BackendError",
    "CallTimeout",
    "Clock",
    "ConfigError",
    "Context",
    "FakeBackend",
    "Lease",
    "LoopClock",
    "Placement",
    "PoolAtCapacity",
    "PoolBroken",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolManager",
    "PoolMetrics",
    "PoolTimeout",
    "PooledAgent",
    "Preempted",
    "PreemptionNotice",
    "PreemptionSource",
    "ProcessBackend",
    "RemoteError",
    "RemoteTraceback",
    "RunHandle",
    "RunStopped",
    "Runtime",
    "ScalingEvent",
    "SerializationError",
    "ShoalError",
    "StepFailed",
    "SyncPool",
    "VirtualTimeLoop",
    "WorkflowError",
    "__version__",
    "mapreduce",
    "run",
    "run_virtual",
    "step",
    "workflow",
]


def __getattr__(name: str) -> _typing.Any:
    if name == "pool":  # the subpackage, callable: ``with shoal.pool(...) as p`` (shoal.sync)
        return _importlib.import_module("shoal.pool")
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
