"""Keep-warm for scale-to-zero pools: the idle-gap histogram and what it holds warm."""

from __future__ import annotations

import bisect
import dataclasses
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.pool.metrics import PoolMetrics
from shoal.scaling import build_policy, parse_scaling_policy
from shoal.scaling.keepwarm import BUCKET_S, GapHistogram, KeepWarm
from shoal.scaling.policy import FixedPolicy
from shoal.sim import simulate, workloads
from shoal.sim.workload import Exponential


def snap(*, total: int, busy: int) -> PoolMetrics:
    base: dict[str, Any] = {f.name: 0 for f in dataclasses.fields(PoolMetrics)}
    base.update(name="p", min_size=0, max_size=10, avg_wait_time=0.0, avg_execution_time=1.0)
    base.update(requests_total=total, busy=busy, in_flight=busy, size=1, target_size=1)
    return PoolMetrics(**base)


def gaps_of(*seconds: float) -> GapHistogram:
    h = GapHistogram()
    for s in seconds:
        h = h.add(s)
    return h


@given(st.lists(st.floats(0, 20_000), min_size=1, max_size=50))
def test_every_gap_is_counted_once(gaps: list[float]) -> None:
    h = gaps_of(*gaps)
    assert h.total == len(gaps)
    assert h.beyond == sum(1 for g in gaps if g >= 240 * BUCKET_S)
    assert h.quantile(0.05, upper=False) <= h.quantile(0.99, upper=True)


def test_regular_gaps_give_a_prewarm_and_a_keep_window() -> None:
    policy = KeepWarm(FixedPolicy(1))
    rng = random.Random(1)
    h = gaps_of(*(240 + rng.uniform(-25, 25) for _ in range(30)))
    prewarm, keep, _ = policy.windows(h)
    assert prewarm == pytest.approx(180 * 0.9)  # the 3rd minute's lower edge, less 10%
    assert keep == pytest.approx(300 * 1.1)  # the 5th minute's upper edge, plus 10%


@pytest.mark.parametrize(
    ("gaps", "why"),
    [
        ((240.0,) * 5, "5 of 10 gaps seen"),
        ((20_000.0,) * 12, "most gaps beyond 4 h"),
        (tuple(float(60 * i) for i in range(240)), "spread evenly"),
    ],
)
def test_an_uninformative_histogram_falls_back_to_a_fixed_keep_alive(
    gaps: tuple[float, ...], why: str
) -> None:
    policy = KeepWarm(FixedPolicy(1), fallback_keep_s=600)
    prewarm, keep, basis = policy.windows(gaps_of(*gaps))
    assert (prewarm, keep) == (0.0, 600)
    assert why in basis


def test_between_regular_calls_it_lets_go_then_prewarms() -> None:
    policy = KeepWarm(FixedPolicy(1))
    state, total, out = policy.initial_state(), 0, {}
    for t in range(240 * 20):
        call = t % 240 == 0
        total += call
        d = policy.decide(snap(total=total, busy=int(call)), state, float(t))
        state = d.state
        out[t] = d
    last = 240 * 19
    assert state.gaps.total >= 10
    assert out[last + 60].desired == 0  # well before the next call: nothing held
    assert out[last + 230].desired == 1  # shortly before it: one agent warm
    assert "keep-warm" in out[last + 230].reason


def test_a_scale_to_zero_pool_with_a_predictor_gets_keep_warm() -> None:
    chain = build_policy(parse_scaling_policy("t", {"predictor": "ml-based", "min": 0})).inner
    assert isinstance(chain, KeepWarm)
    fixed = build_policy(
        parse_scaling_policy("t", {"predictor": "ml-based", "min": 0, "idle_terminate": 120})
    ).inner
    assert not isinstance(fixed, KeepWarm)  # the user's keep-alive stands
    plain = {"min": 0, "predictor": "none"}
    assert not isinstance(build_policy(parse_scaling_policy("t", plain)).inner, KeepWarm)
    # auto forecasts by default, so a scale-to-zero auto pool keeps warm by default
    assert isinstance(build_policy(parse_scaling_policy("t", {"min": 0})).inner, KeepWarm)
    reactive = {"mode": "reactive"}  # other modes have no predictor by default
    assert not isinstance(build_policy(parse_scaling_policy("t", reactive)).inner, KeepWarm)


def test_a_sparse_periodic_load_costs_less_than_a_fixed_keep_alive() -> None:
    """A few calls every ~4 minutes: held warm only around when they come, against auto
    without keep-warm (which held one agent throughout), Lambda's 10-minute keep-alive and a
    2-minute idle_terminate (which pays a cold start per cluster)."""
    rng = random.Random(3)
    starts, t = [], 100.0
    while t < 8000:
        starts.append(t)
        t += 240 + rng.uniform(-30, 30)

    def rate(x: float) -> float:
        i = bisect.bisect_right(starts, x) - 1
        return 0.6 if i >= 0 and x - starts[i] < 5 else 0.0

    load = workloads.poisson("sparse", rate, 0.6, 7200, Exponential(1.0), 3)
    run = {"cold_start": 2.0, "min_size": 0, "max_size": 10, "seed": 1, "warmup": 600}
    warm = simulate(load, {"mode": "auto", "min": 0, "predictor": "ml-based"}, **run)
    lambda_ = simulate(load, "keepalive", **run)
    fixed = simulate(load, {"mode": "auto", "min": 0, "idle_terminate": 120}, **run)
    plain = simulate(
        load, {"mode": "auto", "min": 0, "predictor": "none"}, **run
    )  # its demand never quite reaches 0
    assert warm.agent_seconds < 0.85 * plain.agent_seconds  # (6,099 against 7,888)
    assert warm.agent_seconds < 0.7 * lambda_.agent_seconds
    assert warm.cold_starts < 0.5 * fixed.cold_starts
