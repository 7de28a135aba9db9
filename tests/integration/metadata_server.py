"""A fake cloud metadata server: a real HTTP server on 127.0.0.1 speaking AWS's and GCP's formats.

AWS (IMDSv2): ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` gives a
token; ``GET /latest/meta-data/spot/instance-action`` with it answers 404, or the JSON notice
once :meth:`FakeMetadata.notice_now` is called; a missing or revoked token gets 401.
GCP: ``GET /computeMetadata/v1/instance/preempted`` with ``Metadata-Flavor: Google`` answers
``FALSE``/``TRUE`` with an ``ETag``; ``?wait_for_change=true[&last_etag=E][&timeout_sec=T]``
holds the request until the value's ETag differs from ``last_etag`` (without one: until the
next change). Without the flavor
header it answers 403, as GCP does.

Runs in a thread of the test process, so the code under test talks to it over real sockets.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class FakeMetadata:
    """The server's state; the test flips it with :meth:`notice_now`, :meth:`clear`,
    :meth:`fail_next` and :meth:`revoke_tokens`."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.action: dict[str, str] | None = None
        self.preempted = False
        self.etag = 1
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self.failures: list[str] = []  # what the next requests get: "500", "garbage", "drop"
        self.closing = False
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def notice_now(self, action: str = "terminate", at: float | None = None) -> None:
        """Announce a preemption: AWS's instance-action for wall time ``at`` (now + 120 s by
        default), and GCP's ``preempted`` = TRUE."""
        when = time.time() + 120 if at is None else at
        stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self.cond:
            self.action = {"action": action, "time": stamp}
            self.preempted = True
            self.etag += 1
            self.cond.notify_all()

    def clear(self) -> None:
        with self.cond:
            self.action = None
            self.preempted = False
            self.etag += 1
            self.cond.notify_all()

    def fail_next(self, *how: str) -> None:
        with self.cond:
            self.failures.extend(how)

    def revoke_tokens(self) -> None:
        with self.cond:
            self.tokens.clear()

    def wait_requests(self, n: int, timeout: float = 60.0) -> None:
        """Block until the server has had ``n`` requests in all."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.requests) >= n, timeout), (
                f"only {len(self.requests)} of {n} requests came"
            )

    def count(self, path_part: str) -> int:
        with self.cond:
            return sum(1 for _, p in self.requests if path_part in p)


class _Handler(BaseHTTPRequestHandler):
    server: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read state, not logs

    def do_PUT(self) -> None:
        meta: FakeMetadata = self.server.meta
        if self._failed(meta):
            return
        if self.path != "/latest/api/token":
            return self._send(404, "")
        if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self._send(400, "missing ttl")
        with meta.cond:
            meta.token_requests += 1
            token = f"token-{meta.token_requests}"
            meta.tokens.add(token)
        self._send(200, token)

    def do_GET(self) -> None:
        meta: FakeMetadata = self.server.meta
        if self._failed(meta):
            return
        url = urlsplit(self.path)
        if url.path == "/latest/meta-data/spot/instance-action":
            with meta.cond:
                ok = self.headers.get("X-aws-ec2-metadata-token") in meta.tokens
                action = meta.action
            if not ok:
                return self._send(401, "")
            if action is None:
                return self._send(404, "Not Found")
            return self._send(200, json.dumps(action), "application/json")
        if url.path == "/computeMetadata/v1/instance/preempted":
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._send(403, "Missing Metadata-Flavor:Google header.")
            query = parse_qs(url.query)
            with meta.cond:
                if query.get("wait_for_change") == ["true"]:
                    last = query.get("last_etag", [None])[0]
                    limit = float(query.get("timeout_sec", ["60"])[0])
                    # As GCP: without last_etag, wait for the next change.
                    seen = str(meta.etag) if last is None else last
                    meta.cond.wait_for(
                        lambda: str(meta.etag) != seen or meta.closing, timeout=limit
                    )
                value, etag = ("TRUE" if meta.preempted else "FALSE"), str(meta.etag)
            return self._send(200, value, etag=etag, google=True)
        self._send(404, "")

    def _failed(self, meta: FakeMetadata) -> bool:
        with meta.cond:
            meta.requests.append((self.command, self.path))
            meta.cond.notify_all()
            how = meta.failures.pop(0) if meta.failures else None
        if how is None:
            return False
        if how == "drop":
            self.close_connection = True
            self.connection.close()
        elif how == "garbage":
            self.wfile.write(b"this is not HTTP\r\n\r\n")
            self.close_connection = True
        else:
            self._send(int(how), "injected failure")
        return True

    def _send(
        self,
        status: int,
        body: str,
        ctype: str = "text/plain",
        etag: str | None = None,
        google: bool = False,
    ) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if etag is not None:
            self.send_header("ETag", etag)
        if google:
            self.send_header("Metadata-Flavor", "Google")
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def metadata_server() -> Iterator[FakeMetadata]:
    """A :class:`FakeMetadata` serving on 127.0.0.1 (a free port) for the ``with`` block."""
    meta = FakeMetadata()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.meta = meta  # type: ignore[attr-defined]
    meta.server = server
    thread = threading.Thread(target=server.serve_forever, name="fake-metadata", daemon=True)
    thread.start()
    try:
        yield meta
    finally:
        with meta.cond:
            meta.closing = True
            meta.cond.notify_all()
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
