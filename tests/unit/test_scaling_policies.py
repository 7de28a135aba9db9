"""Policies and guards as plain functions: a snapshot and a state in, a decision out."""

from __future__ import annotations

import dataclasses
import math

import pytest

from shoal import ConfigError
from shoal.pool.metrics import PoolMetrics
from shoal.scaling import (
    GuardedPolicy,
    RulePolicy,
    TargetUtilizationPolicy,
    build_policy,
    parse_scaling_policy,
)
from shoal.scaling.config import DEFAULT_PRICE_PER_HOUR
from shoal.scaling.policy import FixedPolicy


def snap(**fields: object) -> PoolMetrics:
    base: dict[str, object] = {f.name: 0 for f in dataclasses.fields(PoolMetrics)}
    base.update(name="p", min_size=0, max_size=100, avg_wait_time=0.0, avg_execution_time=0.0)
    base.update(fields)
    if "size" not in fields:
        base["size"] = base["target_size"]
    return PoolMetrics(**base)  # type: ignore[arg-type]


def test_target_policy_sizes_for_in_flight_demand() -> None:
    p = TargetUtilizationPolicy(target_utilization=0.7)
    d = p.decide(snap(busy=7, queue_depth=0, target_size=2), p.initial_state(), 10.0)
    assert d.desired == 10 and "needs 10" in d.reason
    d = p.decide(snap(busy=5, queue_depth=2, target_size=2), p.initial_state(), 10.0)
    assert d.desired == 10


def test_target_policy_uses_little_law_from_the_arrival_rate() -> None:
    p = TargetUtilizationPolicy(target_utilization=0.5)
    state = p.initial_state()
    # 20 arrivals a second at 0.25 s each: 5 in flight on average, so 10 at 50%.
    for t in range(0, 121):
        d = p.decide(snap(requests_total=20 * t, avg_execution_time=0.25, target_size=1), state, t)
        state = d.state
    assert state.seen.rate == pytest.approx(20.0, rel=1e-3)
    assert d.desired == 10 and "20.00/s x 0.250 s" in d.reason


def test_target_policy_smooths_a_blip() -> None:
    p = TargetUtilizationPolicy(target_utilization=0.5)
    state = p.decide(snap(busy=4, target_size=8), p.initial_state(), 0.0).state
    d = p.decide(snap(busy=12, target_size=8), state, 1.0)  # one second of a spike
    assert d.desired == 10  # 4 -> ~4.8 in flight; unsmoothed, the spike alone would ask 24


def test_target_policy_holds_within_tolerance() -> None:
    p = TargetUtilizationPolicy(target_utilization=0.7, tolerance=0.1)
    d = p.decide(snap(busy=7, target_size=11), p.initial_state(), 0.0)
    assert d.desired == 11 and "within 10%" in d.reason


def _settle(p: TargetUtilizationPolicy, rate: float, size: int, seconds: int) -> object:
    """Feed ``rate`` arrivals a second of 1-s calls for ``seconds`` to a pool of ``size``."""
    state = p.initial_state()
    total = 0.0
    for t in range(seconds + 1):
        d = p.decide(snap(requests_total=int(total), avg_execution_time=1.0, target_size=size),
                     state, float(t))  # fmt: skip
        state = d.state
        total += rate
    return d


def test_target_policy_holds_a_rise_within_the_rates_noise_and_follows_a_real_one() -> None:
    # 7/s of 1-s calls at 70% sit in 10 agents; over 10 s of smoothing a Poisson rate of ~8
    # wanders by ~0.65/s, so a smoothed 8.6/s (12.3 agents' worth) is within its noise:
    # scaling 11 -> 13 -> 11 on such excursions is the flapping the window then undoes.
    p = TargetUtilizationPolicy(target_utilization=0.7, smoothing_s=10.0)
    d = _settle(p, 8.6, 11, 120)
    assert d.desired == 11 and "noise" in d.reason  # type: ignore[attr-defined]
    d = _settle(p, 9.5, 11, 120)  # 13.6 agents' worth: past the noise, followed
    assert d.desired == 14  # type: ignore[attr-defined]
    # Falling is the stabilisation window's business: the noise band is for rises only.
    d = _settle(p, 5.0, 11, 120)
    assert d.desired == 8  # type: ignore[attr-defined]


def test_rule_policy_follows_the_seed() -> None:
    p = RulePolicy(idle_time=300)
    up = p.decide(snap(busy=9, size=10, target_size=10, utilization_rate=0.9), p.initial_state(), 0)
    assert up.desired == 11 and "utilization 90% > 80%" in up.reason
    waited = p.decide(
        snap(target_size=3, size=3, queue_depth=1, oldest_wait=1.5, utilization_rate=0.5),
        p.initial_state(),
        0,
    )
    assert waited.desired == 4 and "waited 1.5 s" in waited.reason
    low = snap(target_size=4, size=4, utilization_rate=0.1)
    d1 = p.decide(low, p.initial_state(), 0.0)
    assert d1.desired == 4
    d2 = p.decide(low, d1.state, 299.0)
    assert d2.desired == 4
    d3 = p.decide(low, d2.state, 300.0)
    assert d3.desired == 3 and "for 300 s" in d3.reason


def guarded(**policy: object) -> GuardedPolicy:
    return build_policy(parse_scaling_policy("test", {"min": 1, "max": 20, **policy}))


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    g = guarded(cooldown_period=60)
    state = g.initial_state()
    d = g.decide(snap(busy=7, target_size=2, size=2), state, 0.0)
    assert d.desired == 10
    state = d.state
    for t in (10.0, 30.0, 59.0):
        d = g.decide(snap(busy=0, target_size=10, size=10), state, t)
        state = d.state
        assert d.desired == 10 and "held at 10" in d.reason
    for t in (80.0, 100.0, 120.0, 140.0):
        d = g.decide(snap(busy=0, target_size=d.desired, size=d.desired), state, t)
        state = d.state
    assert d.desired == 1  # the window has forgotten the load; never below min_instances


def test_burst_jumps_and_burst_capacity_caps_the_jump() -> None:
    g = guarded(scale_up_rate=1, queue_depth=5, burst_capacity=8, target_utilization=1.0)
    d = g.decide(snap(busy=2, queue_depth=30, target_size=2, size=2), g.initial_state(), 0.0)
    assert d.desired == 10 and "burst: 30 queued" in d.reason  # 2 + burst_capacity
    g2 = guarded(scale_up_rate=1, target_utilization=1.0)
    d2 = g2.decide(snap(busy=2, queue_depth=3, target_size=2, size=2), g2.initial_state(), 0.0)
    assert d2.desired == 3 and "scale_up_rate 1" in d2.reason  # not a burst: rate-limited


def test_rate_limits_apply_both_ways() -> None:
    g = guarded(scale_up_rate=2, scale_down_rate=1, cooldown_period=0, queue_depth=100)
    d = g.decide(snap(busy=10, target_size=2, size=2), g.initial_state(), 0.0)
    assert d.desired == 4
    d = g.decide(snap(busy=0, target_size=8, size=8), g.initial_state(), 0.0)
    assert d.desired == 7


def test_zero_path_after_idle_terminate() -> None:
    g = build_policy(parse_scaling_policy("t", {"mode": "reactive", "max": 20}))
    assert g.config.min_instances == 0 and g.config.idle_terminate == 120
    state = g.decide(snap(target_size=3, size=3, requests_total=5), g.initial_state(), 0.0).state
    d = g.decide(snap(target_size=3, size=3, requests_total=5), state, 60.0)
    assert d.desired == 3 or "no requests" not in d.reason
    d = g.decide(snap(target_size=3, size=3, requests_total=5), d.state, 121.0)
    assert d.desired == 0 and "no requests for 121 s" in d.reason


def test_cost_cap_and_bounds() -> None:
    g = build_policy(
        parse_scaling_policy("t", {"min": 1, "max": 20, "cost_threshold": 3.0}), price_per_hour=0.5
    )
    assert g.cost_cap == 6
    d = g.decide(snap(busy=14, target_size=1, size=1), g.initial_state(), 0.0)
    assert d.desired == 6 and "cost cap 6 agents" in d.reason
    # Without a price of its own the pool's agents cost DEFAULT_PRICE_PER_HOUR.
    unpriced = build_policy(parse_scaling_policy("t", {"cost_threshold": 3.0}))
    assert unpriced.cost_cap == math.floor(3.0 / DEFAULT_PRICE_PER_HOUR + 1e-9)
    with pytest.raises(ConfigError, match="affords 2 agents, fewer than min_instances=4"):
        build_policy(
            parse_scaling_policy("t", {"min": 4, "max": 8, "cost_threshold": 1.0}),
            price_per_hour=0.5,
        )


def test_modes_fill_presets_and_explicit_keys_win() -> None:
    aggressive = parse_scaling_policy("t", {"mode": "aggressive"})
    assert (aggressive.scale_up_rate, aggressive.scale_down_rate) == (5, 1)
    reactive = parse_scaling_policy("t", {"mode": "reactive", "min": 2})
    assert reactive.min_instances == 2 and reactive.burst_capacity == 20
    conservative = parse_scaling_policy("t", {"mode": "conservative"})
    assert conservative.cooldown_period == 300 and conservative.interval == 15
    fixed = build_policy(parse_scaling_policy("t", {"mode": "fixed", "min": 3, "max": 3}))
    assert isinstance(fixed.inner, FixedPolicy)
    rule = build_policy(parse_scaling_policy("t", {"policy": "rule"}))
    assert isinstance(rule.inner, RulePolicy)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"min": 5, "max": 2}, "min_instances=5 is greater than max_instances=2"),
        ({"scale_up_threshold": 0.3, "scale_down_threshold": 0.5}, "must be below"),
        ({"scale_up_rate": -1}, "scale_up_rate=-1"),
        ({"mode": "turbo"}, "mode='turbo'"),
        ({"policy": "magic"}, "policy='magic' is not a known policy"),
        ({"predictor": "crystal-ball"}, "predictor='crystal-ball'"),
        ({"cooldown": 3}, "did you mean 'cooldown_period'"),
        ({"target_utilization": 1.5}, "target_utilization=1.5"),
    ],
)
def test_bad_scaling_policies_name_the_key(policy: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="workflow 'w' scaling_policy") as info:
        parse_scaling_policy("workflow 'w' scaling_policy", policy)
    assert message in str(info.value)


def test_unimplemented_keys_say_so_and_the_predictor_is_not_one() -> None:
    cfg = parse_scaling_policy("t", {"predictor": "ml-based", "prefer_spot": True})
    notes = cfg.unimplemented()
    assert not any("predictor" in n for n in notes)
    assert any("prefer_spot" in n for n in notes)
