"""``shoal serve`` as a child process on a free loopback port, for the serve tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).with_name("apps.py")
DEADLINE_S = 60.0  # generous: CI machines are shared and busy


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


class ServeProcess:
    """One ``shoal serve`` child; ``url`` once it listens. Stopped by :meth:`stop`."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src"), *filter(None, [full_env.get("PYTHONPATH")])]
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.cli", "serve", "--port", "0", *args],
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(DEADLINE_S):
            self.stop()
            raise AssertionError("shoal serve did not start listening:\n" + self.output)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                self.url = found.group(1)
                self._listening.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=DEADLINE_S, **kwargs)

    def wait_ready(self, **kwargs: Any) -> None:
        with self.client(**kwargs) as c:
            wait_for(lambda: c.get("/readyz").status_code == 200, "/readyz to answer 200")

    def stop(self, timeout: float = DEADLINE_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(DEADLINE_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@contextlib.contextmanager
def serving(
    *args: str, env: dict[str, str] | None = None, ready: bool = True
) -> Iterator[ServeProcess]:
    server = ServeProcess(*(args or (str(APPS),)), env=env)
    try:
        if ready:
            server.wait_ready(headers=_auth(env))
        yield server
    finally:
        server.stop()


def _auth(env: dict[str, str] | None) -> dict[str, str]:
    token = (env or {}).get("SHOAL_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}
