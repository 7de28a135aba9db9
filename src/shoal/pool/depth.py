"""How many calls a one-call agent may hold queued behind the one it runs (prefetch depth).

Pure bookkeeping, fed by :class:`~shoal.pool.state.PoolState`. One queued call is always
allowed (the prefetch of the README). More are allowed only while the agent's calls are tiny
next to a wait anyone would notice, so that a call is never parked behind a long one on the
strength of a guess:

* each agent keeps the *service times* of its last ``RUN_WINDOW`` calls as the pool saw them:
  from the later of the call's send and the previous call's end on that agent, to its end;
* a call may take place ``p`` in an agent's line (``p`` calls ahead of it: the running one and
  ``p - 1`` queued) for ``p >= 2`` only if ``p <= MAX_AHEAD``, the agent has ``RUN_WINDOW``
  service times, ``p`` times their mean is at most ``QUEUE_BUDGET_S`` (its expected wait
  there), and the running call has run for at most ``QUEUE_BUDGET_S``.

A call that turns out long still holds up those queued behind it; as with one queued call, an
agent that comes free takes them back (recall), oldest first, and they keep their place in the
pool's queue.
"""

from __future__ import annotations

from collections import deque

QUEUE_BUDGET_S = 0.001  # the most a call is expected to wait behind tiny calls for extra depth
MAX_AHEAD = 16  # calls ahead of a queued one, at most: so at most 16 queued behind a call
RUN_WINDOW = 16  # service times kept per agent
_ROUNDING = 1 + 1e-9  # a mean of exactly budget / ahead, summed in floating point, still fits


class RunTimes:
    """One agent's recent service times, and when its running call began."""

    __slots__ = ("_times", "last_end", "since")

    def __init__(self) -> None:
        self._times: deque[float] = deque(maxlen=RUN_WINDOW)
        self.last_end = float("-inf")  # when the pool saw its last call end
        self.since = float("-inf")  # when a call was last sent to it with nothing ahead

    def began(self, now: float) -> None:
        """A call was sent to the agent with no call of its ahead."""
        self.since = now

    def ended(self, sent: float, now: float) -> None:
        """A call sent at ``sent`` ended at ``now``."""
        self._times.append(max(0.0, now - max(self.last_end, sent)))
        self.last_end = now

    @property
    def mean(self) -> float | None:
        """The mean of the last ``RUN_WINDOW`` service times; None until there are as many."""
        if len(self._times) < RUN_WINDOW:
            return None
        return sum(self._times) / RUN_WINDOW

    def may_queue(self, ahead: int, now: float) -> bool:
        """Whether a call may wait behind ``ahead`` calls on this agent (see the module)."""
        if ahead <= 1:
            return True
        if ahead > MAX_AHEAD or now - max(self.last_end, self.since) > QUEUE_BUDGET_S:
            return False
        mean = self.mean
        return mean is not None and ahead * mean <= QUEUE_BUDGET_S * _ROUNDING
