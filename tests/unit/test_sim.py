"""The simulator against answers known in closed form, and its results, seeds and command."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
from pathlib import Path

import pytest

from shoal.backends import AgentSpec
from shoal.errors import ConfigError
from shoal.sim import SUMMARY_KEYS, Exponential, Fixed, Workload, simulate, workloads
from shoal.sim.backend import SimBackend
from shoal.sim.cli import add_parser, run


def every_second(n: int, duration: float) -> Workload:
    return Workload("deterministic", tuple(float(i) for i in range(n)), (duration,) * n)


def test_a_fixed_pool_under_a_deterministic_load_waits_exactly_as_computed() -> None:
    # Two agents, an arrival every second, each call 2.5 s: the pool serves 0.8 calls/s, so
    # every pair of arrivals waits half a second more than the pair before.
    result = simulate(every_second(10, 2.5), "fixed:2", cold_start=5.0, interval=1.0)
    assert result.policy == "fixed:2"
    waits = result.series.mean_wait[:10]  # one arrival per 1-s sample: its own wait
    assert [round(w, 9) for w in waits] == [0.5 * (k // 2) for k in range(10)]
    assert result.max_wait_s == pytest.approx(2.0)
    assert result.mean_wait_s == pytest.approx(1.0)
    # The last call starts at 9 + 2 and ends at 13.5; two agents all along, busy 25 s of it.
    assert result.duration_s == pytest.approx(13.5)
    assert result.agent_seconds == pytest.approx(27.0)
    assert result.busy_agent_seconds == pytest.approx(25.0)
    assert result.idle_agent_seconds == pytest.approx(2.0)
    assert (result.cold_starts, result.scale_events, result.reversals) == (0, 0, 0)
    assert result.peak_size == 2 and result.failed == 0


def test_enough_agents_means_no_wait_and_a_cold_pool_pays_one_cold_start() -> None:
    result = simulate(every_second(10, 1.5), "fixed:2", cold_start=5.0)
    assert result.p99_wait_s == 0 and result.cold_starts == 0
    # One agent kept, on demand off: the second caller waits for the first call to end.
    one = simulate(every_second(2, 1.5), "fixed:1")
    assert one.max_wait_s == pytest.approx(0.5)


def erlang_c(c: int, a: float) -> float:
    """The probability that a caller waits in an M/M/c queue with offered load ``a``."""
    below = sum(a**k / math.factorial(k) for k in range(c))
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (below + top)


def test_an_m_m_c_queue_waits_as_erlang_c_says() -> None:
    # c = 4 agents, 30 arrivals/s, 0.1 s mean run time: rho = 0.75. About 90,000 calls; over
    # seeds the measured mean wait spreads by about 7% around the analytic one.
    c, rate, mean_run = 4, 30.0, 0.1
    load = workloads.steady(rate, 3000, service=Exponential(mean_run), seed=1)
    result = simulate(load, f"fixed:{c}", seed=1)
    p_wait = erlang_c(c, rate * mean_run)
    drain = c / mean_run - rate  # the queue's exponential tail rate
    assert result.mean_wait_s == pytest.approx(p_wait / drain, rel=0.10)
    # P(wait > t) = C e^(-drain t): the 95th percentile is where that is 5%.
    assert result.p95_wait_s == pytest.approx(math.log(p_wait / 0.05) / drain, rel=0.10)
    assert result.p50_wait_s < 0.01  # about half the callers (1 - C) do not wait at all


def test_runs_are_deterministic_for_a_seed() -> None:
    load = workloads.generate("bursty", rate=4, duration=600, seed=7)
    again = workloads.generate("bursty", rate=4, duration=600, seed=7)
    assert load.arrivals == again.arrivals and load.durations == again.durations
    first = simulate(load, "auto", cold_start=Exponential(2.0), seed=3, max_size=50)
    second = simulate(again, "auto", cold_start=Exponential(2.0), seed=3, max_size=50)
    assert first.summary() == second.summary() and first.series == second.series
    other = workloads.generate("bursty", rate=4, duration=600, seed=8)
    assert other.arrivals != load.arrivals


def test_the_summary_has_the_documented_keys_and_cost_with_a_price() -> None:
    load = workloads.steady(5, 120, service=Fixed(0.5), seed=1)
    result = simulate(load, "kpa", sla=1.0, price=0.36, max_size=20)
    summary = result.summary()
    assert list(summary)[: len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    assert result.cost_usd == pytest.approx(result.agent_seconds / 3600 * 0.36)
    assert summary["cost_usd"] == result.cost_usd
    assert 0 <= summary["sla_violation_rate"] <= 1
    assert summary["requests"] == len(load)
    json.dumps(summary)


def test_agent_seconds_include_starting_agents_and_cold_starts_are_counted() -> None:
    # One warm agent and three callers at once: with on-demand starts, the two who find it
    # busy wait one cold start each for an agent of their own.
    load = Workload("trio", (0.0, 0.0, 0.0), (10.0, 10.0, 10.0))
    result = simulate(load, "auto", cold_start=3.0, max_size=10)
    assert result.cold_starts == 2
    assert result.p99_wait_s == pytest.approx(3.0)
    # The autoscaler adds warm agents of its own a second later; every start costs 3 s.
    assert result.agents_started >= 2
    assert result.starting_agent_seconds == pytest.approx(3.0 * result.agents_started)
    assert result.agent_seconds >= 3 * 10 + result.starting_agent_seconds
    # A baseline without on-demand starts makes them wait for its own decision instead.
    hpa = simulate(load, "hpa", cold_start=3.0, max_size=10)
    # HPA's first sync that sees the load reads metrics 15 s old: at 16 s it adds one agent
    # (100% busy against an 80% target: x1.25, rounded up), ready at 19 s; the second caller
    # takes the first caller's agent at 10 s, the third waits for the new one.
    assert hpa.p99_wait_s == pytest.approx(19.0)


def cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="shoal")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    out = io.StringIO()
    status = run(parser.parse_args(["simulate", *argv]), out)
    return status, out.getvalue()


def test_the_command_prints_json_with_exactly_the_documented_keys(tmp_path: Path) -> None:
    status, out = cli(
        "--workload", "steady", "--rate", "3", "--duration", "120", "--json",
        "--policy", "auto", "--policy", "hpa", "--policy", "fixed:3",
    )  # fmt: skip
    assert status == 0
    rows = json.loads(out)
    assert [r["policy"] for r in rows] == ["auto", "hpa", "fixed:3"]
    for row in rows:
        assert set(SUMMARY_KEYS) <= set(row)


def test_the_command_prints_a_table_and_reads_a_trace(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("time_s,duration_s\n" + "".join(f"{i / 4},0.5\n" for i in range(200)))
    status, out = cli("--trace", str(trace), "--policy", "keepalive", "--sla", "1", "--price", "1")
    assert status == 0
    assert "keepalive" in out and "SLA missed" in out and "cost $" in out
    assert "200 requests" in out


def test_unknown_names_fail_with_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("--workload", "steady", "--policy", "magic")[0] == 2
    err = capsys.readouterr().err
    assert "unknown policy 'magic'" in err and "hpa" in err and "keepalive" in err
    assert cli("--workload", "tsunami")[0] == 2
    err = capsys.readouterr().err
    assert "unknown workload 'tsunami'" in err and "flash" in err and "diurnal" in err


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "runs.png"
    status, _ = cli(
        "--workload", "flash", "--rate", "2", "--duration", "300", "--plot", str(out),
        "--policy", "auto", "--policy", "kpa",
    )  # fmt: skip
    assert status == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_reports_a_bad_plot_path_as_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from shoal import cli

    code = cli.main(
        [
            "simulate",
            "--workload",
            "steady",
            "--duration",
            "30",
            "--policy",
            "auto",
            "--plot",
            "/nonexistent/folder/out.png",
        ]
    )
    assert code == 2
    assert "No such file or directory" in capsys.readouterr().err


def test_on_demand_makes_a_baseline_predict_a_shoal_pool_with_that_policy() -> None:
    args = ("--workload", "bursty", "--rate", "3", "--duration", "900", "--json", "--seed", "1")
    status, own = cli(*args, "--policy", "hpa", "--policy", "auto")
    assert status == 0
    status, forced = cli(*args, "--policy", "hpa", "--policy", "auto", "--on-demand")
    assert status == 0
    status, never = cli(*args, "--policy", "auto", "--no-on-demand")
    assert status == 0
    hpa, auto = json.loads(own)
    hpa_od, auto_od = json.loads(forced)
    (auto_never,) = json.loads(never)
    assert (hpa["policy"], hpa_od["policy"]) == ("hpa", "hpa (on demand)")
    assert auto_od == auto  # shoal's own already start on demand: nothing changes
    assert auto_never["policy"] == "auto (no on-demand)"
    # Starting agents for waiting callers cuts HPA's waits on bursts.
    assert hpa_od["p99_wait_s"] < hpa["p99_wait_s"]
    assert hpa_od["cold_starts"] > hpa["cold_starts"]


async def test_starts_slow_down_while_others_are_under_way() -> None:
    """Each agent already starting adds ``growth`` to a start (real hosts share CPU and disk)."""
    backend = SimBackend(2.0, growth=0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    agents = await asyncio.gather(
        *(backend.start(AgentSpec(pool="p", agent_id=f"a{i}")) for i in range(5))
    )
    took = sorted(round(a.ready_at - t0, 6) for a in agents)
    assert took == pytest.approx([2.0 * (1 + 0.05 * k) for k in range(5)])
    before = loop.time()
    alone = await backend.start(AgentSpec(pool="p", agent_id="late"))
    assert alone.ready_at - before == pytest.approx(2.0)  # nothing else starting: plain 2 s


def test_growing_cold_starts_cost_waits_in_a_flash_crowd() -> None:
    load = workloads.flash(5, 900, seed=2)
    plain = simulate(load, "auto", cold_start=2.0, max_size=200)
    slow = simulate(load, "auto", cold_start=2.0, max_size=200, cold_start_growth=0.011)
    assert slow.starting_agent_seconds > plain.starting_agent_seconds
    assert slow.mean_wait_s > plain.mean_wait_s
    with pytest.raises(ConfigError, match="cold_start_growth=-1 must be a fraction >= 0"):
        simulate(load, "auto", cold_start_growth=-1)
