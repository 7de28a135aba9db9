"""Regression tests for bugs found in review, on real agent processes."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shoal import AgentLost, AgentPool, ProcessBackend, RemoteError, SerializationError
from tests.conftest import child_pids
from tests.integration import workers

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]


def pool(**options: object) -> AgentPool:
    options.setdefault("min_size", 1)
    options.setdefault("max_size", 1)
    return AgentPool("reg", backend=ProcessBackend(), **options)  # type: ignore[arg-type]


async def test_cancelled_start_closes_the_pool_and_leaves_no_process() -> None:
    before = child_pids()
    p = pool(setup=workers.slow_setup, health_check_interval=0.1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            async with p:
                pass
    assert p.closed
    # Watch for a while: a pool left running would start agents again within 0.1 s.
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        assert child_pids() - before == set()
        assert p.size == 0
        await asyncio.sleep(0.02)
    await p.aclose()


async def test_next_call_on_an_agent_whose_call_was_cancelled_is_refused() -> None:
    async with pool() as p:
        async with p.acquire() as agent:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(agent.run(workers.sleep, 0.5), 0.1)
            with pytest.raises(AgentLost, match="cannot take another call") as info:
                await agent.run(workers.add, 1, 2)
            assert info.value.delivered is False
        assert await p.run(workers.add, 1, 2) == 3


async def _run_in_agent(p: AgentPool, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return await p.run(fn, *args)
    except (KeyboardInterrupt, SystemExit) as exc:
        return exc  # the bug: fail this test below, not the whole test session


@pytest.mark.parametrize(
    ("fn", "args", "type_name"),
    [
        (workers.call_sys_exit, (3,), "SystemExit"),
        (workers.raise_keyboard_interrupt, (), "KeyboardInterrupt"),
        (workers.raise_cancelled, (), "CancelledError"),
    ],
)
async def test_base_exception_raised_in_an_agent_arrives_as_remote_error(
    fn: Callable[..., Any], args: tuple[Any, ...], type_name: str
) -> None:
    async with pool() as p:
        caller = asyncio.create_task(_run_in_agent(p, fn, *args))
        await asyncio.wait([caller])
        assert not caller.cancelled()
        exc = caller.exception() or caller.result()
        assert isinstance(exc, RemoteError), repr(exc)
        assert exc.type_name == type_name and type_name in str(exc)
        assert await p.run(workers.add, 1, 2) == 3


async def test_call_that_cannot_be_unpickled_in_the_agent_does_not_poison_the_function() -> None:
    async with pool() as p:
        before = await p.run(workers.pid)
        with pytest.raises(SerializationError):
            await p.run(workers.echo, workers.UnloadableArg())  # echo's first call here
        assert await p.run(workers.echo, 42) == 42
        assert await p.run(workers.pid) == before


async def test_partials_and_bound_methods_are_sent_with_their_current_state() -> None:
    async with pool() as p:
        data = [1]
        partial = functools.partial(workers.echo, data)
        assert await p.run(partial) == [1]
        data.append(2)
        assert await p.run(partial) == [1, 2]
        box = workers.Box(1)
        method = box.get
        assert await p.run(method) == 1
        box.n = 2
        assert await p.run(method) == 2


async def test_fresh_partials_do_not_accumulate_in_the_agent() -> None:
    async with pool() as p:
        before = await p.run(workers.count_partials)
        for _ in range(500):
            await p.run(functools.partial(workers.echo, b"x" * 1000))
        after = await p.run(workers.count_partials)
        assert after - before < 10
        handle = p.agents[0].handle
        assert len(handle.channel.sent_keys) < 10


async def test_exception_that_cannot_be_printed_does_not_kill_the_agent() -> None:
    async with pool() as p:
        before = await p.run(workers.pid)
        caught: BaseException | None = None
        try:
            await p.run(workers.raise_bad_str)
        except Exception as exc:
            caught = exc
        assert type(caught) is workers.BadStr
        assert await p.run(workers.pid) == before
        assert p.metrics.agents_started == 1


def test_exception_class_from_the_main_script_comes_back_as_that_class(tmp_path: Path) -> None:
    script = tmp_path / "main_script.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio
            from shoal import AgentPool, ProcessBackend

            class MyError(Exception):
                pass

            def raise_mine():
                raise MyError("boom")

            async def main():
                async with AgentPool("m", min_size=1, max_size=1, backend=ProcessBackend()) as p:
                    try:
                        await p.run(raise_mine)
                    except MyError as exc:
                        print("same class:", exc)
                    except Exception as exc:
                        print("other class:", type(exc).__module__, type(exc).__qualname__, exc)

            asyncio.run(main())
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "same class: boom", done.stderr


def test_a_script_function_sees_the_current_value_of_its_globals(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import asyncio\n"
        "from shoal import AgentPool\n"
        "FACTOR = 2\n"
        "def scale(x):\n"
        "    return x * FACTOR\n"
        "async def main():\n"
        "    global FACTOR\n"
        "    async with AgentPool('p', min_size=1, max_size=1) as pool:\n"
        "        first = await pool.run(scale, 10)\n"
        "        FACTOR = 3\n"
        "        print(first, await pool.run(scale, 10))\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
    )
    assert done.stdout.split() == ["20", "30"], done.stderr
