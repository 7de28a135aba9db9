"""Module-level functions that agent processes import by reference in the integration tests."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import signal
import sys
import threading
import time
from typing import Any

SETUP_RUNS = 0


def setup_counter() -> None:
    global SETUP_RUNS
    SETUP_RUNS += 1


def agent_info() -> tuple[int, int]:
    """(pid, how many times setup ran in this process)."""
    return os.getpid(), SETUP_RUNS


def pid() -> int:
    return os.getpid()


def add(a: int, b: int) -> int:
    return a + b


def echo(x: Any) -> Any:
    return x


async def async_double(x: int) -> int:
    return 2 * x


def fail(message: str) -> None:
    raise ValueError(message)


def exit_now(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def return_lock() -> object:
    return threading.Lock()


class Unrebuildable(Exception):
    """Pickles, but cannot be unpickled: its __init__ takes two arguments."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raise_unrebuildable() -> None:
    raise Unrebuildable("x", "y")


def broken_setup() -> None:
    raise RuntimeError("cannot load the model file")


def slow_setup() -> None:
    time.sleep(1.0)


# -- for test_process_regressions.py -------------------------------------------------------------


def call_sys_exit(code: int) -> None:
    sys.exit(code)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


async def raise_cancelled() -> None:
    raise asyncio.CancelledError("raised inside the agent")


def _fail_on_load() -> None:
    raise RuntimeError("cannot rebuild this argument in the agent")


class UnloadableArg:
    """Pickles in the parent, but fails to unpickle in the agent."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_fail_on_load, ())


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


def raise_bad_str() -> None:
    raise BadStr


class Box:
    def __init__(self, n: int) -> None:
        self.n = n

    def get(self) -> int:
        return self.n


def count_partials() -> int:
    """How many functools.partial objects are alive in this process."""
    return sum(1 for o in gc.get_objects() if isinstance(o, functools.partial))


def sleep_and_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def raise_agent_lost() -> None:
    from shoal.errors import AgentLost

    raise AgentLost("a nested pool lost its agent", "nested-1")


# -- for test_channel.py -------------------------------------------------------------------------


def fork_and_return(tag: int) -> str:
    """Fork; both copies return normally, as a careless step would."""
    pid = os.fork()
    return "child" if pid == 0 else f"parent {tag}"


def _exit_on_load(code: int) -> None:
    sys.exit(code)


class ExitsOnLoad:
    """Pickles in the agent; unpickling it calls sys.exit."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_exit_on_load, (3,))


def return_exits_on_load() -> ExitsOnLoad:
    return ExitsOnLoad()


def write_reply_to_call(call_id: int) -> str:
    """Write a well-formed reply frame for ``call_id`` on the agent's result pipe, then return."""
    import pickle

    from shoal.backends import _wire

    res_fd = int(sys.argv[2])  # _agent_main.py CMD_FD RESULT_FD LIFELINE_FD PARENT_PID
    _wire.send(res_fd, pickle.dumps((_wire.OK, "forged"), _wire.PROTOCOL), call_id)
    return "real"


def big_power() -> int:
    """A couple of seconds inside one C call that holds the GIL (no heartbeat can be sent)."""
    return (3**8_000_000).bit_length()


def start_sleeper(pid_file: str | None = None, hang: bool = False) -> int:
    """Start ``sleep 120`` as a child of the agent (and maybe hang): a step's subprocess."""
    import subprocess

    child = subprocess.Popen(["sleep", "120"], stdin=subprocess.DEVNULL)
    if pid_file is not None:
        with open(pid_file + ".tmp", "w") as f:
            f.write(str(child.pid))
        os.replace(pid_file + ".tmp", pid_file)
    while hang:
        time.sleep(1)
    return child.pid


def write_and_read(path: str) -> str:
    with open(path, "w") as f:
        f.write("ok")
    with open(path) as f:
        return f.read()


def can_read(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError:
        return False
    return True


def capabilities() -> tuple[int, int]:
    """This process's effective and bounding capability sets, from /proc."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["CapEff"], 16), int(fields["CapBnd"], 16)


async def overlap_probe(seconds: float) -> tuple[int, float, float]:
    """(pid, start, end) of an async call that sleeps: overlapping spans ran concurrently."""
    import asyncio

    start = time.monotonic()
    await asyncio.sleep(seconds)
    return os.getpid(), start, time.monotonic()


def overlap_probe_sync(seconds: float) -> tuple[int, float, float]:
    start = time.monotonic()
    time.sleep(seconds)
    return os.getpid(), start, time.monotonic()


def log_through_ctx_logger(message: str) -> int:
    """Log as a step would, with ctx.logger."""
    from shoal.context import Context

    ctx = Context(run_id="run-x", workflow="wf", step="s")
    ctx.logger.info("%s from the agent", message)
    ctx.logger.debug("a debug line the controller does not want")
    return os.getpid()


def gated(gate: str, log: str, tag: str) -> tuple[str, int]:
    """Note ``tag`` as started in ``log``, then wait (up to 120 s) until the file ``gate``
    exists: a call that runs exactly as long as the test wants."""
    with open(log, "a") as f:
        f.write(f"start {tag} {os.getpid()}\n")
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    return tag, os.getpid()


def logged(log: str, tag: str) -> tuple[str, int]:
    """Note ``tag`` as run in ``log``: a call whose runs the test can count."""
    with open(log, "a") as f:
        f.write(f"run {tag} {os.getpid()}\n")
    return tag, os.getpid()
