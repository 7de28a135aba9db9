"""Module-level functions that agent processes import by reference in the integration tests."""

from __future__ import annotations

import os
import signal
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
