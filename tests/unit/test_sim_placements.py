"""``shoal simulate`` with placements: spot with preemptions, a cost cap, regions, outages.

All in virtual time, on the production pool with its placements; the spot market and the
regions' distances are the simulator's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import cli
from shoal.sim import Exponential, Fixed, Workload, simulate, workloads
from shoal.sim.placed import PLACED_KEYS
from shoal.sim.placements import (
    CostMeter,
    Outage,
    parse_regions,
    placement_options,
    split_origins,
)


def steady(rate: float = 4.0, duration: float = 1200.0, mean: float = 1.0) -> Workload:
    return workloads.steady(rate, duration, service=Exponential(mean), seed=3)


def run_cli(capsys: pytest.CaptureFixture[str], *flags: str) -> list[dict[str, object]]:
    code = cli.main(["simulate", "--policy", "auto", "--json", "--seed", "3", *flags])
    out, err = capsys.readouterr()
    assert code == 0, err
    result: list[dict[str, object]] = json.loads(out)
    return result


def test_spot_flags_add_the_figures_and_the_cost_adds_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = ["--workload", "steady", "--rate", "4", "--duration", "1800", "--price", "1.0"]
    [plain] = run_cli(capsys, *flags)
    assert not set(PLACED_KEYS) - {"cost_usd"} & plain.keys()  # nothing new unless asked
    [spot] = run_cli(
        capsys, *flags, "--prefer-spot", "--spot-price", "0.25",
        "--preemptions-per-hour", "6", "--notice", "30",
    )  # fmt: skip
    assert set(PLACED_KEYS) <= spot.keys()
    spot_s, od_s = float(spot["spot_agent_seconds"]), float(spot["on_demand_agent_seconds"])  # type: ignore[arg-type]
    assert spot_s > 0 and od_s > 0
    assert spot_s + od_s == pytest.approx(spot["agent_seconds"])
    assert spot["cost_usd"] == pytest.approx(spot_s * 0.25 / 3600 + od_s * 1.0 / 3600)
    assert int(spot["preemptions"]) > 0  # type: ignore[call-overload]
    assert spot["lost"] == 0
    assert float(spot["cost_usd"]) < float(plain["cost_usd"])  # type: ignore[arg-type]


def test_a_call_longer_than_the_notice_is_requeued_by_the_pool_not_lost() -> None:
    w = workloads.steady(0.5, 3600, service=Fixed(200.0), seed=1)  # calls outlast the notice
    opts = placement_options(
        price=1.0, prefer_spot=True, spot_fraction=1.0, preemptions_per_hour=3, notice=30
    )
    r = simulate(w, "auto", max_size=400, placements=opts, seed=2)
    placed = r.summary()
    assert placed["preemptions"] > 0 and placed["requeued"] > 0
    assert placed["lost"] == 0 and r.failed == 0
    # A re-queued call waited for its second run: its wait includes the lost partial run.
    assert r.max_wait_s >= 30


def test_without_preemptions_spot_preferred_costs_the_spot_share() -> None:
    w = steady()
    opts = placement_options(price=1.0, spot_price=0.3, prefer_spot=True, spot_fraction=1.0)
    r = simulate(w, "auto", placements=opts, min_size=0, seed=1)
    x = r.summary()
    assert x["on_demand_agent_seconds"] == 0 and x["preemptions"] == 0
    assert x["cost_usd"] == pytest.approx(r.agent_seconds * 0.3 / 3600)


def test_a_binding_cost_cap_is_never_exceeded_and_buys_its_agents() -> None:
    w = steady(rate=8.0, duration=900.0)
    r = simulate(w, "auto", placements=placement_options(price=2.0, cost_cap=10.0), price=2.0)
    x = r.summary()
    assert x["cost_cap_exceeded_s"] == 0
    assert r.peak_size == 5  # $10/h at $2/agent-hour
    throughput = r.requests / r.duration_s
    assert throughput == pytest.approx(5 / w.mean_duration, rel=0.05)


def test_cost_cap_seconds_are_measured_when_over() -> None:
    meter = CostMeter(cap=1.0)
    meter.change(0.6, 1, 0.0)
    meter.change(0.6, 1, 10.0)  # 1.2 $/h from t=10
    meter.change(0.6, -1, 25.0)
    assert meter.over_until(100.0) == pytest.approx(15.0)
    assert meter.peak == 2


def test_the_round_trip_is_added_to_each_response(tmp_path: Path) -> None:
    w = steady(duration=600.0)
    near = [{"region": "a", "rtt_ms": 0}]
    far = [{"region": "a", "rtt_ms": 500}]
    results = [
        simulate(w, "auto", seed=4, placements=placement_options(regions=parse_regions(doc)))
        for doc in (near, far)
    ]
    assert results[1].p99_response_s - results[0].p99_response_s == pytest.approx(0.5)
    assert results[1].p99_wait_s == results[0].p99_wait_s


def test_a_caller_in_another_region_pays_the_cross_region_trip() -> None:
    opts = placement_options(
        regions=parse_regions(
            [
                {"region": "a", "rtt_ms": 5, "max_size": 100, "load_share": 0.0},
                {
                    "region": "b",
                    "rtt_ms": 5,
                    "max_size": 0,
                    "load_share": 1.0,
                    "rtt_from": {"a": 40},
                },
            ]
        )
    )
    assert opts is not None
    a, b = opts.entries
    assert opts.rtt_s("a", a) == 0.005 and opts.rtt_s("b", a) == pytest.approx(0.075)
    assert opts.rtt_s("a", b) == 0.040
    near = simulate(steady(duration=600.0), "auto", seed=4, placements=opts)
    # every request is from b, and every agent is in a (b has no room): 5 + 70 ms each
    plain = simulate(steady(duration=600.0), "auto", seed=4)
    assert near.p99_response_s == pytest.approx(plain.p99_response_s + 0.075)


def test_load_shares_and_shifts_split_the_workload() -> None:
    w = workloads.steady(10, 3600, seed=5)
    opts = placement_options(
        regions=parse_regions(
            [
                {"region": "a", "load_share": 0.25},
                {"region": "b", "load_share": 0.75, "shift_h": 0.5},
            ]
        )
    )
    assert opts is not None
    mixed, origins = split_origins(w, opts, seed=1)
    assert len(mixed) == len(w) and sorted(mixed.durations) == sorted(w.durations)
    assert origins.count(1) / len(origins) == pytest.approx(0.75, abs=0.02)
    assert list(mixed.arrivals) == sorted(mixed.arrivals)


@settings(max_examples=60, deadline=None)
@given(
    arrivals=st.lists(st.floats(0, 999, allow_nan=False), min_size=1, max_size=60),
    shift=st.floats(-30, 30, allow_nan=False),
    share=st.floats(0, 1),
)
def test_splitting_keeps_every_request_within_the_horizon(
    arrivals: list[float], shift: float, share: float
) -> None:
    pairs = [(a, 1.0 + i) for i, a in enumerate(arrivals)]  # the duration names the request
    w = Workload.from_pairs("w", pairs, 1000.0)
    doc = [
        {"region": "a", "load_share": share},
        {"region": "b", "load_share": 1 - share, "shift_h": shift},
    ]
    opts = placement_options(regions=parse_regions(doc))
    assert opts is not None
    mixed, origins = split_origins(w, opts, seed=0)
    assert sorted(mixed.durations) == sorted(w.durations) and len(origins) == len(w)
    assert all(0 <= a < 1000.0 for a in mixed.arrivals)
    assert list(mixed.arrivals) == sorted(mixed.arrivals)
    for a, d, o in zip(mixed.arrivals, mixed.durations, origins, strict=True):
        original = pairs[int(d - 1.0)][0]
        expected = original if o == 0 or not shift else (original + shift * 3600) % 1000.0
        assert math.isclose(a, expected, abs_tol=1e-6) or math.isclose(
            abs(a - expected), 1000.0, abs_tol=1e-6
        )  # (or wrapped exactly at the horizon)


def test_an_outage_fails_starts_and_kills_the_region_and_every_request_is_counted() -> None:
    w = steady(rate=4.0, duration=1200.0)
    regions = parse_regions([{"region": "a"}, {"region": "b"}])
    opts = placement_options(regions=regions, outages=[Outage("a", 300.0, 600.0)])
    r = simulate(w, "auto", seed=2, min_size=2, placements=opts)
    x = r.summary()
    assert x["requests"] == len(w)
    # Answered or lost, never both, never neither.
    assert r.failed == x["lost"]
    calm = simulate(w, "auto", seed=2, min_size=2, placements=placement_options(regions=regions))
    assert calm.agents_started < r.agents_started  # the region's agents had to be replaced


def test_the_same_seed_gives_the_same_run() -> None:
    opts = placement_options(price=1.0, prefer_spot=True, preemptions_per_hour=10)
    a = simulate(steady(duration=600.0), "auto", seed=9, placements=opts).summary()
    b = simulate(steady(duration=600.0), "auto", seed=9, placements=opts).summary()
    assert a == b


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--spot-price", "-1"], "--spot-price -1.0 must be $ per agent-hour >= 0"),
        (["--preemptions-per-hour", "-2"], "--preemptions-per-hour -2.0 must be a rate >= 0"),
        (["--notice", "0"], "--notice 0.0 must be seconds > 0"),
        (["--cost-cap", "0"], "--cost-cap 0.0 must be $ per hour > 0"),
        (["--spot-fraction", "2"], "--spot-fraction 2.0 must be within [0, 1]"),
        (["--region-outage", "east"], "--region-outage 'east': give NAME:START_S:END_S"),
        (["--region-outage", "east:9:3"], "need 0 <= START_S < END_S"),
        (["--region-outage", "mars:0:10"], "--region-outage mars: no such region; known: local"),
        (["--regions", "/nonexistent/r.json"], "--regions /nonexistent/r.json: cannot read it"),
    ],
)
def test_bad_flags_are_one_line_errors(
    flags: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["simulate", "--workload", "steady", "--duration", "60", *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ("{", "not JSON (Expecting property name"),
        ("{}", "expected a non-empty JSON list of placements"),
        ('[{"region": "a", "capacity": "cheap"}]', "capacity"),
        ('[{"region": "a", "colour": "red"}]', "unknown key 'colour'"),
        ('[{"region": "a", "load_share": 0.5}]', "load_share values add up to 0.5, not 1"),
        ('[{"region": "a"}, {"region": "a"}]', "two placements are named 'a-on_demand'"),
        ('[{"region": "a", "shift_h": "x"}]', "shift_h='x' must be a number of hours"),
        ('[{"region": "a"}]', '--prefer-spot: no placement is on spot; add one with "capacity"'),
    ],
)
def test_a_bad_regions_file_is_a_one_line_error(
    doc: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "regions.json"
    path.write_text(doc)
    code = cli.main(
        ["simulate", "--workload", "steady", "--duration", "60", "--regions", str(path),
         "--prefer-spot"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1, err
