"""Leak detection: a caller that has held an agent past ``leak_threshold`` is reported once,
with the stack where it took the agent."""

from __future__ import annotations

import traceback
from collections.abc import Iterable

from shoal.pool.agent import Lease


def where_taken() -> str:
    """The caller's stack outside asyncio's and shoal's own frames (recorded at checkout)."""
    frames = [
        f
        for f in traceback.extract_stack()[:-2]
        if "/asyncio/" not in f.filename and "/shoal/pool/" not in f.filename
    ]
    return "".join(traceback.format_list(frames[-8:]))


def overdue(held: Iterable[Lease], threshold: float, now: float) -> tuple[list[Lease], float]:
    """The leases held past ``threshold`` and not yet reported, and the next time one will be."""
    found = []
    deadline = float("inf")
    for lease in held:
        if lease.leak_reported:
            continue
        due = lease.acquired_at + threshold
        if due <= now:
            found.append(lease)
        else:
            deadline = min(deadline, due)
    return found, deadline


def message(pool: str, lease: Lease, threshold: float, now: float) -> str:
    return (
        f"pool {pool!r}: agent {lease.agent_id} has been held for {now - lease.acquired_at:.1f} s "
        f"(leak_threshold={threshold} s); it was taken at:\n{lease.stack or '(unknown)'}"
    )
