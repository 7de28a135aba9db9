"""The pool's snapshot and maintenance tick, built for speed, against their plain spelling.

:meth:`PoolState.snapshot` fills :class:`PoolMetrics` through one dict, not the frozen
dataclass's ``__init__``, and skips the per-node count for backends without nodes;
:meth:`PoolState.tick` finds the idle agents due a check and those to retire in one pass.
Driven through every interleaving of :class:`PoolStateMachine`, both must give what the plain
spelling (written out here, as it was) gives.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from shoal.pool.agent import AgentState
from shoal.pool.metrics import PoolMetrics
from shoal.pool.state import PoolState, agents_per_node
from tests.unit.test_pool_state import PoolStateMachine

FIELDS = [f.name for f in dataclasses.fields(PoolMetrics)]


def plain_snapshot(s: PoolState, now: float) -> PoolMetrics:
    m, c = s.metrics, s.counts
    size = s.size
    running = s._held - len(s.queued)
    return PoolMetrics(
        name=s.name,
        size=size,
        starting=c[AgentState.STARTING],
        idle=c[AgentState.IDLE],
        busy=c[AgentState.BUSY],
        stopping=c[AgentState.STOPPING],
        min_size=s.config.min_size,
        max_size=s.config.max_size,
        target_size=s.target,
        requests_total=m.requests_total,
        requests_active=m.requests_active,
        requests_failed=m.requests_failed,
        queue_depth=len(s.queue) + len(s.queued),
        oldest_wait=s.oldest_wait(now),
        avg_wait_time=m.wait_times.mean(),
        avg_execution_time=m.exec_times.mean(),
        wait_p50=m.wait_times.quantile(0.50),
        wait_p99=m.wait_times.quantile(0.99),
        utilization_rate=running / (size * s._slots) if size else 0.0,
        throughput=m.completions.rate(now),
        arrival_rate=m.arrivals.rate(now),
        warm_hits=m.warm_hits,
        cold_starts=m.cold_starts,
        agents_started=m.agents_started,
        agents_retired=m.agents_retired,
        start_failures=m.start_failures,
        time=now,
        checking=c[AgentState.CHECKING],
        in_flight=running,
        max_concurrency=s._slots,
        nodes=agents_per_node(s.agents.values()),
        cost_usd=s.placer.spent(now),
        cost_per_hour=s.placer.spend_rate,
        cost_cap_size=s.placer.cap_size(size - s.doomed, now),
        preemptions=s.placer.preemptions,
        requeued=m.requeued,
    )


class SnapshotMachine(PoolStateMachine):
    @invariant()
    def snapshot_is_the_plain_one(self) -> None:
        if not hasattr(self, "state"):
            return
        snap = self.state.snapshot(self.now)
        assert list(vars(snap)) == FIELDS  # every field, in order, and nothing else
        assert snap == plain_snapshot(self.state, self.now)
        with pytest.raises(dataclasses.FrozenInstanceError):
            snap.size = 99  # type: ignore[misc]

    @rule(dt=st.floats(0, 40))
    def tick_does_all_that_is_due(self, dt: float) -> None:
        self.now += dt
        now, s = self.now, self.state
        interval = s.config.health_check_interval
        idle_before = list(s.idle)
        deadline = s.tick(now)
        for agent in idle_before:  # none left idle that was due a check, expired or dead
            if agent in s.idle:
                assert not agent.health_due(interval, now)
                assert not agent.expired(now) and agent.alive
        # the next deadline is no later than any idle agent's next check or end
        for agent in s.idle:
            assert deadline <= agent.last_checked + interval
            assert deadline <= agent.expires_at
        self.perform()


TestSnapshot = SnapshotMachine.TestCase
TestSnapshot.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_a_snapshot_counts_agents_per_node_only_for_backends_with_nodes() -> None:
    from shoal.config import PoolConfig

    class NodeHandle:
        exit_code = None

        def __init__(self, ip: str) -> None:
            self.node_ip = ip

    class PlainHandle:
        exit_code = None

    plain = PoolState(PoolConfig(name="plain", min_size=2))
    plain.open(0.0)
    for action in list(plain.actions):
        if hasattr(action, "agent"):
            plain.agent_started(action.agent, PlainHandle(), 1.0)
    assert plain.snapshot(2.0).nodes == {}
    placed = PoolState(PoolConfig(name="placed", min_size=2))
    placed.open(0.0)
    for i, action in enumerate(list(placed.actions)):
        if hasattr(action, "agent"):
            placed.agent_started(action.agent, NodeHandle(f"10.0.0.{i % 2}"), 1.0)
    assert placed.snapshot(2.0).nodes == {"10.0.0.0": 1, "10.0.0.1": 1}
