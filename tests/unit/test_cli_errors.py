"""The command line's errors (issue 12): one clear line, said once, with a way to fix it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shoal import cli
from shoal.errors import SerializationError, StepFailed


def test_a_definition_error_in_shoal_run_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = tmp_path / "sized.py"
    flow.write_text(
        "from shoal import Context, step, workflow\n"
        "@workflow\n"
        "class Sized:\n"
        "    @step(pool_size=4, pool_config={'max_size': 2})\n"
        "    async def s(self, ctx: Context) -> int:\n"
        "        return 1\n"
    )
    assert cli.main(["run", str(flow)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "pool_size=4 sets min_size and max_size" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_step_failure_quotes_its_cause_once(capsys: pytest.CaptureFixture[str]) -> None:
    cause = SerializationError("argument 0 of 'f' cannot be pickled: a lock")
    error = StepFailed(
        f"workflow 'w' step 's' raised SerializationError: {cause}", workflow="w", step="s"
    )
    error.__cause__ = cause
    report = {
        "workflow": "w",
        "status": "failed",
        "wall_s": 1.0,
        "steps": [{"name": "s", "done": 0, "items": None, "pool": "w", "mode": "pooled",
                   "seconds": 1.0}],
        "pools": {},
        "error": {"traceback": None},
    }  # fmt: skip
    cli._print_summary(report, error, sys.stdout)
    assert capsys.readouterr().err.count("cannot be pickled") == 1


def test_simulate_plot_without_matplotlib_fails_before_anything_else(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    code = cli.main(["simulate", "--trace", "/nonexistent/trace.csv", "--plot", "out.png"])
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install 'shoal[sim]'" in err and "trace" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"time_s,duration_s\n\xff\xfe,1\n", "is not UTF-8 text"),
        (b"time_s,duration_s\n0,1\n1e9,1\n", "t.csv:3: time_s=1e9 is past the"),
        (b"time_s,duration_s\n0,1e12\n", "t.csv:2: duration_s=1e12 is longer than"),
        (
            b"HashOwner,HashApp,HashFunction,Trigger,1,2\na,b,c,http,1,2000000000\n",
            "t.csv:2: minute 2: count 2,000,000,000 brings the trace past",
        ),
    ],
)
def test_simulate_refuses_a_hostile_trace_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    trace = tmp_path / "t.csv"
    trace.write_bytes(content)
    code = cli.main(["simulate", "--trace", str(trace), "--policy", "auto"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_simulate_refuses_a_generated_workload_too_large(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(["simulate", "--workload", "steady", "--rate", "1e6", "--duration", "3600"])
    assert code == 2
    assert "lower --rate or --duration" in capsys.readouterr().err
