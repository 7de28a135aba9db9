"""The simulator's preemption source: seeded draws at a rate per spot agent-hour, or a trace."""

from __future__ import annotations

import asyncio

import pytest

from shoal.errors import ConfigError
from shoal.pool.placement import Placement, PreemptionNotice
from shoal.spot import SimulatedPreemptions

SPOT = Placement(region="r", capacity="spot", notice_s=120)


class Fleet:
    """``size`` live agents; a noticed one is replaced by a new one, as a pool would."""

    def __init__(self, size: int) -> None:
        self.ids = [f"a{k}" for k in range(size)]
        self.made = size
        self.notices: list[tuple[float, PreemptionNotice]] = []  # (time since t0, notice)
        self.t0 = 0.0

    def agents(self) -> list[str]:
        return list(self.ids)

    def notify(self, notice: PreemptionNotice) -> None:
        self.notices.append((asyncio.get_running_loop().time() - self.t0, notice))
        assert notice.agent_ids is not None
        for gone in notice.agent_ids:
            self.ids.remove(gone)
            self.ids.append(f"a{self.made}")
            self.made += 1


async def run_for(source: SimulatedPreemptions, fleet: Fleet, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    fleet.t0 = loop.time()
    task = loop.create_task(source.watch(SPOT, fleet.notify, loop.time))
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_rate_is_per_agent_hour() -> None:
    fleet = Fleet(10)
    source = SimulatedPreemptions(fleet.agents, rate_per_hour=2.0, seed=3)
    await run_for(source, fleet, 50 * 3600)
    expected = 10 * 2.0 * 50  # agents x rate x hours
    assert 0.85 * expected < len(fleet.notices) < 1.15 * expected
    ids = [a for _, n in fleet.notices for a in n.agent_ids or ()]
    assert len(ids) == len(set(ids))  # each agent noticed once
    for at, notice in fleet.notices:
        assert notice.deadline == fleet.t0 + at + 120 and notice.source == "sim"


async def test_no_agents_no_notices_and_the_seed_fixes_the_draws() -> None:
    empty = Fleet(0)
    await run_for(SimulatedPreemptions(empty.agents, rate_per_hour=50), empty, 3600)
    assert empty.notices == []
    runs = []
    for seed in (1, 1, 2):
        fleet = Fleet(5)
        await run_for(SimulatedPreemptions(fleet.agents, rate_per_hour=5, seed=seed), fleet, 7200)
        runs.append([(t, n.agent_ids) for t, n in fleet.notices])
    assert runs[0] == runs[1] != runs[2]


async def test_a_trace_notices_one_agent_at_each_time() -> None:
    fleet = Fleet(3)
    source = SimulatedPreemptions(fleet.agents, trace=[30.0, 10.0, 10.0], notice_s=30)
    await run_for(source, fleet, 100)
    assert [t for t, _ in fleet.notices] == [10.0, 10.0, 30.0]
    assert [n.deadline - fleet.t0 for _, n in fleet.notices] == [40.0, 40.0, 60.0]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"rate_per_hour": -1}, "rate_per_hour=-1 must be preemptions per spot agent-hour"),
        ({"notice_s": 0}, "notice_s=0 must be a number of seconds > 0"),
        ({"trace": [-5]}, "negative time"),
    ],
)
def test_bad_values_are_one_line_errors(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        SimulatedPreemptions(list, **kwargs)  # type: ignore[arg-type]
