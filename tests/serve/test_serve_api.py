"""``shoal serve`` over real HTTP: runs, errors, admission, pools, metrics, events, auth, stop."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.harness import APPS, ServeProcess, serving, wait_for


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    with serving(str(APPS)) as s:
        yield s


def _run(c: httpx.Client, run_id: str) -> dict[str, Any]:
    r = c.get(f"/runs/{run_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_submit_then_poll_and_wait(server: ServeProcess) -> None:
    with server.client() as c:
        r = c.post("/runs/echo", json={"value": 7})
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
        body = wait_for(
            lambda: (b := _run(c, run_id))["status"] == "succeeded" and b, "the run to succeed"
        )
        assert body["result"] == {"echo": 7, "run": run_id}
        assert [s["status"] for s in body["steps"]] == ["done", "done"]
        r = c.post("/runs/echo?wait=true", json={"value": "w"})
        assert r.status_code == 200 and r.json()["result"]["echo"] == "w"
        # the Python name works as well as the workflow's name
        assert c.post("/runs/Echo?wait=true", json={"value": 1}).status_code == 200


def test_bad_requests_are_named(server: ServeProcess) -> None:
    with server.client() as c:
        r = c.post("/runs/nope", json={})
        assert r.status_code == 404 and "nope" in r.json()["error"] and "echo" in r.json()["error"]
        r = c.post("/runs/echo", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        assert "line 1 column 2" in r.json()["error"]
        assert c.get("/runs/run-999999").status_code == 404


def test_a_step_error_comes_back_as_json(server: ServeProcess) -> None:
    with server.client() as c:
        r = c.post("/runs/echo?wait=true", json={"bad": True})
        assert r.status_code == 422
        body = r.json()
        assert body["status"] == "failed"
        assert body["error"]["step"] == "check"
        assert body["error"]["cause"] == {
            "type": "ValueError",
            "message": "this request is bad on purpose",
        }
        assert "bad on purpose" in body["error"]["traceback"]


def test_delete_cancels_a_run(server: ServeProcess, tmp_path: Path) -> None:
    with server.client() as c:
        r = c.post("/runs/gated", json={"gate": str(tmp_path / "never")})
        run_id = r.json()["id"]
        wait_for(lambda: _run(c, run_id)["steps"][0]["status"] == "running", "the run to start")
        r = c.delete(f"/runs/{run_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert c.delete(f"/runs/{run_id}").status_code == 409


def test_admission_control_answers_429_past_max_queue(server: ServeProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with server.client() as c:
        wait_for(lambda: c.get("/readyz").status_code == 200, "ready")
        ids = [c.post("/runs/gated", json={"gate": str(gate), "value": 0}).json()["id"]]
        wait_for(lambda: _run(c, ids[0])["steps"][0]["status"] == "running", "the first run")
        # one runs (max_size=1), two may wait (the pool's max_queue=2), the next is refused
        for i in (1, 2):
            r = c.post("/runs/gated", json={"gate": str(gate), "value": i})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        r = c.post("/runs/gated", json={"gate": str(gate), "value": 3})
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert "max_queue=2" in r.json()["error"]
        gate.touch()
        results = [
            wait_for(lambda i=i: (b := _run(c, i))["status"] == "succeeded" and b, f"run {i}")
            for i in ids
        ]
        assert [b["result"] for b in results] == ["0", "1", "2"]
        assert c.post("/runs/gated?wait=true", json={"gate": str(gate)}).status_code == 200


def test_pools_and_metrics(server: ServeProcess) -> None:
    with server.client() as c:
        for i in range(3):
            assert c.post("/runs/echo?wait=true", json={"value": i}).status_code == 200
        pools = {p["name"]: p for p in c.get("/pools").json()["pools"]}
        assert {"echo", "gated"} <= set(pools)
        echo = pools["echo"]
        assert echo["target"] >= 1 and echo["metrics"]["requests_total"] >= 3
        # Each agent, and the node it runs on (none for local processes; Ray's node IP).
        assert echo["agents"] and all(a["node"] is None for a in echo["agents"])
        assert {"agent_id", "state", "node", "uses"} <= set(echo["agents"][0])
        assert echo["metrics"]["nodes"] == {}
        assert echo["events"] and {"kind", "reason", "from_size", "to_size"} <= set(
            echo["events"][0]
        )

        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        for name in (
            "shoal_pool_agents",
            "shoal_pool_target",
            "shoal_pool_queue_depth",
            "shoal_pool_wait_seconds",
            "shoal_pool_execution_seconds",
            "shoal_calls",
            "shoal_scaling_events",
            "shoal_runs",
        ):
            assert name in families, f"{name} missing from /metrics"
        assert families["shoal_pool_wait_seconds"].type == "histogram"
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families.values()
            for s in f.samples
        }
        states = {s.labels["state"] for s in families["shoal_pool_agents"].samples}
        assert states == {"starting", "idle", "busy", "stopping"}
        assert samples[("shoal_runs_total", (("status", "succeeded"), ("workflow", "echo")))] >= 3
        assert samples[("shoal_calls_total", (("outcome", "ok"), ("pool", "echo")))] >= 3
        assert samples[("shoal_pool_execution_seconds_count", (("pool", "echo"),))] >= 6
        kinds = {s.labels["kind"] for s in families["shoal_scaling_events"].samples}
        assert "start" in kinds


def test_events_stream_run_progress(server: ServeProcess) -> None:
    seen: list[dict[str, Any]] = []
    with server.client() as c, c.stream("GET", "/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == "retry: 2000"
        run_id = c.post("/runs/echo", json={"value": "sse"}).json()["id"]
        event = None
        for line in lines:
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("run", "sample"):
                data = json.loads(line[6:])
                seen.append(data)
                done = any(
                    d["type"] == "run" and d["id"] == run_id and d["status"] == "succeeded"
                    for d in seen
                )
                if done and any(d["type"] == "sample" for d in seen):
                    break
    assert any(d["type"] == "sample" and d["pool"] == "echo" for d in seen)
    statuses = [d["status"] for d in seen if d["type"] == "run" and d["id"] == run_id]
    assert statuses[0] in ("pending", "running") and statuses[-1] == "succeeded"


def test_bearer_token_guards_everything_but_healthz(no_leaked_children: None) -> None:
    with serving(str(APPS), env={"SHOAL_TOKEN": "s3cret"}) as s, s.client() as c:
        assert c.get("/healthz").status_code == 200
        for path in ("/pools", "/metrics", "/", "/runs/run-1", "/readyz"):
            r = c.get(path)
            assert r.status_code == 401, path
            assert r.headers["WWW-Authenticate"] == "Bearer"
        assert c.post("/runs/echo", json={}).status_code == 401
        bad = c.get("/pools", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and "wrong token" in bad.json()["error"]
        good = {"Authorization": "Bearer s3cret"}
        assert c.get("/pools", headers=good).status_code == 200
        assert c.post("/runs/echo?wait=true", json={"value": 1}, headers=good).status_code == 200
        assert c.get("/pools?token=s3cret").status_code == 200  # for EventSource and the page


def test_sigterm_finishes_runs_in_flight_then_exits_0(
    no_leaked_children: None, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    with serving(str(APPS), "--grace", "60") as s:
        replies: list[httpx.Response] = []

        def wait_run(i: int) -> None:
            with s.client() as c:
                replies.append(
                    c.post("/runs/gated?wait=true", json={"gate": str(gate), "value": i})
                )

        clients = [threading.Thread(target=wait_run, args=(i,)) for i in range(3)]
        for t in clients:
            t.start()
        with s.client() as c:
            wait_for(
                lambda: (
                    sum(
                        r["status"] in ("running", "pending") for r in c.get("/runs").json()["runs"]
                    )
                    == 3
                ),
                "three runs in flight",
            )
            s.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: c.post("/runs/echo", json={}).status_code == 503, "503 while draining")
            assert c.get("/readyz").status_code == 503
            assert c.get("/healthz").status_code == 200
        gate.touch()
        for t in clients:
            t.join(60)
        assert s.proc.wait(60) == 0, s.output
        assert sorted(r.status_code for r in replies) == [200, 200, 200]
        assert sorted(r.json()["result"] for r in replies) == ["0", "1", "2"]
        assert "stopped" in s.output
