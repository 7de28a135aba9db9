"""Workflows and `shoal run` on real agent processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal import Runtime, StepFailed, cli
from tests.integration import flows

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("no_leaked_children")


@pytest.mark.real_time
async def test_setup_runs_once_per_agent_and_items_keep_their_order() -> None:
    async with Runtime() as rt:
        out = await rt.run(flows.Warm, 40)
        again = await rt.run(flows.Warm, 10)
    assert out["items"] == list(range(40))
    assert len(out["pids"]) == 2 and os.getpid() not in out["pids"]
    assert out["setups"] == [1]  # every agent built its instance once, for all its items
    assert again["pids"] == out["pids"]  # the second run found the same warm agents
    assert out["parent"] == os.getpid()


@pytest.mark.real_time
async def test_a_failing_step_carries_the_remote_traceback() -> None:
    async with Runtime() as rt:
        with pytest.raises(StepFailed, match="step 'each' item 2 raised KeyError") as info:
            await rt.run(flows.Boom, [0, 1, 2, 3])
        remote = info.value.__cause__
        assert isinstance(remote, KeyError)
        assert "raise KeyError" in str(remote.__cause__)
        assert rt.pool("boom.each").metrics.size == 2


@pytest.mark.real_time
async def test_mapreduce_on_processes() -> None:
    async with Runtime() as rt:
        assert await rt.run(flows.char_count, ["ab", "cde", ""]) == 5


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_shoal_run_json_prints_one_object() -> None:
    done = run_cli("run", "examples/data_pipeline.py", "--input", '{"n": 12}', "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"result", "wall_s", "steps", "pools"} <= set(report)
    assert report["result"]["sensors"] == 12
    assert [s["name"] for s in report["steps"]] == ["fetch_data_list", "process_item", "aggregate"]
    assert report["steps"][1]["items"] == 12
    assert report["pools"]["data_pipeline.process_item"]["agents_started"] == 10


def test_shoal_run_prints_result_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["run", "tests/integration/flows.py:char_count", "--input", '["a", "bb"]'])
    out = capsys.readouterr().out
    assert code == 0
    assert "result:\n3" in out and "char_count succeeded in" in out
    assert "warm hits / cold starts" in out


def test_shoal_run_step_failure_exits_1_and_names_the_item(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(["run", "tests/integration/flows.py:Boom", "--input", "[0, 1, 2]"])
    err = capsys.readouterr().err
    assert code == 1
    assert "step 'each' item 2 raised KeyError" in err and "in the agent:" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope.py"], "no such file: nope.py"),
        (["tests/integration/flows.py"], "defines 7 workflows or mapreduces; name one"),
        (["tests/integration/flows.py:Missing"], "has no attribute 'Missing'"),
        (["tests/integration/flows.py:SETUPS"], "is not a workflow or mapreduce"),
        (["examples/data_pipeline.py", "--input", "{n: 1}"], "--input is not valid JSON"),
        (["examples/data_pipeline.py", "--input", "@missing.json"], "cannot read the input file"),
    ],
)
def test_shoal_run_bad_input_is_a_usage_error(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", *args]) == 2
    assert message in capsys.readouterr().err


def test_shoal_run_file_that_does_not_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken_flow.py"
    bad.write_text("import not_a_module_anywhere\n")
    assert cli.main(["run", str(bad)]) == 2
    assert "failed to import: ModuleNotFoundError" in capsys.readouterr().err


def test_ctrl_c_stops_shoal_run_cleanly(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoal.cli",
            "run",
            "tests/integration/flows.py:Slow",
            "--input",
            json.dumps([str(marker), str(marker)]),
            "--grace",
            "0.5",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 2:  # both items are running in their agents
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    agents = [int(p.stem) for p in tmp_path.glob("*.pid")]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "SIGINT: took no new work" in err and "stopped every agent" in err
    assert not [pid for pid in agents if _alive(pid)]


def _pids_in(folder: Path) -> list[int]:
    """The agents that wrote their pid into ``folder`` (see flows.Slow)."""
    return [int(p.stem) for p in folder.glob("*.pid")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.real_time
async def test_cancelling_a_run_kills_its_running_calls_and_replaces_the_agents(
    tmp_path: Path,
) -> None:
    import asyncio

    async with Runtime() as rt:
        handle = await rt.submit(flows.Slow, [str(tmp_path / "m"), str(tmp_path / "m")])
        deadline = time.monotonic() + 60
        while len(_pids_in(tmp_path)) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        running = set(_pids_in(tmp_path))
        handle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handle.result()
        assert handle.status == "cancelled"
        pool = rt.pool("slow.wait")
        while pool.metrics.idle < 2:  # the killed agents are replaced to keep the pool warm
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        live = {a.handle.pid for a in pool.agents}
        assert not live & running
        assert not [pid for pid in running if _alive(pid)]


@pytest.mark.real_time
async def test_an_instance_pool_grows_under_a_burst_and_shrinks_back() -> None:
    import asyncio

    async with Runtime() as rt:
        handles = [await rt.submit(flows.Bursty, i) for i in range(16)]
        assert [await h.result() for h in handles] == [2 * i for i in range(16)]
        pool = rt.pool("bursty")
        peak = max(e.to_size for e in pool.events if e.kind in ("scale", "start"))
        assert peak == 4
        assert "bursty" in rt.autoscalers
        deadline = time.monotonic() + 30
        while pool.target_size > 1 or pool.size > 1:
            assert time.monotonic() < deadline, [str(e) for e in pool.events]
            await asyncio.sleep(0.05)
        downs = [e for e in pool.events if e.kind == "scale" and e.to_size < e.from_size]
        assert downs and all("autoscaler" in e.reason for e in downs)


def test_sigterm_drains_shoal_run_within_the_grace_period(tmp_path: Path) -> None:
    marker = str(tmp_path / "m")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoal.cli",
            "run",
            "tests/integration/flows.py:Drain",
            "--input",
            json.dumps([marker] * 20),
            "--grace",
            "30",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("started-*"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "let in-flight calls finish" in err and "run stopped" in err
    started = {p.name.split("-")[1] for p in tmp_path.glob("started-*")}
    done = {p.name.split("-")[1] for p in tmp_path.glob("done-*")}
    assert started == done and 2 <= len(done) < 20  # in flight finished; nothing new began


@pytest.mark.real_time
async def test_a_step_returning_a_generator_is_a_clear_error_and_the_agent_stays() -> None:
    from shoal import SerializationError

    async with Runtime() as rt:
        with pytest.raises(StepFailed, match="step 'gen' raised SerializationError") as info:
            await rt.run(flows.ReturnsGenerator)
        assert isinstance(info.value.__cause__, SerializationError)
        assert "generator" in str(info.value.__cause__)
        m = rt.pool("generator").metrics
        assert m.size == 1 and m.agents_started == 1
