"""Work shipped to the benchmark's workers.

These live in an importable module (not ``__main__``) so that every contender sends them by
reference — the same few bytes for shoal, ``ProcessPoolExecutor`` and loky — and each worker
imports this module once.
"""

from __future__ import annotations

import time


def noop() -> None:
    """Do nothing: a call's cost is then all overhead (dispatch, pickling, pipes, wake-ups)."""


def busy(seconds: float) -> float:
    """Spin in pure Python until ``seconds`` of wall time have passed in this worker.

    Returns the time actually spent, so callers can check that the work was what they asked for.
    """
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        now = time.perf_counter()
    return now - start


def import_numpy() -> None:
    """An agent's setup (or an executor's initializer) with a realistic warm-up cost."""
    import numpy  # noqa: F401


def square(x: int) -> int:
    """A tiny item of work for the map benchmark."""
    return x * x
