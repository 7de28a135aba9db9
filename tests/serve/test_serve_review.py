"""A hostile review of ``shoal serve``, against the real server: inputs and answers that used to
come back as a bare ``500 Internal Server Error`` (or a reset connection), and routes that
answered in plain text. Every answer here must be JSON with a one-line ``error`` that says
what was wrong and how to fix it, and the server must keep serving afterwards."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.harness import APPS, DEADLINE_S, ServeProcess, serving, wait_for


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    with serving(str(APPS)) as s:
        yield s


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.text[:300]
    message: str = r.json()["error"]
    assert "\n" not in message and "Traceback" not in message, message
    return message


def _still_serving(c: httpx.Client) -> None:
    r = c.post("/runs/echo?wait=true", json={"value": "after"})
    assert r.status_code == 200 and r.json()["result"]["echo"] == "after", r.text


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b"1" * 5000, "digits"),  # Python refuses to parse an int this long
        (b"[" * 100_000 + b"]" * 100_000, "nested"),  # deeper than the parser's recursion
    ],
    ids=["huge-integer", "deep-nesting"],
)
def test_json_python_cannot_parse_is_a_400(server: ServeProcess, body: bytes, what: str) -> None:
    with server.client() as c:
        message = _error(c.post("/runs/echo", content=body), 400)
        assert "not valid JSON" in message and what in message, message
        _still_serving(c)


def test_a_result_with_nan_or_infinity_is_answered(server: ServeProcess) -> None:
    # Python's JSON reads NaN, Infinity and 1e400 (a float too big: infinity); strict JSON
    # cannot write them back. The echo comes back with them as their JavaScript names.
    with server.client() as c:
        for text, shown in (("NaN", "NaN"), ("Infinity", "Infinity"), ("-1e400", "-Infinity")):
            r = c.post("/runs/echo?wait=true", content=f'{{"value": {text}}}'.encode())
            assert r.status_code == 200, r.text[:300]
            body: dict[str, Any] = r.json()
            assert body["status"] == "succeeded" and body["result"]["echo"] == shown
            again = c.get(f"/runs/{body['id']}")
            assert again.status_code == 200 and again.json()["result"]["echo"] == shown
        _still_serving(c)


def test_a_body_too_large_is_a_413(server: ServeProcess) -> None:
    with server.client() as c:
        huge = b'"' + b"x" * (17 * 1024 * 1024) + b'"'
        message = _error(c.post("/runs/echo", content=huge), 413)
        assert "16 MiB" in message, message
        _still_serving(c)


def test_unknown_routes_and_methods_answer_json(server: ServeProcess) -> None:
    with server.client() as c:
        message = _error(c.get("/nope"), 404)
        assert "/nope" in message and "POST /runs/{workflow}" in message, message
        message = _error(c.get("/runs/a/b"), 404)
        assert "/runs/a/b" in message, message
        r = c.put("/runs/echo", json={})
        message = _error(r, 405)
        assert "PUT" in message and "POST" in message, message
        assert "POST" in r.headers["allow"]


def test_a_flag_that_is_neither_true_nor_false_is_a_400(server: ServeProcess) -> None:
    with server.client() as c:
        message = _error(c.post("/runs/echo?wait=maybe", json={}), 400)
        assert "wait='maybe'" in message and "wait=true" in message, message
        assert c.post("/runs/echo?wait=false", json={}).status_code == 202
        assert c.post("/runs/echo?wait=0", json={}).status_code == 202
        message = _error(c.get("/pools?history=maybe"), 400)
        assert "history='maybe'" in message and "history=true" in message, message
        assert "history" in c.get("/pools?history=1").json()["pools"][0]


def test_a_body_that_is_not_json_says_to_send_json(server: ServeProcess) -> None:
    with server.client() as c:
        r = c.post("/runs/echo", data={"value": "1"})  # a form, as curl -d key=value sends
        message = _error(r, 400)
        assert "not valid JSON" in message and "application/json" in message, message


def test_a_run_cancelled_says_who_cancelled_it(server: ServeProcess, tmp_path: Path) -> None:
    with server.client() as c:
        run_id = c.post("/runs/gated", json={"gate": str(tmp_path / "never")}).json()["id"]
        wait_for(lambda: c.get(f"/runs/{run_id}").json()["status"] == "running", "the run")
        assert c.delete(f"/runs/{run_id}").status_code == 200
        body = c.get(f"/runs/{run_id}").json()
        assert body["status"] == "cancelled"
        assert "DELETE /runs/" in body["error"]["message"], body["error"]


def test_sigterm_past_the_grace_tells_waiting_clients_to_retry(
    no_leaked_children: None, tmp_path: Path
) -> None:
    """A run still going when the grace runs out is cancelled; the client waiting for it is
    told the server stopped (503, Retry-After) rather than a bare 409 "CancelledError"."""
    with serving(str(APPS), "--grace", "1") as s:
        replies: list[httpx.Response] = []

        def wait_run() -> None:
            with s.client() as c:
                replies.append(c.post("/runs/gated?wait=true", json={"gate": str(tmp_path / "no")}))

        client = threading.Thread(target=wait_run)
        client.start()
        with s.client() as c:
            wait_for(
                lambda: any(r["status"] == "running" for r in c.get("/runs").json()["runs"]),
                "the run to start",
            )
            s.proc.send_signal(signal.SIGTERM)
        client.join(DEADLINE_S)
        assert s.proc.wait(DEADLINE_S) == 0, s.output
    assert len(replies) == 1, s.output
    r = replies[0]
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "5"
    body = r.json()
    assert body["status"] == "cancelled"
    assert "server stopped" in body["error"]["message"] and "1 s grace" in body["error"]["message"]


def test_a_waiting_client_that_leaves_does_not_lose_its_run(
    server: ServeProcess, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    with server.client() as c:
        before = {r["id"] for r in c.get("/runs").json()["runs"]}
        with pytest.raises(httpx.ReadTimeout):  # the client gives up; the gate is still shut
            httpx.post(
                f"{server.url}/runs/gated?wait=true",
                json={"gate": str(gate), "value": "kept"},
                timeout=httpx.Timeout(DEADLINE_S, read=1.0),
            )
        (run,) = wait_for(  # (on a busy machine the server may see the request late)
            lambda: [r for r in c.get("/runs").json()["runs"] if r["id"] not in before],
            "the abandoned run to be recorded",
        )
        gate.touch()
        body = wait_for(
            lambda: (b := c.get(f"/runs/{run['id']}").json())["status"] == "succeeded" and b,
            "the abandoned run to finish",
        )
        assert body["result"] == "kept"
        _still_serving(c)


def test_a_result_with_keys_json_cannot_hold_is_answered(server: ServeProcess) -> None:
    with server.client() as c:
        r = c.post("/runs/odd?wait=true", json={"kind": "keys"})
        assert r.status_code == 200, r.text[:300]
        assert r.json()["result"] == {"(1, 2)": "pair", "nan": "NaN"}
        again = c.get(f"/runs/{r.json()['id']}")
        assert again.status_code == 200 and again.json()["result"]["(1, 2)"] == "pair"
        r = c.post("/runs/odd?wait=true", json={})
        assert r.status_code == 200 and r.json()["result"] == {"set": "{3}"}, r.text[:300]
