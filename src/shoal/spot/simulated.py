"""Preemptions for the simulator: drawn from a rate per spot agent-hour (seeded), or a trace.

The spot market is simulated: nothing here knows a provider's real interruption rates. A
notice names one agent and falls ``notice_s`` before its reclaim (the placement's notice by
default); the simulator's backend kills the agent at that deadline, as the provider would.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Iterable, Sequence

from shoal.errors import ConfigError
from shoal.pool.placement import DEFAULT_NOTICE_S, Placement, PreemptionNotice


class SimulatedPreemptions:
    """A :class:`~shoal.pool.placement.PreemptionSource` that makes preemptions up.

    ``agents`` returns the ids of the placement's agents that can be preempted now (ready and
    not yet noticed). With ``rate_per_hour`` each of them is preempted at that rate, as a
    Poisson process per agent-hour (checked every ``step`` seconds, the number of notices in a
    step drawn from the Poisson law, the agents chosen at random); with ``trace`` (seconds from
    the start of :meth:`watch`) one agent, chosen at random, is noticed at each of those times
    when there is one. ``seed`` fixes every draw. Each agent is noticed at most once.
    ``reclaim`` hears every notice after the pool has: the simulated provider, which takes the
    agents away at the deadline.
    """

    source = "sim"

    def __init__(
        self,
        agents: Callable[[], Sequence[str]],
        *,
        rate_per_hour: float = 0.0,
        trace: Iterable[float] | None = None,
        notice_s: float | None = None,
        seed: int = 0,
        step: float = 1.0,
        reclaim: Callable[[PreemptionNotice], None] | None = None,
    ) -> None:
        if not (isinstance(rate_per_hour, int | float) and rate_per_hour >= 0):
            raise ConfigError(
                f"rate_per_hour={rate_per_hour!r} must be preemptions per spot agent-hour >= 0"
            )
        if notice_s is not None and not notice_s > 0:
            raise ConfigError(f"notice_s={notice_s!r} must be a number of seconds > 0")
        if not step > 0:
            raise ConfigError(f"step={step!r} must be a number of seconds > 0")
        times = sorted(float(t) for t in trace) if trace is not None else None
        if times and times[0] < 0:
            raise ConfigError(f"the preemption trace has a negative time {times[0]!r}")
        self.agents = agents
        self.rate_per_hour = float(rate_per_hour)
        self.trace = times
        self.notice_s = notice_s
        self.step = float(step)
        self.reclaim = reclaim
        self._rng = random.Random(seed)
        self.noticed: set[str] = set()
        self.sent = 0

    async def watch(
        self,
        placement: Placement,
        notify: Callable[[PreemptionNotice], None],
        now: Callable[[], float],
    ) -> None:
        notice = self.notice_s or placement.notice_s or DEFAULT_NOTICE_S
        if self.trace is not None:
            start = now()
            for t in self.trace:
                delay = start + t - now()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._send(placement, notify, now() + notice, 1)
            await asyncio.Event().wait()  # a finished trace: nothing more, until cancelled
        if self.rate_per_hour == 0:
            await asyncio.Event().wait()
        per_agent = self.rate_per_hour * self.step / 3600.0
        while True:
            await asyncio.sleep(self.step)
            n = len(self._candidates())
            if n:
                count = _poisson(self._rng, n * per_agent)
                if count:
                    self._send(placement, notify, now() + notice, count)

    def _candidates(self) -> list[str]:
        return sorted(a for a in self.agents() if a not in self.noticed)

    def _send(
        self,
        placement: Placement,
        notify: Callable[[PreemptionNotice], None],
        deadline: float,
        count: int,
    ) -> None:
        candidates = self._candidates()
        for agent_id in self._rng.sample(candidates, min(count, len(candidates))):
            self.noticed.add(agent_id)
            self.sent += 1
            notice = PreemptionNotice(
                placement.name, deadline, "terminate", self.source, (agent_id,)
            )
            notify(notice)
            if self.reclaim is not None:
                self.reclaim(notice)


def _poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth's method; ``lam`` is small here: notices per step)."""
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
