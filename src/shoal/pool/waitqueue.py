"""The queue of callers waiting for an agent: first come, first served.

Like trio's ``ParkingLot``, it is an ordered mapping, so a caller who gives up (a timeout, a
cancel) leaves in O(1) and is never handed an agent afterwards; no tombstones to sweep.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any


class Waiter:
    """One waiting caller. ``token`` is the shell's (its future); the queue never reads it.
    ``prefetchable``: its call may be queued on an agent still running another one (the pool's
    own calls without a timeout or acquire_timeout: nothing else depends on when it starts).
    ``owned``: the pool sends the lease's call itself (run/call/map, not get_agent), so a call
    may be prefetched behind it."""

    __slots__ = ("enqueued_at", "owned", "prefetchable", "token")

    def __init__(
        self,
        enqueued_at: float,
        token: Any = None,
        prefetchable: bool = False,
        owned: bool = False,
    ) -> None:
        self.enqueued_at = enqueued_at
        self.token = token
        self.prefetchable = prefetchable
        self.owned = owned or prefetchable


class WaitQueue:
    """Waiters in arrival order. ``waiting`` is the ordered mapping itself, for the pool's hot
    paths to test for emptiness without a method call; only the methods change it."""

    __slots__ = ("_q", "waiting")

    def __init__(self) -> None:
        self._q: OrderedDict[Waiter, None] = OrderedDict()
        self.waiting = self._q

    def __len__(self) -> int:
        return len(self._q)

    def __bool__(self) -> bool:
        return bool(self._q)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(self._q)

    def __contains__(self, waiter: object) -> bool:
        return waiter in self._q

    def push(self, waiter: Waiter) -> None:
        self._q[waiter] = None

    def push_front(self, waiter: Waiter) -> None:
        """Queue ``waiter`` ahead of everyone (a call re-queued after a preemption)."""
        self._q[waiter] = None
        self._q.move_to_end(waiter, last=False)

    def push_aged(self, waiter: Waiter) -> None:
        """Queue ``waiter`` by when it first waited: ahead of every later arrival (a call
        taken back from the agent it was queued on keeps its place)."""
        q = self._q
        q[waiter] = None
        later = [w for w in q if w is not waiter and w.enqueued_at > waiter.enqueued_at]
        for w in later:
            q.move_to_end(w)

    def pop(self) -> Waiter | None:
        """The oldest waiter, removed; None if nobody waits."""
        if not self._q:
            return None
        return self._q.popitem(last=False)[0]

    def remove(self, waiter: Waiter) -> bool:
        """Take ``waiter`` out (it gave up); False if it was no longer waiting."""
        return self._q.pop(waiter, False) is None

    def oldest(self) -> Waiter | None:
        return next(iter(self._q), None)

    def drain(self) -> list[Waiter]:
        """Every waiter, oldest first, removed."""
        waiters = list(self._q)
        self._q.clear()
        return waiters
