"""The metrics window: its streaming mean and quantiles equal a fresh sort of the same samples."""

from __future__ import annotations

import math
import random

import pytest

from shoal.pool.metrics import RateCounter, Window


def _nearest_rank(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.mark.parametrize("batch", [1, 3, 100, 700, 5000])
def test_window_matches_a_full_sort_whatever_the_reads_between_appends(batch: int) -> None:
    rng = random.Random(batch)
    window = Window(512)
    kept: list[float] = []
    for _ in range(40):
        for _ in range(batch):
            value = rng.lognormvariate(0, 2)
            window.append(value)
            kept = [*kept, value][-512:]
        for q in (0.0, 0.5, 0.9, 0.99, 1.0):
            assert window.quantile(q) == _nearest_rank(kept, q)
        assert window.mean() == pytest.approx(math.fsum(kept) / len(kept), rel=1e-12)
        assert len(window) == len(kept)


def test_an_empty_window_reads_zero() -> None:
    window = Window()
    assert window.mean() == 0.0
    assert window.quantile(0.99) == 0.0


def test_the_mean_does_not_drift_over_many_incremental_reads() -> None:
    window = Window(64)
    for i in range(100_000):
        window.append(1e9 if i % 2 else 1e-9)
        if i % 7 == 0:
            window.mean()
    assert window.mean() == pytest.approx((1e9 + 1e-9) / 2, rel=1e-12)


def test_rate_counter_keeps_its_running_total_in_step_with_the_buckets() -> None:
    counter = RateCounter()
    for t in range(200):
        counter.add(float(t), 2)
    # the last minute: 59 full buckets in the window, plus the current one
    assert counter.rate(199.5) == pytest.approx(2 * 60 / 60)
    assert counter.rate(1000.0) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_repeated_values_and_signed_zeros_keep_the_sorted_window_exact(seed: int) -> None:
    """A sample that replaces an equal one leaves the sorted list alone (most waits are 0.0);
    the list must still be, float for float, the one the window's insert-and-remove builds,
    zeros of either sign included once a -0.0 has come in."""
    rng = random.Random(seed)
    window = Window(64)
    kept: list[float] = []
    values = [0.0, 0.0, 0.0, 1.5, 2.0, -1.0] + ([-0.0] if seed % 2 else [])
    for _ in range(60):
        for _ in range(rng.choice([1, 2, 5, 15])):
            value = rng.choice(values)
            window.append(value)
            kept = [*kept, value][-64:]
        ranks = [window.quantile((k + 0.5) / len(kept)) for k in range(len(kept))]
        assert ranks == sorted(kept)
        if seed % 2 == 0:  # no -0.0 came in: every zero is +0.0
            assert all(math.copysign(1.0, r) > 0 for r in ranks if r == 0.0)
        assert window.mean() == pytest.approx(math.fsum(kept) / len(kept), abs=1e-12)
