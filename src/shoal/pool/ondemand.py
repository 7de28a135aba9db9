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
from shoal.pool.placing import Placer

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
    short ones (50-ms and 5-s calls: one at 0.2 s is a 5-s one) is not, even within a start.

    Of the ``n`` past calls, ``w`` took at most a start and ``m`` at most ``elapsed_s``: of
    those that ran longer than it has, at least half ended within the start when
    ``w - m >= (n - m) / 2``, i.e. ``m <= 2w - n``, counted in whole calls (see
    :func:`_outrun_s`, which :func:`reached_before_a_start` compares with instead)."""
    if elapsed_s >= cold_s - 1e-9 or not exec_times:
        return False
    outrun = _outrun_s(exec_times, cold_s)
    # (less a hair: a call as long as the longest seen, about to end, is not past them all)
    return outrun is not None and max(0.0, elapsed_s - 1e-9) < outrun


def _outrun_s(exec_times: Window, cold_s: float) -> float | None:
    """How long a call may have run and still be likely to end within a start (exclusive):
    the (k+1)-th shortest past run time for the largest ``k = 2w - n`` (at most ``n - 1``)
    of :func:`ends_within`; None when fewer than half of past calls end within a start."""
    n = len(exec_times)
    # In whole calls, not 2 x share - 1 in floating point: that product fell a hair short of
    # an integer, put the boundary one call early, and had maintenance look again at the
    # same instant forever (a virtual-time hang); the ratio of shares compared with 0.5 fell
    # either side of it for a call at the boundary.
    within = round(exec_times.share_at_most(cold_s) * n)  # past calls that took at most a start
    if 2 * within < n:
        return None
    k = min(2 * within - n, n - 1)  # likely to end while at most k took no longer than it ran
    return exec_times.quantile((k + 0.5) / n)  # the (k+1)-th shortest


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
    outrun = _outrun_s(exec_times, cold_s) if cold_s is not None and exec_times else None
    if cold_s is None or outrun is None:
        return 0, len(queued), math.inf
    # A counted call stops being likely to end within a start once it has run past this:
    # ends_within, for every call of every busy agent, without a function call per call.
    outrun_s = min(cold_s, outrun + 2e-9)  # when a counted call stops being counted on
    cold_lim = cold_s - 1e-9
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
        first, queued_here = math.inf, 0
        for lease in agent.leases:
            at = lease.acquired_at
            if at < first:
                first = at
            if lease in queued:
                queued_here += 1
            elif (
                not lease.owned
                or (since := now - at) >= cold_lim
                or (since - 1e-9 if since > 1e-9 else 0.0) >= outrun  # ends_within, inline
            ):
                break  # held by its caller, or not likely to end within a start
        else:
            counted += slots
            soonest = min(soonest, first + outrun_s)
            behind += queued_here
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
