"""Work for the pool demo: an agent setup that imports something heavy, and a step that uses it."""

from __future__ import annotations

import os
from typing import Any

_np: Any = None


def load_numpy() -> None:
    """The expensive part of a cold start: runs once per agent, as it warms up."""
    global _np
    import numpy

    _np = numpy


def normalise(values: list[float]) -> dict[str, Any]:
    """A small step that needs the warm state: z-scores with numpy, tagged by the agent's pid."""
    np = _np
    if np is None:  # called on an agent without the setup: pay the import now
        load_numpy()
        np = _np
    arr = np.asarray(values, dtype=float)
    z = (arr - arr.mean()) / (arr.std() or 1.0)
    return {"pid": os.getpid(), "z_max": float(z.max())}


def simulate(seed: int, n: int = 200_000) -> dict[str, Any]:
    """A few milliseconds of numpy work: a random walk's final position and its largest swing."""
    np = _np
    if np is None:
        load_numpy()
        np = _np
    walk = np.random.default_rng(seed).standard_normal(n).cumsum()
    return {"pid": os.getpid(), "seed": seed, "end": float(walk[-1]), "swing": float(np.ptp(walk))}
