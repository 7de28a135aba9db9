"""Running the app on uvicorn, with a graceful stop.

The first SIGTERM or SIGINT makes the service refuse new runs (``503``) and report not ready,
gives the runs in flight ``grace`` seconds to finish (then cancels the rest), ends the event
streams, and only then lets uvicorn close its connections: the process exits 0. A second
signal stops at once.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, TextIO

from shoal.errors import BackendError
from shoal.serve.app import create_app

try:
    import uvicorn
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise BackendError("shoal serve needs the 'serve' extra: pip install 'shoal[serve]'") from exc


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, grace: float, out: TextIO) -> None:
        super().__init__(config)
        self.grace = grace
        self.out = out
        self.loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None
        self.stopped_by: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn's own handler would close the listener at once; we drain first. Not
        # recording the signal keeps uvicorn from re-raising it after shutdown (exit status 0).
        if self.stopped_by is None and self.loop is not None:
            self.stopped_by = sig
            self.loop.call_soon_threadsafe(self._begin_drain)
        else:
            self.should_exit = True
            self.force_exit = True

    def _begin_drain(self) -> None:
        assert self.loop is not None
        self._drain = self.loop.create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        app = self.config.app
        service = getattr(getattr(app, "state", None), "service", None)
        try:
            if service is not None:
                print(
                    f"shoal serve: stopping: taking no new runs; up to {self.grace:g} s for "
                    "runs in flight",
                    file=self.out,
                    flush=True,
                )
                cancelled = await service.drain(self.grace)
                service.close_feed()
                if cancelled:
                    print(f"shoal serve: cancelled {cancelled} unfinished run(s)", file=self.out)
        finally:
            self.should_exit = True


def serve(
    targets: Iterable[Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: Any = "process",
    token: str | None = None,
    max_queue: int = 100,
    grace: float = 10.0,
    out: TextIO | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> int:
    """Serve ``targets`` over HTTP until SIGTERM/SIGINT; returns the exit status (0)."""
    out = out or sys.stderr
    app = create_app(targets, backend=backend, token=token, max_queue=max_queue)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    bound = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if family == socket.AF_INET6 else host}:{bound}"
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=5,
        backlog=2048,
    )
    server = _Server(config, grace, out)

    async def main() -> None:
        server.loop = asyncio.get_running_loop()
        print(f"shoal serve: listening on {url} (dashboard at {url}/)", file=out, flush=True)
        if on_listening is not None:
            on_listening(url)
        await server.serve(sockets=[sock])

    try:
        asyncio.run(main())
    finally:
        sock.close()
    if server.stopped_by is not None:
        print("shoal serve: stopped", file=out, flush=True)
    return 0
