"""Pools of warm agents: the queue of waiting calls, agent states, assignment, resize, metrics."""

from shoal.pool.agent import AgentState, Lease, PooledAgent
from shoal.pool.events import ScalingEvent
from shoal.pool.manager import PoolManager
from shoal.pool.metrics import PoolMetrics
from shoal.pool.pool import AgentPool

__all__ = [
    "AgentPool",
    "AgentState",
    "Lease",
    "PoolManager",
    "PoolMetrics",
    "PooledAgent",
    "ScalingEvent",
]
