"""A minimal async HTTP/1.1 client for instance metadata endpoints, on asyncio streams.

Metadata services answer small plain-text replies on a link-local address; one request per
connection (``Connection: close``) is all they need, and it keeps shoal free of an HTTP
dependency and of a thread per poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from shoal.errors import ConfigError

#: The most of a reply a metadata endpoint is allowed to send (its replies are a few bytes).
MAX_REPLY_BYTES = 1 << 16


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: str


class HttpError(OSError):
    """The endpoint answered something that is not HTTP, too much of it, or an error status."""


def split_base(base_url: str, what: str) -> tuple[str, int, str]:
    """``http://host[:port][/prefix]`` → (host, port, prefix); one-line error otherwise."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(
            f"{what}: base_url={base_url!r} must be an http:// URL with a host, "
            "e.g. 'http://169.254.169.254'"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ConfigError(f"{what}: base_url={base_url!r} has a bad port") from None
    return parts.hostname, port, parts.path.rstrip("/")


async def request(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str],
    timeout: float,
) -> Reply:
    """One request on a fresh connection; raises OSError, TimeoutError or HttpError."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            if method in ("PUT", "POST"):
                lines.append("Content-Length: 0")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            raw = await reader.read(MAX_REPLY_BYTES + 1)
            while raw and len(raw) <= MAX_REPLY_BYTES:
                more = await reader.read(MAX_REPLY_BYTES + 1 - len(raw))
                if not more:
                    break
                raw += more
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if len(raw) > MAX_REPLY_BYTES:
        raise HttpError(f"reply from {host}:{port}{path} is over {MAX_REPLY_BYTES} bytes")
    return _parse(raw, f"{host}:{port}{path}")


def _parse(raw: bytes, where: str) -> Reply:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise HttpError(f"reply from {where} has no end of headers")
    first, *rest = head.decode("latin-1").split("\r\n")
    parts = first.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HttpError(f"reply from {where} is not HTTP: {first[:60]!r}")
    headers = {}
    for line in rest:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunk(body, where)
    elif "content-length" in headers:
        try:
            body = body[: int(headers["content-length"])]
        except ValueError:
            raise HttpError(f"reply from {where} has a bad Content-Length") from None
    return Reply(int(parts[1]), headers, body.decode("utf-8", "replace"))


def _unchunk(body: bytes, where: str) -> bytes:
    out = b""
    while True:
        size_line, sep, body = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise HttpError(f"reply from {where} has a bad chunk") from None
        if not sep or size == 0:
            return out
        out += body[:size]
        body = body[size + 2 :]
