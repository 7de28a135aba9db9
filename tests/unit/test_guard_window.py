"""The stabilisation window kept as a monotonic queue decides exactly as the whole window did:
a scale-down goes no lower than the highest recommendation of the last ``cooldown_period``."""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.pool.metrics import PoolMetrics
from shoal.scaling import GuardedPolicy, parse_scaling_policy
from shoal.scaling.policy import Decision


class Scripted:
    """Recommends whatever the snapshot's ``busy`` says: the test scripts the recommendations."""

    name = "scripted"

    def initial_state(self) -> None:
        return None

    def decide(self, snapshot: PoolMetrics, state: None, now: float) -> Decision[None]:
        return Decision(snapshot.busy, None, "scripted")


def snap(busy: int, target: int) -> PoolMetrics:
    base: dict[str, object] = {f.name: 0 for f in dataclasses.fields(PoolMetrics)}
    base.update(name="p", min_size=0, max_size=100, avg_wait_time=0.0, avg_execution_time=0.0)
    base.update(busy=busy, target_size=target, size=target)
    return PoolMetrics(**base)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    window=st.sampled_from([0.0, 5.0, 60.0]),
    steps=st.lists(st.tuples(st.floats(0, 30), st.integers(1, 20)), max_size=80),
)
def test_window_floor_matches_the_whole_window(
    window: float, steps: list[tuple[float, int]]
) -> None:
    config = parse_scaling_policy("w", {"min": 1, "max": 20, "cooldown_period": window})
    policy = GuardedPolicy(Scripted(), config)
    state = policy.initial_state()
    seen: list[tuple[float, int]] = []
    now, current = 0.0, 1
    for dt, rec in steps:
        now += dt
        d = policy.decide(snap(rec, current), state, now)
        seen.append((now, rec))
        floor = max(n for t, n in seen if t > now - window or t == now)
        expected = rec
        if rec < current and window > 0 and floor > rec:
            expected = min(floor, current)
        assert d.desired == expected, (now, rec, current, seen)
        # The kept history never outgrows the window and is strictly decreasing.
        kept = d.state.history
        assert all(t > now - window or t == now for t, _ in kept)
        assert all(a[1] > b[1] for a, b in itertools.pairwise(kept))
        state, current = d.state, d.desired
