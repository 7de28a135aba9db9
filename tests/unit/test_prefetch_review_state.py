"""The second hostile review of prefetch, on the pure state (virtual time given by hand):
each test failed on the pool the review found it in."""

from __future__ import annotations

from shoal.pool.state import Start
from shoal.pool.waitqueue import Waiter
from tests.unit.test_pool_ondemand_review import Driven


def test_callers_behind_a_blocked_call_get_an_agent_once_it_outruns_a_start() -> None:
    # Starts take 1 s and calls 0.1 s. A caller waits behind a tiny call, which sets a look
    # again for when that call will have outrun the short ones; it is served before then, and
    # maintenance, with nobody waiting, goes to sleep until its next heartbeat check (7.5 s).
    # The next call blocks; callers arrive behind it and are left to it (it may yet end
    # within a start). The look again already set is what would get them an agent once the
    # call has outrun a start, but nothing woke maintenance for it: they waited 7.5 s for the
    # heartbeat check instead of about a start.
    d = Driven(prefetch=True, min_size=1, max_size=2)
    t = d.timed()
    first = d.begin(t)
    d.st.enqueue(Waiter(t + 0.01, None, prefetchable=True), t + 0.01)
    (second,) = d.st.queued  # queued behind the tiny call; no start for it
    assert d.started() == []
    d.st.actions.clear()
    d.st.begin_call(second, t + 0.02)
    d.end(first, t, t + 0.05)  # the second caller's call is the agent's own now, and blocks
    assert not d.st.queued and not d.st.queue
    d.st.poke = False
    d.st.wake_at = d.st.tick(t + 0.06)  # maintenance: nobody waits; it sleeps until then
    assert d.st.wake_at > t + 7
    d.st.poke = False
    for i in range(3):  # callers behind the blocked call
        d.st.enqueue(Waiter(t + 0.07, None, prefetchable=True), t + 0.07 + i * 0.001)
    assert d.started() == []  # left to the busy agent: its call may still end soon
    wake = d.st.tick(t + 0.08) if d.st.poke else d.st.wake_at  # the shell wakes it if poked
    for _ in range(100):  # maintenance, at each deadline it gives
        if wake > t + 1.0 or any(isinstance(a, Start) for a in d.st.actions):
            break
        wake = d.st.tick(wake)
    assert any(isinstance(a, Start) for a in d.st.actions), (
        "maintenance slept past the moment the blocked call outran a start"
    )
