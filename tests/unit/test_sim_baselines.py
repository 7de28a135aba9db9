"""The field's autoscalers as pure policies: hand-made snapshots in, their decisions out."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from shoal.pool.metrics import PoolMetrics
from shoal.scaling import build_policy, parse_scaling_policy
from shoal.scaling.policy import Decision, FixedPolicy
from shoal.sim import HPAPolicy, KeepAlivePolicy, KPAPolicy, RayServePolicy


def snap(
    *, target: int, busy: int = 0, idle: int = 0, starting: int = 0, queue: int = 0
) -> PoolMetrics:
    base: dict[str, Any] = {f.name: 0 for f in dataclasses.fields(PoolMetrics)}
    base.update(name="p", min_size=0, max_size=1000, avg_wait_time=0.0, avg_execution_time=0.0)
    base.update(
        target_size=target,
        busy=busy,
        idle=idle,
        starting=starting,
        queue_depth=queue,
        size=busy + idle + starting,
    )
    return PoolMetrics(**base)


def run(policy: Any, steps: list[tuple[float, PoolMetrics]]) -> list[Decision[Any]]:
    state, out = policy.initial_state(), []
    for now, snapshot in steps:
        decision = policy.decide(snapshot, state, now)
        state = decision.state
        out.append(decision)
    return out


# -- HPA ------------------------------------------------------------------------------------------


def test_hpa_holds_within_tolerance_and_acts_only_every_sync_period() -> None:
    hpa = HPAPolicy()
    d = run(hpa, [(0.0, snap(target=9, busy=7, idle=2)), (5.0, snap(target=9, busy=9))])
    assert d[0].desired == 9 and "within tolerance" in d[0].reason  # 78% vs 80%
    assert d[1].desired == 9 and d[1].reason == "between syncs"


def test_hpa_scales_by_the_utilization_ratio_with_its_up_limit() -> None:
    d = run(HPAPolicy(), [(0.0, snap(target=2, busy=2))])
    assert d[0].desired == 3  # 100% / 80% x 2 ready = 2.5, rounded up
    hot = HPAPolicy(target_utilization=0.1)
    assert run(hot, [(0.0, snap(target=10, busy=10))])[0].desired == 20  # max(+4, +100%)
    assert run(hot, [(0.0, snap(target=2, busy=2))])[0].desired == 6  # +4 beats +100%


def test_hpa_counts_starting_pods_as_idle_when_scaling_up() -> None:
    d = run(HPAPolicy(), [(0.0, snap(target=4, busy=2, starting=2))])
    assert d[0].desired == 4 and "not ready" in d[0].reason


def test_hpa_scale_down_takes_the_highest_recommendation_of_five_minutes() -> None:
    d = run(
        HPAPolicy(),
        [
            (0.0, snap(target=8, busy=8)),  # recommends 10
            (15.0, snap(target=10, busy=1, idle=9)),  # recommends 2: held at 10
            (301.0, snap(target=10, busy=1, idle=9)),  # the 10 is 301 s old: down to 2
        ],
    )
    assert [x.desired for x in d] == [10, 10, 2]
    assert "stabilized at 10" in d[1].reason


# -- KPA ------------------------------------------------------------------------------------------


def test_kpa_targets_the_stable_window_average() -> None:
    kpa = KPAPolicy()
    steps = [(float(t), snap(target=10, busy=7, idle=3)) for t in range(0, 61)]
    decisions = run(kpa, steps)
    assert decisions[-1].desired == 10  # 7 in flight / 0.7 per pod
    assert decisions[1].reason == "between ticks"


def test_kpa_panics_on_a_burst_and_does_not_scale_down_while_panicking() -> None:
    kpa = KPAPolicy()
    calm = [(float(t), snap(target=10, busy=7, idle=3)) for t in range(0, 60)]
    burst = [(float(t), snap(target=10, busy=10, queue=30)) for t in range(60, 66)]
    after = [(float(t), snap(target=58, busy=7, idle=51)) for t in range(66, 200)]
    decisions = run(kpa, calm + burst + after)
    at_burst = decisions[64]  # ticks every 2 s: 60, 62, 64
    assert "panic mode" in at_burst.reason and at_burst.desired >= 40
    held = [d.desired for d in decisions[66:120]]
    assert min(held) >= at_burst.desired  # no scale-down in panic
    assert decisions[-1].desired < at_burst.desired and "panic" not in decisions[-1].reason


def test_kpa_reaches_zero_only_after_the_grace_period() -> None:
    kpa = KPAPolicy()
    decisions = run(kpa, [(float(t), snap(target=1, idle=1)) for t in range(0, 40, 2)])
    assert decisions[0].desired == 1 and "grace" in decisions[0].reason
    assert decisions[-1].desired == 0  # zero wanted for 30 s


# -- Ray Serve ------------------------------------------------------------------------------------


def test_rayserve_waits_upscale_delay_of_consistent_decisions() -> None:
    ray = RayServePolicy()
    busy = [(float(t), snap(target=2, busy=2, queue=4)) for t in range(0, 31)]
    decisions = run(ray, busy)
    assert all(d.desired == 2 for d in decisions[:30])  # wants 3 (6 ongoing / 2) for 30 s
    assert decisions[30].desired == 3


def test_rayserve_resets_on_a_decision_the_other_way_and_waits_long_to_scale_down() -> None:
    ray = RayServePolicy(look_back_period_s=1.0)
    steps = [(float(t), snap(target=2, busy=2, queue=4)) for t in range(0, 20)]
    steps += [(20.0, snap(target=2, busy=2, idle=0))]  # 2 ongoing: steady, resets
    steps += [(float(t), snap(target=2, busy=2, queue=4)) for t in range(21, 51)]
    decisions = run(ray, steps)
    assert all(d.desired == 2 for d in decisions[:-1]) and decisions[-1].desired == 2
    quiet = [(float(t), snap(target=6, busy=1, idle=5)) for t in range(0, 601)]
    decisions = run(ray, quiet)
    assert decisions[599].desired == 6 and decisions[600].desired == 1


def test_rayserve_scales_from_zero_at_once() -> None:
    d = run(RayServePolicy(), [(0.0, snap(target=0, queue=1))])
    assert d[0].desired == 1


# -- keep-alive -----------------------------------------------------------------------------------


def test_keepalive_keeps_the_peak_in_flight_for_ten_minutes() -> None:
    keep = KeepAlivePolicy()
    assert keep.on_demand
    d = run(
        keep,
        [
            (0.0, snap(target=1, busy=5)),
            (100.0, snap(target=5, busy=2, idle=3)),
            (599.0, snap(target=5, busy=1, idle=4)),
            (601.0, snap(target=5, busy=3, idle=2)),
        ],
    )
    assert [x.desired for x in d] == [5, 5, 5, 3]


# -- registration ---------------------------------------------------------------------------------


def test_baselines_are_named_in_scaling_policy_and_get_only_bounds() -> None:
    hpa = build_policy(parse_scaling_policy("t", {"policy": "hpa", "min": 1, "max": 5}))
    assert hpa.guards == "bounds" and isinstance(hpa.inner, HPAPolicy)
    # No burst jump (queue of 30) and the bounds hold.
    d = hpa.decide(snap(target=2, busy=2, queue=30), hpa.initial_state(), 0.0)
    assert d.desired == 3
    hot = build_policy(
        parse_scaling_policy("t", {"policy": "hpa", "target_utilization": 0.1, "max": 50})
    )
    assert isinstance(hot.inner, HPAPolicy) and hot.inner.target_utilization == 0.1
    d = hot.decide(snap(target=3, busy=3), hot.initial_state(), 0.0)
    assert d.desired == 7  # the +4 limit
    for name, cls in (
        ("kpa", KPAPolicy),
        ("rayserve", RayServePolicy),
        ("keepalive", KeepAlivePolicy),
    ):
        built = build_policy(parse_scaling_policy("t", {"policy": name}))
        assert isinstance(built.inner, cls) and built.guards == "bounds"
    fixed = build_policy(parse_scaling_policy("t", {"mode": "fixed", "min": 3}))
    assert isinstance(fixed.inner, FixedPolicy) and fixed.config.max_instances == 3
    assert fixed.decide(snap(target=3, busy=3, queue=20), fixed.initial_state(), 0.0).desired == 3


@pytest.mark.parametrize("name", ["hpa", "kpa", "rayserve", "keepalive"])
def test_baselines_are_frozen_and_pure(name: str) -> None:
    policy = build_policy(parse_scaling_policy("t", {"policy": name})).inner
    state = policy.initial_state()
    s = snap(target=4, busy=4, queue=3)
    first = policy.decide(s, state, 10.0)
    again = policy.decide(s, state, 10.0)
    assert first == again
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.name = "x"  # type: ignore[misc]
