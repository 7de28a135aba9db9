"""A real pool hears a provider's notice: the AWS source, reading a local metadata server in
AWS's format, preempts the spot agents of a pool of real worker processes, which are replaced
on demand while calls keep being answered."""

from __future__ import annotations

import asyncio

import pytest

from shoal import AgentPool
from shoal.backends.process import ProcessBackend
from shoal.pool.placement import Placement
from shoal.spot import AwsSpotSource
from tests.integration import workers
from tests.integration.metadata_server import metadata_server

pytestmark = [pytest.mark.real_time, pytest.mark.usefixtures("no_leaked_children")]


async def test_an_aws_notice_drains_the_spot_agents_and_calls_go_on() -> None:
    with metadata_server() as meta:
        spot = Placement(
            capacity="spot",
            price_per_hour=0.03,
            notice_s=120,
            backend=ProcessBackend(),
            preemption=AwsSpotSource(meta.url, interval=0.05),
        )
        on_demand = Placement(capacity="on_demand", price_per_hour=0.1, backend=ProcessBackend())
        pool = AgentPool("spot", min_size=2, max_size=4, placements=[spot, on_demand])
        pool.set_spot(True, spot_fraction=1.0, on_demand_base=0)
        async with pool:
            assert {a.placement.name for a in pool.agents} == {"local-spot"}
            before = await asyncio.gather(
                *(pool.call(workers.sleep_and_pid, (0.01,)) for _ in range(4))
            )
            meta.notice_now("terminate")
            for _ in range(1200):  # up to a minute: a busy machine
                if pool.snapshot().preemptions:
                    break
                await asyncio.sleep(0.05)
            assert pool.snapshot().preemptions == 1
            after = await asyncio.gather(
                *(pool.call(workers.sleep_and_pid, (0.01,)) for _ in range(4))
            )
            assert not set(after) & set(before)  # the preempted agents serve no more calls
            serving = [a for a in pool.agents if a.preempt_deadline is None]
            assert serving and all(not a.placement.spot for a in serving)
            assert any("preemption notice for local-spot" in e.reason for e in pool.events)
