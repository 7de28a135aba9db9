"""The framing spoken between a pool and its agent processes. Standard library only.

Each frame is a 16-byte big-endian header — the payload's length and a call id — followed by the
payload, a pickle. A CALL carries a fresh id (1, 2, ...) and the agent's reply echoes it, so a
reply can never be taken for the answer to another call; the control frames (INIT, READY,
START_FAILED, PING, PONG, STOP, HEARTBEAT) use id 0. The agent process imports this file as a
top-level module (it starts without importing shoal, to keep cold starts short), so it must not
import anything from shoal.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

HEADER = struct.Struct("!QQ")  # payload length, call id
CONTROL = 0  # the call id of every frame that is not a call or its reply
LOG = (1 << 64) - 1  # the call id of a log record forwarded by an agent (never a call's id)
PROTOCOL = pickle.HIGHEST_PROTOCOL

# Parent -> agent
INIT = 0  # (INIT, sys_path, setup, spin_s, heartbeat_interval_or_0, max_concurrency, log_level)
# A frame with call id LOG carries (logger name, levelno, message, created) from the agent.
CALL = 1  # (CALL, fn_key_or_None, pickled_fn_or_None, args, kwargs); None blob: use the kept fn
PING = 2  # (PING,)
STOP = 3  # (STOP,)
CANCEL = 4  # (CANCEL, call_id): do not start that call if it has not started (id 0 frame)

# Agent -> parent
READY = 10  # (READY, pid)
START_FAILED = 11  # (START_FAILED, exc_blob_or_None, type_name, message, traceback_text)
OK = 12  # (OK, result)
RAISED = 13  # (RAISED, exc_blob_or_None, type_name, message, traceback_text)
UNPICKLABLE = 14  # (UNPICKLABLE, what, detail)
PONG = 15  # (PONG,)
UNKNOWN_FN = 16  # (UNKNOWN_FN, key): the agent no longer has that function; send it again
HEARTBEAT = 17  # (HEARTBEAT,): still running a call, every heartbeat_interval seconds
NOT_STARTED = 18  # (NOT_STARTED,): the reply to a call cancelled before it started

# The fixed messages, pickled once: the agent recognises them by their bytes.
PING_MSG = pickle.dumps((PING,), PROTOCOL)
STOP_MSG = pickle.dumps((STOP,), PROTOCOL)
PONG_MSG = pickle.dumps((PONG,), PROTOCOL)
HEARTBEAT_MSG = pickle.dumps((HEARTBEAT,), PROTOCOL)
NOT_STARTED_MSG = pickle.dumps((NOT_STARTED,), PROTOCOL)


def frame(payload: bytes, call_id: int = CONTROL) -> bytes:
    """Prefix ``payload`` with its length and call id."""
    return HEADER.pack(len(payload), call_id) + payload


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte to a blocking descriptor."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def send(fd: int, payload: bytes, call_id: int = CONTROL) -> None:
    """Write one frame to a blocking descriptor without copying the payload."""
    header = HEADER.pack(len(payload), call_id)
    n = os.writev(fd, [header, payload])
    if n < len(header) + len(payload):
        write_all(fd, (header + payload)[n:])


def read_exact(fd: int, n: int) -> bytes | None:
    """Read exactly ``n`` bytes from a blocking descriptor; None at end of file."""
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def recv(fd: int) -> tuple[int, bytes] | None:
    """Read one frame from a blocking descriptor: ``(call_id, payload)``; None at end of file."""
    header = read_exact(fd, HEADER.size)
    if header is None:
        return None
    size, call_id = HEADER.unpack(header)
    body = read_exact(fd, size)
    if body is None:
        return None
    return call_id, body


def recv_message(fd: int) -> Any:
    """Read one frame and unpickle its payload; None at end of file."""
    got = recv(fd)
    return None if got is None else pickle.loads(got[1])


class FrameReader:
    """Splits a byte stream arriving in arbitrary pieces back into ``(call_id, payload)``."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        size_of = HEADER.size
        if not buf and len(data) >= size_of:
            # Fast path: one whole frame in one read, the common case for small calls.
            size, call_id = HEADER.unpack_from(data)
            if len(data) == size_of + size:
                return [(call_id, data[size_of:])]
        buf += data
        out = []
        while len(buf) >= size_of:
            size, call_id = HEADER.unpack_from(buf)
            end = size_of + size
            if len(buf) < end:
                break
            out.append((call_id, bytes(buf[size_of:end])))
            del buf[:end]
        return out
