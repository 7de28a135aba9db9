"""Pools of warm agents: the queue of waiting calls, agent states, assignment, resize, metrics.

The module map: ``state`` (the pure bookkeeping: agents, leases, target, actions), ``waitqueue``
(FIFO of waiting callers), ``lifecycle`` (why an agent retires), ``breaker`` (crash loops),
``leaks`` (agents held too long), ``agent`` (``PooledAgent``, ``Lease``), ``placement`` (where
agents live, preemption notices: the contract), ``placing`` (the pure choice of placement,
cost and preemption bookkeeping), ``pool`` (the async shell that performs the state's
actions), ``metrics`` and ``events`` (what it shows).

This module is also callable: ``with shoal.pool(max_size=4) as p: p.map(fn, xs)`` is the
synchronous pool of :mod:`shoal.sync`, for scripts.
"""

import sys
import types
from typing import Any

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


class _CallablePackage(types.ModuleType):
    def __call__(self, name: str = "pool", **options: Any) -> Any:
        """``shoal.pool(...)``: a :class:`~shoal.sync.SyncPool` for synchronous code."""
        from shoal.sync import SyncPool

        return SyncPool(name, **options)


sys.modules[__name__].__class__ = _CallablePackage
