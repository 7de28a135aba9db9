"""What an agent runs for :meth:`AgentPool.map`: one chunk of items in one call.

A module of its own with no imports, so that an agent loads nothing else of shoal for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def run_chunk(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(x) for x in items]``, in the agent."""
    return [fn(x) for x in items]
