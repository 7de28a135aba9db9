"""Local agents stay in their box: signals for the controller, their children, their output.

Each test here failed before agents got a session of their own, a process group that is killed
whole, a relay of their output and a raised descriptor limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shoal import AgentPool, CallTimeout, ProcessBackend
from tests.integration import workers

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0  # generous: CI is a busy 2-core machine


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _running(pid: int, started: str) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` and not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def _start_time(pid: int) -> str:
    fields = _stat(pid)
    assert fields is not None, f"process {pid} is not running"
    return fields[19]


async def _wait_gone(pid: int, started: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while _running(pid, started):
        assert time.monotonic() < deadline, f"process {pid} outlived its agent"
        await asyncio.sleep(0.02)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _ignores_sigint(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        mask = next(line for line in f if line.startswith("SigIgn:")).split()[1]
    return bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}


# -- children of a step die with their agent ---------------------------------------------------


async def test_a_steps_subprocess_dies_when_its_agent_is_killed(tmp_path: Path) -> None:
    pid_file = str(tmp_path / "sleeper")
    async with AgentPool("box", min_size=1, max_size=1, backend=ProcessBackend()) as p:
        with pytest.raises(CallTimeout):
            await p.call(workers.start_sleeper, (pid_file, True), timeout=3.0)
        sleeper = int(_read(pid_file))
        # The timed-out agent is killed before CallTimeout is raised; its child with it.
        if _stat(sleeper) is not None:
            await _wait_gone(sleeper, _start_time(sleeper))


async def test_a_steps_subprocess_dies_when_its_agent_is_retired() -> None:
    async with AgentPool("box", min_size=1, max_size=1, max_uses=1, backend=ProcessBackend()) as p:
        sleeper = await p.run(workers.start_sleeper)
        started = _start_time(sleeper)
        assert not _ignores_sigint(sleeper), "a step's subprocess must get SIGINT's default back"
        await _wait_gone(sleeper, started)  # the agent is retired after its one use
        assert await p.run(workers.add, 1, 1) == 2


async def test_a_steps_subprocess_dies_when_the_pool_closes() -> None:
    async with AgentPool("box", min_size=1, max_size=1, backend=ProcessBackend()) as p:
        sleeper = await p.run(workers.start_sleeper)
        started = _start_time(sleeper)
    await _wait_gone(sleeper, started)


# -- SIGTERM to shoal run's process group ------------------------------------------------------

GROUP_FLOW = """
import os
import time

from shoal import Context, step, workflow


@workflow(name="group_term")
class GroupTerm:
    @step(parallel=True, pool_size=2, max_parallel=2, retries=3)
    async def work(self, ctx: Context, item: list) -> int:
        log, go, i = item
        with open(log, "a") as f:
            f.write(f"{i} {ctx.attempt} {os.getpid()}\\n")
        deadline = time.monotonic() + 120
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.01)
        return i
"""


def test_sigterm_to_shoal_runs_process_group_attempts_nothing_twice(tmp_path: Path) -> None:
    flow = tmp_path / "group_flow.py"
    flow.write_text(GROUP_FLOW)
    log, go = tmp_path / "attempts.log", tmp_path / "go"
    items = [[str(log), str(go), i] for i in range(6)]
    args = ["run", str(flow), "--input", json.dumps(items), "--grace", "60"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli", *args],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own, as under `timeout` or systemd
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not log.exists() or len(log.read_text().splitlines()) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as `kill -- -PGID` does
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # wait until the controller took the signal, then release
            seen.append(line)
            if "SIGTERM: taking no new work" in line:
                break
        go.touch()
        _, rest = proc.communicate(timeout=DEADLINE_S)
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(seen) + rest
    attempts = [line.split() for line in log.read_text().splitlines()]
    assert all(attempt == "1" for _, attempt, _ in attempts), (attempts, err)
    assert len({item for item, _, _ in attempts}) == len(attempts), (attempts, err)
    assert proc.returncode == 128 + signal.SIGTERM, err


# -- agents' output ----------------------------------------------------------------------------

PRINT_FLOW = """
import sys

from shoal import Context, step, workflow


@workflow(name="talky")
class Talky:
    @step()
    async def speak(self, ctx: Context, n: int) -> int:
        print("hello from the step")
        print("to stderr", file=sys.stderr)
        print("no newline at the end", end="")
        return n + 1
"""


@pytest.mark.parametrize("as_json", [True, False])
def test_agent_output_is_prefixed_and_kept_out_of_json(tmp_path: Path, as_json: bool) -> None:
    flow = tmp_path / "talky_flow.py"
    flow.write_text(PRINT_FLOW)
    args = [sys.executable, "-m", "shoal.cli", "run", str(flow), "--input", "41"]
    done = subprocess.run(
        args + (["--json"] if as_json else []),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 0, done.stderr
    agent_out = done.stderr if as_json else done.stdout
    prefix = r"\[talky[^\]]*\] "
    assert re.search(f"(?m)^{prefix}hello from the step$", agent_out), (done.stdout, done.stderr)
    assert re.search(f"(?m)^{prefix}no newline at the end$", agent_out), agent_out
    assert re.search(f"(?m)^{prefix}to stderr$", done.stderr), done.stderr
    if as_json:
        assert json.loads(done.stdout)["result"] == 42


# -- the descriptor budget ---------------------------------------------------------------------

FD_PROBE = textwrap.dedent(
    """
    import asyncio, resource
    from shoal import AgentPool, ProcessBackend
    from tests.integration import workers

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))

    async def main():
        async with AgentPool("fd", min_size=1, max_size=1, backend=ProcessBackend()) as p:
            assert await p.run(workers.add, 1, 1) == 2
        print(*resource.getrlimit(resource.RLIMIT_NOFILE))

    asyncio.run(main())
    """
)


def test_the_first_process_backend_raises_the_soft_descriptor_limit() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    done = subprocess.run(
        [sys.executable, "-c", FD_PROBE],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 0, done.stderr
    soft, hard_after = (int(x) for x in done.stdout.split())
    assert soft == hard_after == hard
