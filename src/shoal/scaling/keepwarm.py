"""Keep-warm for scale-to-zero pools: when to hold an agent, learnt from the idle gaps.

A pool allowed to reach zero (``min_instances: 0``) pays a cold start for the first call after
each quiet stretch, or an agent held idle through it. :class:`KeepWarm` chooses per stretch, as
Azure Functions' *hybrid histogram* policy does (Shahrad et al., "Serverless in the Wild",
ATC 2020): it keeps a histogram of the idle gaps between bursts of activity (1-minute buckets up
to 4 hours) and, once the histogram is informative,

- lets the pool go to zero at once after activity, and *pre-warms* one agent at the gap's 5th
  percentile (less 10%), when the next call starts to become likely;
- keeps that agent until the gap's 99th percentile (plus 10%), after which a call is unlikely
  until the pattern changes.

While the histogram is not informative — fewer than ``min_gaps`` gaps, more than half of them
beyond its range, or gaps spread evenly (a low coefficient of variation of the bucket counts: no
gap length stands out) — it falls back to a fixed keep-alive of ``fallback_keep_s``.

While anything is in flight or queued the inner policy decides alone. :class:`KeepWarm` is
pure, like every policy: the histogram is a tuple, replaced at each new gap.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from shoal.pool.metrics import PoolMetrics
from shoal.scaling.policy import Decision, Policy

BUCKET_S = 60.0
BUCKETS = 240  # 4 h
MIN_GAP_S = 5.0  # calls closer than this are one stretch of activity, not a gap


@dataclass(frozen=True)
class GapHistogram:
    """Idle gaps in buckets of ``BUCKET_S`` seconds; ``beyond`` counts longer ones."""

    counts: tuple[int, ...] = (0,) * BUCKETS
    beyond: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts) + self.beyond

    def add(self, gap_s: float) -> GapHistogram:
        i = int(gap_s // BUCKET_S)
        if i >= BUCKETS:
            return dataclasses.replace(self, beyond=self.beyond + 1)
        counts = list(self.counts)
        counts[i] += 1
        return dataclasses.replace(self, counts=tuple(counts))

    def quantile(self, q: float, *, upper: bool) -> float:
        """The gap below which a fraction ``q`` of those seen fall, at a bucket edge: the
        bucket's lower edge (``upper=False``), or its upper one."""
        need = q * self.total
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if c and seen >= need:
                return (i + (1 if upper else 0)) * BUCKET_S
        return BUCKETS * BUCKET_S

    def spread_cv(self) -> float:
        """Coefficient of variation of the bucket counts: high when a few gap lengths stand out."""
        n = len(self.counts)
        mean = sum(self.counts) / n
        if mean == 0:
            return 0.0
        var = sum((c - mean) ** 2 for c in self.counts) / n
        return math.sqrt(var) / mean


@dataclass(frozen=True)
class KeepWarmState:
    inner: Any
    gaps: GapHistogram = GapHistogram()
    last_active: float | None = None  # the last decision that saw a call in flight or arriving
    last_total: int = -1


@dataclass(frozen=True)
class KeepWarm:
    """``inner`` while calls run; between them, one agent held (or none) as the gaps suggest."""

    inner: Policy[Any]
    fallback_keep_s: float = 600.0
    min_gaps: int = 10
    low_q: float = 0.05
    high_q: float = 0.99
    margin: float = 0.1
    min_cv: float = 2.0
    beyond_share: float = 0.5

    @property
    def name(self) -> str:
        return self.inner.name

    def initial_state(self) -> KeepWarmState:
        return KeepWarmState(self.inner.initial_state())

    def windows(self, gaps: GapHistogram) -> tuple[float, float, str]:
        """(pre-warm after, keep until) in seconds of idleness, and on what they rest."""
        total = gaps.total
        if total < self.min_gaps:
            return 0.0, self.fallback_keep_s, f"{total} of {self.min_gaps} gaps seen"
        if gaps.beyond > self.beyond_share * total:
            return 0.0, self.fallback_keep_s, "most gaps beyond 4 h"
        cv = gaps.spread_cv()
        if cv < self.min_cv:
            return 0.0, self.fallback_keep_s, f"gaps spread evenly (CV {cv:.1f})"
        prewarm = gaps.quantile(self.low_q, upper=False) * (1 - self.margin)
        keep = gaps.quantile(self.high_q, upper=True) * (1 + self.margin)
        return prewarm, keep, f"gaps p{self.low_q:.0%}-p{self.high_q:.0%} of {total}"

    def decide(
        self, snapshot: PoolMetrics, state: KeepWarmState, now: float
    ) -> Decision[KeepWarmState]:
        raw = self.inner.decide(snapshot, state.inner, now)
        arrived = state.last_total >= 0 and snapshot.requests_total != state.last_total
        active = arrived or snapshot.busy > 0 or snapshot.queue_depth > 0 or snapshot.in_flight > 0
        gaps, last = state.gaps, state.last_active
        if active:
            if last is not None and now - last >= MIN_GAP_S:
                gaps = gaps.add(now - last)
            nxt = KeepWarmState(raw.state, gaps, now, snapshot.requests_total)
            return Decision(raw.desired, nxt, raw.reason, raw.shed)
        nxt = KeepWarmState(raw.state, gaps, last, snapshot.requests_total)
        if last is None:  # nothing seen yet: the inner policy's size
            return Decision(raw.desired, nxt, raw.reason, raw.shed)
        idle = now - last
        prewarm, keep, basis = self.windows(gaps)
        warm = prewarm <= idle < keep
        desired = 1 if warm else 0
        what = f"idle {idle:.0f} s; keep-warm {prewarm:.0f}-{keep:.0f} s ({basis}): " + (
            "hold one agent" if warm else "none"
        )
        return Decision(desired, nxt, f"{raw.reason}; {what}", raw.shed)
