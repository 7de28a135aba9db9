"""Faults injected into agent processes at each phase of their life (the failure matrix)."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
from typing import Any

FAULTS = ("raises", "crashes", "hangs", "exits")


def do(fault: str) -> None:
    """Perform ``fault`` right here."""
    if fault == "raises":
        raise RuntimeError("injected fault")
    if fault == "crashes":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "hangs":
        time.sleep(3600)
    if fault == "exits":
        sys.exit(0)


def exit_cleanly_now() -> None:
    os._exit(0)


def warming(fault: str) -> Any:
    """A setup that fails while the agent warms up."""

    def setup() -> None:
        do(fault)

    return setup


def idle(fault: str) -> Any:
    """A setup that arranges for the fault to happen while the agent sits idle."""

    def setup() -> None:
        def later() -> None:
            time.sleep(0.3)
            if fault == "raises":
                raise RuntimeError("injected fault in a background thread")
            if fault == "crashes":
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "hangs":
                os.kill(os.getpid(), signal.SIGSTOP)  # frozen: alive, but answers nothing
            if fault == "exits":
                os._exit(0)

        threading.Thread(target=later, daemon=True).start()

    return setup


def stopping(fault: str) -> Any:
    """A setup that makes the agent misbehave as it shuts down."""

    def setup() -> None:
        def at_exit() -> None:
            if fault == "exits":
                os._exit(0)
            do(fault)

        atexit.register(at_exit)

    return setup


def running(fault: str) -> str:
    if fault == "exits":
        exit_cleanly_now()
    do(fault)
    return "unreachable"


class Result:
    """A result whose pickling, on the way back, performs the fault."""

    def __init__(self, fault: str) -> None:
        self.fault = fault

    def __reduce__(self) -> Any:
        if self.fault == "exits":
            exit_cleanly_now()
        do(self.fault)
        return (Result, (self.fault,))


def returning(fault: str) -> Result:
    return Result(fault)


def pid() -> int:
    return os.getpid()
