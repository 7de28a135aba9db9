"""Workloads: trace files (and their errors, line by line), the Azure format, generators."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import ConfigError, ShoalError
from shoal.sim import Exponential, Fixed, LogNormal, TraceError, load_trace, workloads


def write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_csv_trace_with_or_without_header_is_read_and_sorted(tmp_path: Path) -> None:
    with_header = write(tmp_path, "time_s,duration_s\n2.0,0.5\n0.5,1.5\n\n# a comment\n1,2\n")
    w = load_trace(with_header)
    assert w.arrivals == (0.5, 1.0, 2.0) and w.durations == (1.5, 2.0, 0.5)
    assert w.horizon == 2.0 and w.name == "trace" and len(w) == 3
    assert list(w) == [(0.5, 1.5), (1.0, 2.0), (2.0, 0.5)]
    bare = write(tmp_path, "0,1\n3,1\n", "bare.csv")
    assert load_trace(bare).arrivals == (0.0, 3.0)


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("time_s,duration_s\n1,2\n2,x\n", 3, "duration_s='x' is not a number"),
        ("1,2\n2\n", 2, "expected 2 fields (time_s,duration_s), found 1"),
        ("1,2,3\n", 1, "expected 2 fields"),
        ("1,2\n-4,1\n", 2, "time_s=-4 must be a finite number >= 0"),
        ("1,2\n4,inf\n", 2, "duration_s=inf must be a finite number >= 0"),
        ("when,how_long\n1,2\n", 1, "header 'when,how_long' is not 'time_s,duration_s'"),
        ("1,2\ntime_s,duration_s\n", 2, "time_s='time_s' is not a number"),
    ],
)
def test_a_malformed_trace_names_the_file_line_and_problem(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    err = info.value
    assert isinstance(err, ConfigError) and isinstance(err, ShoalError)
    assert err.line == line and problem in err.problem
    assert str(err).startswith(f"trace {path}:{line}: ")


def test_missing_and_empty_traces_are_clear(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot be read"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match="holds no requests"):
        load_trace(write(tmp_path, "time_s,duration_s\n"))


AZURE_HEADER = "HashOwner,HashApp,HashFunction,Trigger," + ",".join(str(i) for i in range(1, 4))


def test_the_azure_format_spreads_each_minute_over_that_minute(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"{AZURE_HEADER}\no1,a1,f1,http,3,0,1\no2,a2,f2,timer,2,5,0\n",
        "invocations_per_function_md.anon.d01.csv",
    )
    w = load_trace(path, service=Fixed(0.25), seed=4)
    assert len(w) == 11 and w.horizon == 180.0
    per_minute = [sum(1 for t in w.arrivals if m * 60 <= t < (m + 1) * 60) for m in range(3)]
    assert per_minute == [5, 5, 1]
    assert list(w.arrivals) == sorted(w.arrivals) and set(w.durations) == {0.25}
    assert load_trace(path, service=Fixed(0.25), seed=4).arrivals == w.arrivals
    assert load_trace(path, service=Fixed(0.25), seed=5).arrivals != w.arrivals


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (f"{AZURE_HEADER}\no,a,f,http,1,x,0\n", 2, "minute 2: count 'x' is not an integer"),
        (f"{AZURE_HEADER}\no,a,f,http,1,2\n", 2, "expected 7 fields, found 6"),
        (f"{AZURE_HEADER}\no,a,f,http,1,-2,0\n", 2, "minute 2: count -2 < 0"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,3\n", 1, "column 6 of the header is '3'"),
    ],
)
def test_a_malformed_azure_file_names_the_line(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    with pytest.raises(TraceError) as info:
        load_trace(write(tmp_path, text))
    assert info.value.line == line and problem in info.value.problem


def test_generators_are_seeded_and_shaped() -> None:
    steady = workloads.steady(20, 300, seed=1)
    assert len(steady) == pytest.approx(6000, rel=0.05)
    assert steady.mean_duration == pytest.approx(1.0, rel=0.05)
    assert workloads.steady(20, 300, seed=1).arrivals == steady.arrivals
    flash = workloads.flash(10, 900, seed=1)
    before = sum(1 for t in flash.arrivals if 200 <= t < 300)
    after = sum(1 for t in flash.arrivals if 300 <= t < 310)
    assert before == pytest.approx(1000, rel=0.15) and after / 10 > 5 * before / 100
    ramp = workloads.ramp(5, 1000, seed=1)
    middle = sum(1 for t in ramp.arrivals if 450 <= t < 550) / 100
    ends = sum(1 for t in ramp.arrivals if t < 50 or t >= 950) / 100
    assert middle > 5 * ends
    bursty = workloads.bursty(5, 600, seed=1)
    assert bursty.peak_load() == pytest.approx(8 * 5 * 30 / 60 + 5 * 30 / 60, rel=0.2)
    longtail = workloads.longtail(10, 600, seed=1)
    ordered = sorted(longtail.durations)
    assert ordered[len(ordered) // 2] < 0.5 < 5 < ordered[int(0.99 * len(ordered))]
    with pytest.raises(ConfigError, match="unknown workload 'nope'; known: steady, diurnal"):
        workloads.generate("nope")


def test_distributions_have_their_means() -> None:
    import random

    rng = random.Random(1)
    for dist in (Fixed(2.0), Exponential(2.0), LogNormal(2.0, 1.0)):
        samples = [dist.sample(rng) for _ in range(40_000)]
        assert sum(samples) / len(samples) == pytest.approx(dist.mean, rel=0.05)
    with pytest.raises(ConfigError, match="must be a finite number of seconds > 0"):
        Exponential(0.0)
