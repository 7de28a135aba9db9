"""The on-demand count's two halves agree: whether a running call is likely to end within a
start (``ends_within``) and the moment it stops being so (the recheck time the count returns)
are the same boundary, in whole calls, for any run times (shoal.pool.ondemand)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shoal.pool.metrics import Window
from shoal.pool.ondemand import _outrun_s, ends_within


def window(samples: list[float]) -> Window:
    w = Window(len(samples))
    for s in samples:
        w.append(s)
    return w


def test_a_call_with_exactly_half_of_the_longer_calls_ending_within_a_start_ends_within() -> None:
    # 10 past calls, 7 of them within a 7.5-s start. A call 4.5 s in has outrun 4 of them; of
    # the 6 that ran longer, 3 (5, 6, 7 s) ended within the start: half, which counts.
    # As a ratio of shares (0.7 - 0.4) / (1 - 0.4) is 0.4999999999999999 in floating point.
    w = window([1, 2, 3, 4, 5, 6, 7, 20, 30, 40])
    assert ends_within(w, 4.5, 7.5)
    assert not ends_within(w, 5.5, 7.5)  # 5 outrun, 2 of the 5 longer end within: fewer
    assert _outrun_s(w, 7.5) == 5


@given(
    st.lists(st.floats(0.001, 50.0), min_size=1, max_size=40),
    st.floats(0.01, 60.0),
    st.floats(0.0, 60.0),
)
def test_ends_within_flips_where_the_recheck_says(
    samples: list[float], cold_s: float, elapsed_s: float
) -> None:
    w = window(samples)
    n = len(samples)
    within = sum(1 for s in samples if s <= cold_s)
    outrun = _outrun_s(w, cold_s)
    assert (outrun is None) == (2 * within < n)
    ran = sum(1 for s in samples if s <= max(0.0, elapsed_s - 1e-9))
    # by counting: of the calls that ran longer than it has, at least half end within a start
    expected = elapsed_s < cold_s - 1e-9 and ran < n and 2 * (within - ran) >= n - ran
    assert ends_within(w, elapsed_s, cold_s) == expected
    if outrun is not None and elapsed_s < cold_s - 1e-9:
        assert expected == (max(0.0, elapsed_s - 1e-9) < outrun)
