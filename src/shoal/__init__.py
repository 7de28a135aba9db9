"""shoal: warm, reusable agents in auto-scaling pools for async Python workflows."""

from shoal.backends import AgentHandle, AgentSpec, Backend, FakeBackend, ProcessBackend
from shoal.clock import Clock, LoopClock, VirtualTimeLoop, run_virtual
from shoal.config import PoolConfig
from shoal.errors import (
    AgentError,
    AgentLost,
    AgentStartError,
    BackendError,
    CallTimeout,
    ConfigError,
    PoolAtCapacity,
    PoolClosed,
    PoolError,
    PoolTimeout,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    ShoalError,
)
from shoal.pool import AgentPool, AgentState, PooledAgent, PoolEvent, PoolManager, PoolMetrics

__version__ = "0.1.0"

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
    "FakeBackend",
    "LoopClock",
    "PoolAtCapacity",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolEvent",
    "PoolManager",
    "PoolMetrics",
    "PoolTimeout",
    "PooledAgent",
    "ProcessBackend",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "ShoalError",
    "VirtualTimeLoop",
    "__version__",
    "run_virtual",
]
