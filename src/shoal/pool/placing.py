"""Where a pool's new agents go, what they cost, and which placements to avoid for a while.

Pure bookkeeping (no I/O, no clock: ``now`` always comes in), owned by
:class:`~shoal.pool.state.PoolState`. A :class:`Site` is one placement's tally: its agents
(from the start until they are stopped, so a starting or stopping agent counts against its
``max_size`` and costs money), those still serving (not stopping, not under a preemption
notice), when it may be tried again after failed starts, when its notice ends, and the
preemptions that demote it.

The rules:

- **Where a new agent goes** (:meth:`Placer.choose`): among placements that are up, have room
  and fit under the cost ceiling. With ``prefer_spot``, the first ``on_demand_base`` agents are
  on demand and about ``spot_fraction`` of the rest on spot, falling back to the other capacity
  when the wanted one has no room (SkyServe's dynamic fallback). Without it, on-demand
  placements first and spot only when they have no room. Within a capacity: placements not
  demoted first, then those within ``rtt_target_ms`` of the caller, then the cheapest, then
  the nearest, then the order given.
- **Failed starts** mark a placement down for a back-off (1 s, doubling to 60 s) when the pool
  has more than one: its agents go elsewhere meanwhile; a success clears it.
- **Preemptions**: a notice for a whole placement (no ``agent_ids``) closes it to new agents
  until the deadline; a notice naming agents takes only those out and leaves it open. A
  placement is demoted below the others for half an hour once the capacity reclaimed there
  within an hour reaches twice its size (a whole-placement notice counts as its size, a notice
  for ``k`` of its ``n`` agents as ``k / n`` of it): two whole-placement notices, or each agent
  of it reclaimed twice on average (SpotHedge's lesson: capacity that was just reclaimed is
  likely to be reclaimed again; a large placement's ordinary trickle of single-agent notices
  is not that).
- **A placement that fails** (its backend cannot reach its agents): agents of one placement
  lost within ``LOST_TOGETHER_S`` of each other, at least two and at least ``LOST_SHARE`` of
  it, or an agent lost while the placement's starts are failing, judge it down
  (:meth:`Placer.lost`, :meth:`Placer.failed_at`): it is skipped for a back-off as after
  failed starts, and the calls lost on its agents may run again elsewhere. One agent lost in a
  placement that is otherwise well is that agent's (or its call's) failure, not the
  placement's.
- **Early cancel** (:func:`finish_chance`): a call under a notice that past calls' run times
  give less than ``EARLY_CANCEL_BELOW`` chance to finish before the reclaim is cancelled and
  re-queued at once rather than at the deadline.
- **Consolidation** (:meth:`Placer.cheaper_target`): an agent on a placement dearer than an
  open one of the same capacity (with room, affordable, not demoted, not farther than the
  latency target when it is within) moves there when the saving over ``idle_timeout``
  exceeds what the new agent costs while it starts: a start there, then the dearer agent
  retired (an idle one at once, a busy one when its call is back).
- **Spilling** (:func:`expected_wait`): a call takes an idle agent farther away only when the
  wait it can expect for a busy nearer one (calls queued ahead + 1, times the mean run time,
  over those agents) exceeds the extra round trip, or once it has waited that long.
- **Cost**: the spend rate is Σ agents x their placement's price; a start that would take it
  over the ceiling is refused. ``cost_usd`` integrates the rate over time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shoal.pool.placement import Placement

DOWN_FIRST_S = 1.0
DOWN_MAX_S = 60.0
DEMOTE_AFTER = 2.0  # placements' worth of capacity reclaimed within DEMOTE_WINDOW_S demotes one
DEMOTE_WINDOW_S = 3600.0
DEMOTE_S = 1800.0
LOST_TOGETHER_S = 2.0  # agents of a placement lost this close together were lost together
LOST_SHARE = 0.5  # ... and this share of its agents lost together means the placement failed
_EPS = 1e-9


@dataclass(eq=False, slots=True)
class Site:
    """One placement's tally."""

    placement: Placement
    price: float  # $ per agent-hour, resolved
    order: int
    count: int = 0  # agents from their start until stopped
    starting: int = 0  # of those, not up yet
    serving: int = 0  # of those, not stopping and not under a notice
    failures: int = 0  # failed starts in a row
    down_until: float = -math.inf
    notice_until: float = -math.inf
    demoted_until: float = -math.inf
    preempted_at: deque[tuple[float, float]] = field(default_factory=deque)  # (when, share)
    lost_at: deque[tuple[float, int]] = field(default_factory=deque)  # (when, agents then)

    @property
    def name(self) -> str:
        return self.placement.name

    @property
    def spot(self) -> bool:
        return self.placement.spot

    def has_room(self) -> bool:
        cap = self.placement.max_size
        return cap is None or self.count < cap

    def open(self, now: float) -> bool:
        """May take a new agent now (cost aside). After failed starts, one start at a time
        probes it."""
        return (
            self.has_room()
            and now >= self.down_until
            and now >= self.notice_until
            and not (self.failures and self.starting)
        )


def expected_wait(ahead: int, mean_service_s: float, agents: int) -> float:
    """Seconds a call joining ``ahead`` waiting callers can expect to wait for one of
    ``agents`` busy agents whose calls take ``mean_service_s`` on average: it is served at the
    ``ahead + 1``-th completion, and they come ``agents / mean_service_s`` a second (infinite
    without agents)."""
    if agents <= 0:
        return math.inf
    return (ahead + 1) * mean_service_s / agents


EARLY_CANCEL_BELOW = 0.1  # a call under notice less likely than this to finish is cancelled now


def finish_chance(cdf: Callable[[float], float], elapsed_s: float, left_s: float) -> float:
    """The chance that a call running for ``elapsed_s`` finishes within ``left_s`` more, from
    ``cdf`` (the share of past calls that took at most so long): those that ran longer than
    ``elapsed_s`` and at most ``elapsed_s + left_s``, among those that ran longer than
    ``elapsed_s``. 0 for a call that has outrun every call seen."""
    done = cdf(elapsed_s)
    if done >= 1.0:
        return 0.0
    return (cdf(elapsed_s + left_s) - done) / (1.0 - done)


class Placer:
    """The placements of one pool and the rules above."""

    def __init__(
        self,
        placements: Iterable[Placement],
        pool_price: float | None,
        *,
        rtt_target_ms: float | None = None,
    ) -> None:
        self.sites: dict[str, Site] = {}
        for i, p in enumerate(placements):
            self.sites[p.name] = Site(p, p.price(pool_price), i)
        self.order = list(self.sites.values())
        self.multi = len(self.order) > 1
        self.rtt_target_ms = rtt_target_ms
        self.prefer_spot = False
        self.spot_fraction = 0.8
        self.on_demand_base = 0
        self.cost_ceiling: float | None = None
        self.spend_rate = 0.0  # $ per hour of the agents counted
        self.cost_usd = 0.0  # spent until ``_since``
        self._since: float | None = None
        self.preemptions = 0

    # -- configuration ----------------------------------------------------------------------------

    def set_spot(self, prefer_spot: bool, spot_fraction: float, on_demand_base: int) -> None:
        self.prefer_spot = prefer_spot
        self.spot_fraction = spot_fraction
        self.on_demand_base = on_demand_base

    @property
    def has_spot(self) -> bool:
        return any(s.spot for s in self.order)

    @property
    def cheapest(self) -> float:
        return min(s.price for s in self.order)

    # -- money ------------------------------------------------------------------------------------

    def _accrue(self, now: float) -> None:
        if self._since is not None and now > self._since:
            self.cost_usd += self.spend_rate * (now - self._since) / 3600.0
        if self._since is None or now > self._since:
            self._since = now

    def spent(self, now: float) -> float:
        """$ spent from the first agent until ``now``."""
        if self._since is None or now <= self._since:
            return self.cost_usd
        return self.cost_usd + self.spend_rate * (now - self._since) / 3600.0

    def affords(self, site: Site) -> bool:
        ceiling = self.cost_ceiling
        return ceiling is None or self.spend_rate + site.price <= ceiling + _EPS

    def cap_size(self, serving: int, now: float) -> int | None:
        """The most serving agents the ceiling allows: those there are, plus what the money
        left buys at the cheapest placement open now (None without a ceiling)."""
        ceiling = self.cost_ceiling
        if ceiling is None:
            return None
        prices = [s.price for s in self.order if s.open(now)] or [self.cheapest]
        price = min(prices)
        if price <= 0:
            return None
        return serving + max(0, math.floor((ceiling - self.spend_rate) / price + _EPS))

    # -- agents coming and going -----------------------------------------------------------------

    def added(self, site: Site, now: float) -> None:
        self._accrue(now)
        site.count += 1
        site.starting += 1
        site.serving += 1
        self.spend_rate += site.price

    def unserving(self, site: Site) -> None:
        """An agent here stopped serving (retired, or under a notice)."""
        site.serving -= 1

    def removed(self, site: Site, now: float) -> None:
        self._accrue(now)
        site.count -= 1
        self.spend_rate -= site.price
        if not any(s.count for s in self.order):
            self.spend_rate = 0.0  # no drift from adding and taking away floats

    def start_failed(self, site: Site, now: float, *, failed: bool = True) -> None:
        """A start here failed (or, without ``failed``, was cancelled)."""
        site.starting -= 1
        if not self.multi or not failed:
            return  # one placement: the pool's crash-loop breaker does the backing off
        site.failures += 1
        site.down_until = now + min(DOWN_FIRST_S * 2 ** (site.failures - 1), DOWN_MAX_S)

    def start_ok(self, site: Site) -> None:
        site.starting -= 1
        site.failures = 0
        site.down_until = -math.inf

    def lost(self, site: Site, now: float) -> bool:
        """An agent of ``site`` (still counted in it) was lost; True if that judged the
        placement down now (it is then skipped for a back-off, as after a failed start)."""
        times = site.lost_at
        times.append((now, site.count))
        while times and times[0][0] < now - 2 * LOST_TOGETHER_S:
            times.popleft()
        if not self.multi or site.down_until > now or not self.failed_at(site, now):
            return False
        site.failures += 1
        site.down_until = now + min(DOWN_FIRST_S * 2 ** (site.failures - 1), DOWN_MAX_S)
        return True

    def failed_at(self, site: Site, when: float) -> bool:
        """Whether an agent lost at ``when`` went down with its placement: agents lost within
        ``LOST_TOGETHER_S`` of it, at least two and ``LOST_SHARE`` of the placement, or the
        placement's starts failing. Only a pool with other placements judges (with one there
        is nowhere else to go)."""
        if not self.multi:
            return False
        if site.failures and site.down_until >= when:
            return True
        near = [n for t, n in site.lost_at if abs(t - when) <= LOST_TOGETHER_S]
        return len(near) >= 2 and len(near) >= LOST_SHARE * max(near)

    def notice(self, site: Site, deadline: float, now: float, hit: int | None = None) -> bool:
        """A preemption notice for ``site``: for the whole placement (``hit`` None), or for
        ``hit`` of its agents. True if it demoted the placement."""
        self.preemptions += 1
        if hit is None:
            site.notice_until = max(site.notice_until, deadline)
            share = 1.0
        else:
            share = hit / max(site.count, hit, 1)
        times = site.preempted_at
        times.append((now, share))
        while times and times[0][0] <= now - DEMOTE_WINDOW_S:
            times.popleft()
        reclaimed = sum(s for _, s in times)
        if reclaimed >= DEMOTE_AFTER - _EPS and site.demoted_until <= now:
            site.demoted_until = now + DEMOTE_S
            return True
        return False

    # -- choices ----------------------------------------------------------------------------------

    def serving(self, spot: bool) -> int:
        return sum(s.serving for s in self.order if s.spot == spot)

    def wants_spot(self) -> bool:
        """With ``prefer_spot``: whether the next agent should be on spot."""
        on_demand, spot = self.serving(False), self.serving(True)
        if on_demand < self.on_demand_base:
            return False
        above = on_demand - self.on_demand_base + spot
        return spot < round(self.spot_fraction * (above + 1))

    def _rank(self, site: Site, now: float) -> tuple[bool, bool, float, float, int]:
        target = self.rtt_target_ms
        far = target is not None and site.placement.rtt_ms > target
        return (site.demoted_until > now, far, site.price, site.placement.rtt_ms, site.order)

    def choose(self, now: float) -> tuple[Site | None, str]:
        """Where the next agent goes, or None and why not (``down`` or ``cost``)."""
        order = self.order
        if not self.multi:
            site = order[0]
            if not site.has_room():
                return None, "full"
            return (site, "") if self.affords(site) else (None, "cost")
        open_ = [s for s in order if s.open(now)]
        if not open_:
            return None, "full" if all(not s.has_room() for s in order) else "down"
        fits = [s for s in open_ if self.affords(s)]
        if not fits:
            return None, "cost"
        spot = self.wants_spot() if self.prefer_spot else False
        wanted = [s for s in fits if s.spot == spot] or fits
        return min(wanted, key=lambda s: self._rank(s, now)), ""

    def swap_target(self, now: float) -> Site | None:
        """With ``prefer_spot``, a spot placement to move one on-demand agent above the base
        back to, once spot has room again; None if there is nothing to swap."""
        if not self.prefer_spot or not self.multi:
            return None
        on_demand, spot = self.serving(False), self.serving(True)
        above = on_demand - self.on_demand_base + spot
        if on_demand <= self.on_demand_base or spot >= round(self.spot_fraction * above):
            return None
        fits = [s for s in self.order if s.spot and s.open(now) and self.affords(s)]
        if not fits:
            return None
        return min(fits, key=lambda s: self._rank(s, now))

    def cheaper_target(
        self, now: float, horizon_s: float, cold_start_s: float
    ) -> tuple[Site, Site] | None:
        """Consolidation: (from, to) for the move that saves most, or None when none is worth
        its churn: ``to`` is open, cheaper, of the same capacity, and the saving over
        ``horizon_s`` exceeds ``to``'s price for ``cold_start_s`` (what the start costs)."""
        if not self.multi:
            return None
        target = self.rtt_target_ms
        best: tuple[float, Site, Site] | None = None
        for dst in self.order:
            if dst.demoted_until > now or not dst.open(now) or not self.affords(dst):
                continue
            far = target is not None and dst.placement.rtt_ms > target
            for src in self.order:
                if not src.serving or src.spot != dst.spot or src.price <= dst.price:
                    continue
                if far and src.placement.rtt_ms <= target:  # type: ignore[operator]
                    continue
                saving = (src.price - dst.price) * horizon_s - dst.price * cold_start_s
                if saving > 0 and (best is None or saving > best[0]):
                    best = (saving, src, dst)
        return None if best is None else (best[1], best[2])

    def next_retry(self, now: float) -> float:
        """When the next placement that is down or under a notice may be tried again."""
        times = [t for s in self.order for t in (s.down_until, s.notice_until) if t > now]
        return min(times, default=math.inf)
