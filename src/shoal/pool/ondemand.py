"""The on-demand count: how many waiting callers need a new agent, as pure rules.

Fed by :class:`~shoal.pool.state.PoolState` (``on_demand=True``): callers the busy agents will
reach before an agent started now would be up need no new agent; callers prefetched behind a
call they will not wait out need one as much as those still in the queue. No I/O, no clock:
``now`` and everything read come in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from shoal.pool.agent import AgentState, Lease, PooledAgent
from shoal.pool.metrics import Window
from shoal.pool.placing import Placer, finish_chance

BUSY = AgentState.BUSY


def next_cold_start(
    agents: Iterable[PooledAgent], placer: Placer, last_cold_s: float | None, now: float
) -> float | None:
    """How long an agent started now is expected to take to be up: the last start's time,
    or with several placements, the last one's on the placement it would start on (their
    starts differ: another region, another kind of capacity); None if not known."""
    if not placer.multi:
        return last_cold_s
    site, _ = placer.choose(now)
    cold_s, last = None, -math.inf
    for agent in agents:
        ready = agent.ready_at
        if agent.site is site and ready is not None and ready > last:
            cold_s, last = ready - agent.created_at, ready
    return cold_s


def ends_within(exec_times: Window, elapsed_s: float, cold_s: float) -> bool:
    """Whether a call that has run ``elapsed_s`` will more likely than not have ended
    when a start made now is up, by the run times of past calls: one that has outrun the
    short ones (50-ms and 5-s calls: one at 0.2 s is a 5-s one) is not, even within a start."""
    if elapsed_s >= cold_s - 1e-9:
        return False
    cdf = exec_times.share_at_most
    # (less a hair: a call as long as the longest seen, about to end, is not past them all)
    since = max(0.0, elapsed_s - 1e-9)
    return finish_chance(cdf, since, cold_s - since) >= 0.5


def reached_before_a_start(
    agents: Iterable[PooledAgent],
    queued: dict[Lease, None],
    exec_times: Window,
    cold_s: float | None,
    slots: int,
    max_uses: int | None,
    now: float,
) -> tuple[int, int, float]:
    """How many waiting callers the busy agents are expected to serve before an agent
    started now would be up: ``cold start x busy slots / mean run time`` (the completions
    due in that time, ``expected_wait`` turned around), less the calls already prefetched
    on those agents. An on-demand start for such a caller only adds an agent that arrives
    after its caller has gone (on a steady load at 70% utilization with 2-s starts and 1-s
    calls, hundreds of surplus starts an hour).

    0 — start for every waiting caller, as before — until a start and a call have been
    timed, when calls usually outlast a start (fewer than half of past calls end within
    one: a new agent is then the sooner way in), and for agents that may not free up soon:
    one held with ``get_agent()``/``acquire()`` (its holder decides when), one whose call is
    not likely to end within a start (it has run as long as one, or past most calls that
    end within one: in a long-tailed run time it may run much longer), or
    one retiring, draining or under a preemption notice, or one its calls leave at
    ``max_uses`` or that reaches ``max_lifetime`` within a start (retired, not reused).
    ``cold_s`` is the cold start of the placement the next agent would start on
    (:func:`next_cold_start`); ``slots`` the calls one agent serves at once.

    Also returns how many prefetched calls (``queued``) wait behind agents not counted on
    (their callers need an agent as much as those in the queue), and when the first counted
    agent's call will no longer be likely to end within a start."""
    share = exec_times.share_at_most(cold_s) if cold_s is not None and exec_times else 0.0
    if cold_s is None or share < 0.5:
        return 0, len(queued), math.inf
    # A counted call stops being likely to end within a start once it has run past this
    # (see ends_within): more than 2 x share - 1 of past calls took at most so long.
    # In whole calls, not 2 x share - 1 in floating point: that product fell a hair short
    # of an integer, put the boundary one call early, and had maintenance look again at
    # the same instant forever (a virtual-time hang).
    n = len(exec_times)
    within = round(share * n)  # past calls that took at most a start
    k = min(2 * within - n, n - 1)  # likely to end while at most k took no longer than it ran
    outrun_s = exec_times.quantile((k + 0.5) / n)  # the (k+1)-th shortest
    outrun_s = min(cold_s, outrun_s + 2e-9)
    counted = behind = 0
    soonest = math.inf
    for agent in agents:
        if (
            agent.state is not BUSY
            or agent.retire_reason is not None
            or agent.draining is not None
            or agent.preempt_deadline is not None
            or not agent.leases
            # retired when its calls end, before or soon after a start: serves nobody else
            or (max_uses is not None and agent.usage_count + len(agent.leases) >= max_uses)
            or agent.expires_at < now + cold_s
        ):
            continue
        leases = agent.leases
        if any(
            not lease.owned or not ends_within(exec_times, now - lease.acquired_at, cold_s)
            for lease in leases
            if lease not in queued
        ):
            continue
        counted += slots
        soonest = min(soonest, min(lease.acquired_at for lease in leases) + outrun_s)
        if queued:
            behind += sum(1 for lease in leases if lease in queued)
    stuck = len(queued) - behind
    if not counted:
        return 0, stuck, math.inf
    due = cold_s * counted / max(exec_times.mean(), 1e-9)
    return max(0, math.floor(min(due, 1e9)) - behind), stuck, soonest


def next_recheck(recheck: float, relied_on: bool, recheck_at: float, now: float) -> float | None:
    """When to look at the count again, if earlier than the look already set for
    ``recheck_at`` (or that one has passed); None to keep it. Counted on, an agent whose call
    outruns a start is counted on no more: look again then, whether or not anything else
    happens. Always after ``now``: time moves on, whatever the arithmetic says."""
    recheck = max(recheck, now + 1e-6)
    if relied_on and (recheck < recheck_at or recheck_at <= now):
        return recheck
    return None
