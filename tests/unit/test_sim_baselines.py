"""The field's autoscalers as pure policies: hand-made snapshots in, their decisions out."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from shoal.pool.metrics import PoolMetrics
from shoal.scaling import build_policy, parse_scaling_policy
from shoal.scaling.policy import Decision, FixedPolicy
from shoal.sim import HPAPolicy, KeepAlivePolicy, KPAPolicy, RayServePolicy

# The metric delays have their own tests below; these check the algorithms on fresh metrics.
FRESH_HPA: dict[str, Any] = {"metric_lag_s": 0.0}
FRESH_RAY: dict[str, Any] = {"metrics_interval_s": 0.0, "target_ongoing_requests": 2.0}


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
    hpa = HPAPolicy(**FRESH_HPA)
    d = run(hpa, [(0.0, snap(target=9, busy=7, idle=2)), (5.0, snap(target=9, busy=9))])
    assert d[0].desired == 9 and "within tolerance" in d[0].reason  # 78% vs 80%
    assert d[1].desired == 9 and d[1].reason == "between syncs"


def test_hpa_scales_by_the_utilization_ratio_with_its_up_limit() -> None:
    d = run(HPAPolicy(**FRESH_HPA), [(0.0, snap(target=2, busy=2))])
    assert d[0].desired == 3  # 100% / 80% x 2 ready = 2.5, rounded up
    hot = HPAPolicy(target_utilization=0.1, **FRESH_HPA)
    assert run(hot, [(0.0, snap(target=10, busy=10))])[0].desired == 20  # max(+4, +100%)
    assert run(hot, [(0.0, snap(target=2, busy=2))])[0].desired == 6  # +4 beats +100%


def test_hpa_counts_starting_pods_as_idle_when_scaling_up() -> None:
    d = run(HPAPolicy(**FRESH_HPA), [(0.0, snap(target=4, busy=2, starting=2))])
    assert d[0].desired == 4 and "not ready" in d[0].reason


def test_hpa_scale_down_takes_the_highest_recommendation_of_five_minutes() -> None:
    d = run(
        HPAPolicy(**FRESH_HPA),
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
    ray = RayServePolicy(**FRESH_RAY)
    busy = [(float(t), snap(target=2, busy=2, queue=4)) for t in range(0, 31)]
    decisions = run(ray, busy)
    assert all(d.desired == 2 for d in decisions[:30])  # wants 3 (6 ongoing / 2) for 30 s
    assert decisions[30].desired == 3


def test_rayserve_resets_on_a_decision_the_other_way_and_waits_long_to_scale_down() -> None:
    ray = RayServePolicy(look_back_period_s=1.0, **FRESH_RAY)
    steps = [(float(t), snap(target=2, busy=2, queue=4)) for t in range(0, 20)]
    steps += [(20.0, snap(target=2, busy=2, idle=0))]  # 2 ongoing: steady, resets
    steps += [(float(t), snap(target=2, busy=2, queue=4)) for t in range(21, 51)]
    decisions = run(ray, steps)
    assert all(d.desired == 2 for d in decisions[:-1]) and decisions[-1].desired == 2
    quiet = [(float(t), snap(target=6, busy=1, idle=5)) for t in range(0, 601)]
    decisions = run(ray, quiet)
    assert decisions[599].desired == 6 and decisions[600].desired == 1


def test_rayserve_scales_from_zero_at_once() -> None:
    d = run(RayServePolicy(**FRESH_RAY), [(0.0, snap(target=0, queue=1))])
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
    # No burst jump (queue of 30) and the bounds hold; the sync at 15 s reads the 0-s sample.
    first = hpa.decide(snap(target=2, busy=2, queue=30), hpa.initial_state(), 0.0)
    assert first.desired == 2
    d = hpa.decide(snap(target=2, busy=2, queue=30), first.state, 15.0)
    assert d.desired == 3
    hot = build_policy(
        parse_scaling_policy("t", {"policy": "hpa", "target_utilization": 0.1, "max": 50})
    )
    assert isinstance(hot.inner, HPAPolicy) and hot.inner.target_utilization == 0.1
    d = hot.decide(snap(target=3, busy=3), hot.initial_state(), 0.0)
    d = hot.decide(snap(target=3, busy=3), d.state, 15.0)
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


@pytest.mark.parametrize("name", ["hpa", "hpa-inflight", "kpa", "rayserve", "keepalive"])
def test_baselines_are_frozen_and_pure(name: str) -> None:
    policy = build_policy(parse_scaling_policy("t", {"policy": name})).inner
    state = policy.initial_state()
    s = snap(target=4, busy=4, queue=3)
    first = policy.decide(s, state, 10.0)
    again = policy.decide(s, state, 10.0)
    assert first == again
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.name = "x"  # type: ignore[misc]


# -- metric delays and the in-flight HPA -----------------------------------------------------


def test_hpa_reads_metrics_fifteen_seconds_old() -> None:
    hpa = HPAPolicy()
    # Busy from 16 s on: the sync at 30 s still sees (0, 15] (idle), the one at 45 s (15, 30].
    steps = [(float(t), snap(target=4, idle=4)) for t in range(0, 16)]
    steps += [(float(t), snap(target=4, busy=4)) for t in range(16, 46)]
    d = run(hpa, steps)
    assert d[30].reason.startswith("utilization 0% (15 s old)")
    assert d[45].desired == 5  # 100% / 80% x 4


def test_hpa_sets_aside_pods_ready_for_less_than_one_metric_window() -> None:
    hpa = HPAPolicy(metric_lag_s=0.0)
    steps = [(0.0, snap(target=4, busy=2, idle=0, starting=2)), (14.0, snap(target=4, busy=4))]
    steps += [(15.0, snap(target=4, busy=4))]
    d = run(hpa, steps)
    # At 15 s two of the four pods became ready 1 s ago: set aside as not ready (idle), so the
    # 100% of the two measured ones is damped to 50% over four: hold.
    assert d[2].desired == 4 and "2 pod(s) not ready" in d[2].reason


def test_hpa_inflight_counts_the_queue() -> None:
    hpa = build_policy(parse_scaling_policy("t", {"policy": "hpa-inflight", "max": 50})).inner
    assert isinstance(hpa, HPAPolicy) and hpa.metric == "inflight"
    fresh = dataclasses.replace(hpa, metric_lag_s=0.0)
    d = run(fresh, [(0.0, snap(target=4, busy=4, queue=4))])
    assert d[0].desired == 8  # 2 in flight per pod / 0.8 x 4 = 10, limited to +4 per sync
    cpu = run(HPAPolicy(**FRESH_HPA), [(0.0, snap(target=4, busy=4, queue=4))])
    assert cpu[0].desired == 5  # CPU saturates at 100%: x1.25


def test_rayserve_sees_metrics_pushed_every_ten_seconds() -> None:
    ray = RayServePolicy(upscale_delay_s=0.0)
    quiet = [(float(t), snap(target=1, busy=1)) for t in range(0, 10)]
    loaded = [(float(t), snap(target=1, busy=1, queue=5)) for t in range(10, 21)]
    d = run(ray, quiet + loaded)
    assert d[10].desired > 1  # pushed at 10 s
    pushes = [t for t, _ in d[-1].state.samples]
    assert pushes == [0.0, 10.0, 20.0]


def test_rayserve_targets_one_ongoing_request_per_one_call_agent() -> None:
    ray = RayServePolicy(upscale_delay_s=0.0, metrics_interval_s=0.0)
    d = run(ray, [(0.0, snap(target=2, busy=2, queue=2))])
    assert d[0].desired == 4  # 4 ongoing / 1 per replica
