"""The crash-loop breaker: when agents keep failing to start, stop making callers wait on them.

``crash_loop_starts`` failed starts within ``crash_loop_window`` seconds break the pool: callers
fail at once with :class:`~shoal.errors.PoolBroken`. Starts back off exponentially after each
failure (up to ``MAX_BACKOFF_S``), and one start per back-off keeps probing; the first start that
succeeds closes the breaker again. Memory is bounded: only the failures inside the window and the
last error are kept.
"""

from __future__ import annotations

from collections import deque

from shoal.errors import PoolBroken

MAX_BACKOFF_S = 5.0
_FIRST_BACKOFF_S = 0.1


class CrashLoopBreaker:
    __slots__ = ("_backoff", "_failures", "_window", "backoff_until", "broken", "last_error")

    def __init__(self, starts: int, window: float) -> None:
        self._failures: deque[float] = deque(maxlen=starts)
        self._window = window
        self._backoff = 0.0
        self.backoff_until = 0.0
        self.broken: PoolBroken | None = None
        self.last_error: BaseException | None = None

    def may_start(self, now: float) -> bool:
        """False while starts are backing off after a failure."""
        return now >= self.backoff_until

    def failed(self, err: BaseException, now: float, pool: str) -> bool:
        """Count a failed start; True if this one broke the pool."""
        self.last_error = err
        self._backoff = min(max(self._backoff * 2, _FIRST_BACKOFF_S), MAX_BACKOFF_S)
        self.backoff_until = now + self._backoff
        failures = self._failures
        failures.append(now)
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        if self.broken is not None or len(failures) < (failures.maxlen or 1):
            return False
        self.broken = PoolBroken(
            f"pool {pool!r} is broken: {len(failures)} agent starts failed within "
            f"{self._window:.0f} s (crash_loop_starts={failures.maxlen}); the last: {err}. "
            "It keeps retrying and recovers when a start succeeds."
        )
        self.broken.__cause__ = err
        return True

    def wait(self, now: float, seconds: float = MAX_BACKOFF_S) -> None:
        """Hold starts back for ``seconds`` without counting a failure (no room for one now)."""
        self.backoff_until = max(self.backoff_until, now + seconds)

    def succeeded(self) -> bool:
        """Count a successful start; True if it closed a broken pool's breaker."""
        self._backoff = 0.0
        self.backoff_until = 0.0
        self._failures.clear()
        self.last_error = None
        recovered = self.broken is not None
        self.broken = None
        return recovered
