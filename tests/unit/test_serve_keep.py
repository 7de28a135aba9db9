"""The finished runs ``shoal serve`` keeps for ``GET /runs/{id}`` are bounded in bytes as well
as in number: ten thousand runs of a workflow returning a few MiB each would otherwise hold
tens of GiB. The oldest go first; the newest run is always kept, however large."""

from __future__ import annotations

import pytest

from shoal import FakeBackend, Runtime
from shoal.serve import service as service_module
from shoal.serve.service import Service
from tests.serve.apps import Echo


async def test_kept_runs_are_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "_KEEP_BYTES", 20_000, raising=False)
    async with Runtime(FakeBackend()) as rt:
        service = Service(rt, [Echo])
        ids = []
        for i in range(40):
            record = await service.submit("echo", {"value": str(i) * 2000})
            await record.done.wait()
            ids.append(record.handle.run_id)
            kept = [r for r in ids if r in service.runs]
            assert kept == ids[-len(kept) :], kept  # the newest, in order
            assert sum(getattr(service.runs[r], "size", 0) for r in kept) <= 20_000, f"run {i}"
        await service.aclose()
    assert 1 < len(kept) < 40, kept
    assert service.runs[ids[-1]].result["echo"] == "39" * 2000


async def test_the_newest_run_is_kept_however_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "_KEEP_BYTES", 1_000, raising=False)
    async with Runtime(FakeBackend()) as rt:
        service = Service(rt, [Echo])
        for _ in range(3):
            record = await service.submit("echo", {"value": "x" * 5_000})
            await record.done.wait()
        await service.aclose()
    assert list(service.finished) == [record.handle.run_id]
    assert service.runs[record.handle.run_id].result["echo"] == "x" * 5_000


async def test_kept_runs_are_still_bounded_in_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "_KEEP_RUNS", 5)
    async with Runtime(FakeBackend()) as rt:
        service = Service(rt, [Echo])
        for i in range(12):
            record = await service.submit("echo", {"value": i})
            await record.done.wait()
        await service.aclose()
    assert len(service.runs) == 5 and record.handle.run_id in service.runs
