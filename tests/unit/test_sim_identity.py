"""The simulator's speed-ups change no result.

The virtual-time loop schedules timers and callbacks itself, and the autoscaler's control loop
is a chain of callbacks rather than a sleeping task. Both must leave the order of everything
exactly as asyncio's own machinery had it, or a tie between two events at the same instant (an
agent ready at a decision time, say) could go the other way and change the figures. So each
scenario here runs twice, once as shipped and once on the reference: ``VirtualTimeLoop(lean=
False)`` (asyncio's heap of handles and its constructors) with the autoscaler as the task that
sleeps to each decision time, as it was written before. Every figure of the summary and the
sampled series must be equal, not merely close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.clock import VirtualTimeLoop
from shoal.scaling.autoscaler import AutoScaler
from shoal.sim import run as sim_run
from shoal.sim import workloads
from shoal.sim.placements import placement_options
from shoal.sim.run import POLICIES, SimResult, simulate
from shoal.sim.workload import Exponential

log = logging.getLogger("shoal.scaling")


class SleepingScaler(AutoScaler):
    """The autoscaler's control loop as a task that sleeps to each decision time: the way it
    ran before it became a chain of callbacks."""

    def start(self) -> None:
        super().start()  # the config's side effects (ceilings, spot), then replace the loop
        assert self._handle is not None
        self._handle.cancel()
        self._handle = None
        self._task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._sleeping())

    @property
    def running(self) -> bool:
        task = getattr(self, "_task", None)
        return task is not None and not task.done()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _sleeping(self) -> None:
        loop = asyncio.get_running_loop()
        start, k = loop.time(), 0
        while True:
            k += 1
            now = loop.time()
            if start + k * self.interval < now:
                k = int((now - start) / self.interval) + 1
            await asyncio.sleep(start + k * self.interval - now)
            if self.pool.closed:
                return
            try:
                self.evaluate()
            except Exception:
                log.exception("the scaling policy failed")


def figures(result: SimResult) -> dict[str, Any]:
    series = result.series
    return {
        **result.summary(),
        "max_wait_s": result.max_wait_s,
        "idle_agent_seconds": result.idle_agent_seconds,
        "series": (series.time, series.size, series.target, series.busy, series.queue),
        "mean_wait": series.mean_wait,
    }


# Short runs on purpose: a run's series is sampled at a step that grows with its length, so a
# short run shows a difference a long one averages away. With the autoscaler's hop through the
# ready queue removed (a decision no longer seeing what else is due at its instant), 23 of these
# cases fail at 600 s and 16 at 1800 s. Two bursts and one squeezed day still cover every policy
# and feature; 6 preemptions an hour keep as many notices in the spot runs as 2 did in 1800 s.
BURSTY = workloads.bursty(rate=0.5, duration=600.0, seed=7)
DIURNAL = workloads.diurnal(rate=4.0, duration=300.0, seed=3)
SCENARIOS: dict[str, dict[str, Any]] = {
    "bursty": {"workload": BURSTY},
    "diurnal, 5-s starts drawn, 2 calls an agent": {
        "workload": DIURNAL,
        "cold_start": Exponential(5.0),
        "max_concurrency": 2,
        "seed": 4,
    },
    "bursty, warm-up": {"workload": BURSTY, "warmup": 300.0},
    "bursty, spot with preemptions and a cost cap": {
        "workload": BURSTY,
        "placements": placement_options(
            prefer_spot=True, preemptions_per_hour=6.0, notice=30.0, cost_cap=1.0
        ),
        "seed": 5,
    },
}
CASES = [
    (scenario, policy)
    for scenario in SCENARIOS
    for policy in (
        [*(p for p in POLICIES if p != "fixed"), "fixed:3", "auto+ml-based", "keepalive:120"]
        if scenario == "bursty"
        else ["auto", "reactive+seasonal", "hpa", "rayserve"]
    )
]


def _run(scenario: str, policy: str) -> dict[str, Any]:
    args = dict(SCENARIOS[scenario])
    return figures(simulate(args.pop("workload"), policy, max_size=40, **args))


@pytest.mark.parametrize(("scenario", "policy"), CASES)
def test_every_figure_is_what_the_reference_scheduling_gives(
    scenario: str, policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = _run(scenario, policy)
    with monkeypatch.context() as patch:
        patch.setattr(sim_run, "VirtualTimeLoop", functools.partial(VirtualTimeLoop, lean=False))
        patch.setattr(sim_run, "AutoScaler", SleepingScaler)
        expected = _run(scenario, policy)
    assert shipped["requests"] > 0
    assert shipped == expected


# -- the loop alone: any schedule, ties and cancellations included ------------------------------


@st.composite
def schedules(draw: st.DrawFn) -> list[tuple[int, float, int, bool]]:
    """Timers as (parent, delay, children, cancel): each fires at a few coarse delays (so many
    fall due together), may schedule children, and may be cancelled before it fires."""
    n = draw(st.integers(1, 40))
    out = []
    for i in range(n):
        parent = draw(st.integers(-1, i - 1))
        delay = draw(st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 3.5]))
        soon = draw(st.integers(0, 2))
        cancel = draw(st.booleans()) and draw(st.booleans())
        out.append((parent, delay, soon, cancel))
    return out


def _replay(schedule: list[tuple[int, float, int, bool]], lean: bool) -> list[tuple[str, float]]:
    order: list[tuple[str, float]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        children: dict[int, list[int]] = {}
        for i, (parent, _, _, _) in enumerate(schedule):
            children.setdefault(parent, []).append(i)
        handles: dict[int, asyncio.TimerHandle] = {}

        def fire(i: int) -> None:
            order.append((f"timer {i}", loop.time()))
            for j in range(schedule[i][2]):
                loop.call_soon(lambda j=j: order.append((f"soon {i}.{j}", loop.time())))
            arm(children.get(i, []))

        def arm(ids: list[int]) -> None:
            for i in ids:
                handles[i] = loop.call_later(schedule[i][1], fire, i)
            for i in ids:
                if schedule[i][3]:
                    handles[i].cancel()

        arm(children.get(-1, []))
        done = loop.create_future()
        loop.call_later(100.0, done.set_result, None)
        await done

    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(lean=lean)) as runner:
        runner.run(main())
    return order


@settings(max_examples=150, deadline=None)
@given(schedules())
def test_the_lean_loop_runs_any_schedule_in_asyncios_order(
    schedule: list[tuple[int, float, int, bool]],
) -> None:
    assert _replay(schedule, lean=True) == _replay(schedule, lean=False)


def test_a_callback_that_raises_is_reported_and_the_loop_goes_on() -> None:
    seen: list[dict[str, Any]] = []
    after: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: seen.append(context))
        loop.call_soon(lambda: 1 / 0)
        loop.call_later(1.0, after.append, "later")
        await asyncio.sleep(2.0)

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())
    assert len(seen) == 1 and isinstance(seen[0]["exception"], ZeroDivisionError)
    assert "Exception in callback" in seen[0]["message"]
    assert after == ["later"]
