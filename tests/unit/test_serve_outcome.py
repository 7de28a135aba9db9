"""A run's view never says "succeeded" without its result (the race between the runtime
marking a run done and the service storing what it returned; found by a slow CI run of
``test_submit_then_poll_and_wait``)."""

from __future__ import annotations

import asyncio
from typing import Any

from shoal import FakeBackend, Runtime
from shoal.serve.app import _add_outcome
from shoal.serve.service import RunRecord, Service
from tests.serve.apps import Echo


def _view(service: Service, record: RunRecord) -> dict[str, Any]:
    """What ``GET /runs/{id}`` answers for ``record`` at this instant."""
    body = service.run_summary(record)
    _add_outcome(body, record)
    return body


async def test_a_run_reads_as_succeeded_only_with_its_result() -> None:
    async with Runtime(FakeBackend()) as rt:
        service = Service(rt, [Echo])
        record = await service.submit("echo", {"value": 7})
        views: list[dict[str, Any]] = []
        between = 0  # loop turns where the run has ended but the service has not yet settled it
        while not record.done.is_set():
            between += record.handle.status == "succeeded"
            views.append(_view(service, record))
            await asyncio.sleep(0)
        views.append(_view(service, record))
        await service.aclose()
    assert between > 0, "never saw the run ended but not yet settled: the test proves nothing"
    bad = [v for v in views if v["status"] == "succeeded" and v.get("result") is None]
    assert not bad, f"{len(bad)} view(s) said succeeded with no result: {bad[0]}"
    assert views[-1]["status"] == "succeeded"
    assert views[-1]["result"] == {"echo": 7, "run": record.handle.run_id}
