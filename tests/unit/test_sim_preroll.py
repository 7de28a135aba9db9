"""The warm-up pre-roll is a fresh draw of the workload's shape, not a replay of it."""

from __future__ import annotations

import bisect

from shoal.sim import simulate, workloads
from shoal.sim.preroll import preroll
from shoal.sim.workload import Workload


def _counts(times: list[float], width: float, span: float) -> list[int]:
    edges = [k * width for k in range(int(span // width) + 1)]
    return [
        bisect.bisect_left(times, edges[k + 1]) - bisect.bisect_left(times, edges[k])
        for k in range(len(edges) - 1)
    ]


def test_preroll_of_a_generated_load_is_new_arrivals_of_the_same_shape() -> None:
    # bursts of 8x every 300 s: the shape is unmistakable at 30-s resolution
    load = workloads.bursty(10, 1200, burst=8, on_s=30, off_s=270, seed=3)
    pre = preroll(load, 600.0, seed=3)
    times = [a for a, _ in pre]
    counted = [a for a in load.arrivals if a < 600.0]
    assert times == sorted(times) and all(0 <= a < 600 for a in times)
    assert not set(times) & set(counted)  # a replay would share every arrival
    mine, theirs = _counts(times, 30.0, 600.0), _counts(counted, 30.0, 600.0)
    assert mine != theirs  # not the same noise either
    bursts = [k for k in range(20) if k % 10 == 9]  # [270, 300) and [570, 600)
    for k in range(20):
        # same shape: each 30-s bin near the rate the shape gives it (10/s or 80/s)
        expected = 30 * (80 if k in bursts else 10)
        assert abs(mine[k] - expected) < 5 * expected**0.5, (k, mine[k], expected)
    assert abs(len(pre) - len(counted)) < 5 * len(counted) ** 0.5


def test_preroll_is_deterministic_and_repeats_a_short_load_with_new_draws() -> None:
    load = workloads.steady(20, 200, seed=5)
    one, two = preroll(load, 600.0, seed=5), preroll(load, 600.0, seed=5)
    assert one == two
    first = [a for a, _ in one if a < 200]
    second = [a - 200 for a, _ in one if 200 <= a < 400]
    assert first and second and first != second  # each pass is drawn anew
    assert max(a for a, _ in one) < 600.0


def test_preroll_of_a_trace_follows_its_minutes_with_its_own_run_times() -> None:
    # a trace (no generator): quiet first minute, busy second, none after
    pairs = [(i * 0.5, 3.0) for i in range(120)] + [(60 + i * 0.05, 7.0) for i in range(1200)]
    trace = Workload.from_pairs("trace", pairs, horizon=180)
    pre = preroll(trace, 180.0, seed=1)
    times = [a for a, _ in pre]
    assert not set(times) & set(trace.arrivals)
    assert {d for _, d in pre} <= {3.0, 7.0}
    quiet, busy, idle = _counts(times, 60.0, 180.0)
    assert abs(quiet - 120) < 5 * 120**0.5 and abs(busy - 1200) < 5 * 1200**0.5 and idle == 0
    assert preroll(trace, 180.0, seed=1) == pre
    assert preroll(trace, 180.0, seed=2) != pre


def test_a_run_with_a_warmup_is_the_same_for_the_same_seed() -> None:
    load = workloads.diurnal(5, 300, seed=2)
    runs = [
        simulate(load, "auto+ml-based", cold_start=2.0, max_size=40, seed=2, warmup=120)
        for _ in range(2)
    ]
    assert runs[0].summary() == runs[1].summary()
    assert runs[0].forecast_mase == runs[1].forecast_mase


def test_a_generated_workload_still_pickles_and_is_then_redrawn_as_a_trace() -> None:
    import pickle

    load = workloads.ramp(5, 600, seed=4)
    back = pickle.loads(pickle.dumps(load))
    assert back.arrivals == load.arrivals and back.horizon == load.horizon
    assert back.redraw is None and load.redraw is not None
    pre = preroll(back, 600.0, seed=4)
    assert pre and not {a for a, _ in pre} & set(load.arrivals)
