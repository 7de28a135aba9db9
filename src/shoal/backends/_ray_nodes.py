"""The Ray backend's bookkeeping about nodes, kept pure (no Ray, no I/O) so it is tested alone.

- :func:`nodes_to_avoid`: which nodes a new agent should stay off (those that just lost agents),
  or none at all when no other live node could hold it — on a one-node cluster there is
  nowhere else to go, so the agent goes where it can, at once.
- :func:`capacity`: how many agents of a shape the live nodes could hold.
- :class:`NodeWatch`: the probe of one node, and how long it has left a ping unanswered.

A node is described as Ray's ``ray.nodes()`` does: ``{"NodeID", "Alive", "Resources"}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Grace for a probe's first answer: its worker process may take a while to start on a busy node.
FIRST_PONG_S = 30.0
_EPS = 1e-9


def fits(have: Mapping[str, float], need: Mapping[str, float]) -> int:
    """How many agents needing ``need`` a node with resources ``have`` holds in all."""
    counts = [have.get(k, 0.0) / v + _EPS for k, v in need.items() if v > 0]
    return int(min(counts)) if counts else 1_000_000


def capacity(nodes: Iterable[Mapping[str, Any]], need: Mapping[str, float]) -> int:
    """How many agents needing ``need`` the live nodes could hold, all else aside."""
    return sum(fits(n.get("Resources", {}), need) for n in nodes if n.get("Alive"))


def nodes_to_avoid(
    nodes: Iterable[Mapping[str, Any]],
    avoided: Mapping[str, float],
    need: Mapping[str, float],
    now: float,
) -> list[str]:
    """The live nodes a new agent should stay off: those in ``avoided`` (node id -> until when)
    whose time is not up — but only if some other live node could hold the agent. Otherwise
    none: avoiding would only make the agent wait for a node that does not exist."""
    live = [n for n in nodes if n.get("Alive")]
    avoid = sorted(n["NodeID"] for n in live if avoided.get(n["NodeID"], -1.0) > now)
    if not avoid:
        return []
    elsewhere = any(
        n["NodeID"] not in avoid and fits(n.get("Resources", {}), need) >= 1 for n in live
    )
    return avoid if elsewhere else []


class NodeWatch:
    """The probe of one node. ``silent_for`` counts from the oldest ping still unanswered, so a
    watch that was not pinging for a while (no agents on the node) is not taken for silent when
    pinging resumes."""

    __slots__ = ("actor", "answered", "failed", "sent_at")

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.sent_at: float | None = None  # when the ping now outstanding was sent
        self.answered = False  # the probe has answered at least once
        self.failed: str | None = None  # a ping failed: the probe (and so its node) is gone

    @property
    def pinging(self) -> bool:
        return self.sent_at is not None

    def sent(self, now: float) -> None:
        self.sent_at = now

    def pong(self) -> None:
        self.sent_at = None
        self.answered = True

    def lost(self, why: str) -> None:
        self.sent_at = None
        if self.failed is None:
            self.failed = why

    def silent_for(self, now: float) -> float:
        """Seconds the outstanding ping has gone unanswered (0 if none is); a probe that never
        answered yet is given ``FIRST_PONG_S`` more."""
        if self.sent_at is None:
            return 0.0
        waited = now - self.sent_at
        return waited if self.answered else max(0.0, waited - FIRST_PONG_S)
