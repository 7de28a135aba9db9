"""``DELETE /runs/{id}`` racing the run's own end: a run the runtime has already ended, but
whose result the service has not stored yet (a loop turn or two), cannot be cancelled any
more. The answer must say so (409, as for any ended run), not ``200`` with a body whose
status is ``succeeded`` — a client reading 200 to DELETE believes its run was cancelled."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from starlette.requests import Request

from shoal import FakeBackend, Runtime
from shoal.serve.app import delete_run
from shoal.serve.service import Service
from tests.serve.apps import Echo


def _delete(service: Service, run_id: str) -> Request:
    app = SimpleNamespace(state=SimpleNamespace(service=service))
    scope: dict[str, Any] = {
        "type": "http",
        "method": "DELETE",
        "path": f"/runs/{run_id}",
        "headers": [],
        "query_string": b"",
        "app": app,
        "path_params": {"run_id": run_id},
    }
    return Request(scope)


async def test_delete_of_a_run_that_is_ending_answers_409() -> None:
    async with Runtime(FakeBackend()) as rt:
        service = Service(rt, [Echo])
        record = await service.submit("echo", {"value": 7})
        answer = None
        while not record.done.is_set():
            if record.handle.status == "succeeded":  # ended, not yet settled by the service
                answer = await delete_run(_delete(service, record.handle.run_id))
                break
            await asyncio.sleep(0)
        await record.done.wait()
        await service.aclose()
    assert answer is not None, "never saw the run ended but not yet settled: proves nothing"
    body = json.loads(bytes(answer.body))
    assert answer.status_code == 409, (answer.status_code, body)
    assert "already ended" in body["error"] and "succeeded" in body["error"], body
    assert record.handle.status == "succeeded" and record.result == {
        "echo": 7,
        "run": record.handle.run_id,
    }


async def test_delete_of_a_running_run_cancels_it() -> None:
    async with Runtime(FakeBackend()) as rt:
        service = Service(rt, [Echo])
        record = await service.submit("echo", {"value": 1, "delay": 30})
        await asyncio.sleep(5)  # virtual time: the 30-s step is under way
        assert record.handle.progress.steps[1].status == "running"
        answer = await delete_run(_delete(service, record.handle.run_id))
        await service.aclose()
    body = json.loads(bytes(answer.body))
    assert answer.status_code == 200 and body["status"] == "cancelled", body
