"""Test harness: ``async def`` tests run on a virtual-time loop unless marked ``real_time``.

On the virtual loop a ``sleep(300)`` takes no real time, so idle timeouts, slow starts and
health-check intervals are tested exactly and fast. Tests with real processes use the marker
``real_time`` and the ``no_leaked_children`` fixture.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from shoal.clock import VirtualTimeLoop

# Property tests time nothing either: hypothesis's default 200-ms deadline per example, and its
# health check on slow data generation, fail tests on a busy shared machine for no fault of the
# code. Every property keeps its own max_examples; only the timing checks go, for all of them.
settings.register_profile(
    "shoal", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("shoal")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    real = pyfuncitem.get_closest_marker("real_time") is not None
    factory = asyncio.new_event_loop if real else VirtualTimeLoop
    argnames = pyfuncitem._fixtureinfo.argnames
    kwargs: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in argnames}
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(pyfuncitem.obj(**kwargs))
    return True


def child_pids() -> set[int]:
    """Live (non-zombie) children of this process, read from /proc."""
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if ppid == me and state != "Z":
            found.add(int(entry))
    return found


@pytest.fixture
def no_leaked_children() -> Iterator[None]:
    """Fail the test if it leaves a child process of this interpreter running."""
    before = child_pids()
    yield
    leaked = child_pids() - before
    assert not leaked, f"child processes leaked: {sorted(leaked)}"
