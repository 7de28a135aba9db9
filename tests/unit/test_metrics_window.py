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
