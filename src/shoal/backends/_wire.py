"""The framing spoken between a pool and its agent processes. Standard library only.

Each message is an 8-byte big-endian length followed by a pickle. The agent process imports this
file as a top-level module (it starts without importing shoal, to keep cold starts short), so it
must not import anything from shoal.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

HEADER = struct.Struct("!Q")
PROTOCOL = pickle.HIGHEST_PROTOCOL

# Parent -> agent
INIT = 0  # (INIT, sys_path, pickled_setup, spin_seconds)
CALL = 1  # (CALL, fn_or_None, by_value_key, by_value_blob, args, kwargs)
PING = 2  # (PING,)
STOP = 3  # (STOP,)

# Agent -> parent
READY = 10  # (READY, pid, setup_seconds)
START_FAILED = 11  # (START_FAILED, exc_blob_or_None, type_name, message, traceback_text)
OK = 12  # (OK, result)
RAISED = 13  # (RAISED, exc_blob_or_None, type_name, message, traceback_text)
UNPICKLABLE = 14  # (UNPICKLABLE, what, detail)
PONG = 15  # (PONG,)
UNKNOWN_FN = 16  # (UNKNOWN_FN, key): the agent no longer has that function; send it again

# The fixed messages, pickled once: the agent recognises them by their bytes.
PING_MSG = pickle.dumps((PING,), PROTOCOL)
STOP_MSG = pickle.dumps((STOP,), PROTOCOL)
PONG_MSG = pickle.dumps((PONG,), PROTOCOL)


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    return HEADER.pack(len(payload)) + payload


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte to a blocking descriptor."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def send(fd: int, payload: bytes) -> None:
    """Write one message to a blocking descriptor without copying the payload."""
    header = HEADER.pack(len(payload))
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


def recv(fd: int) -> Any:
    """Read one message from a blocking descriptor; None at end of file."""
    header = read_exact(fd, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    body = read_exact(fd, size)
    if body is None:
        return None
    return pickle.loads(body)


class FrameReader:
    """Splits a byte stream arriving in arbitrary pieces back into payloads."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        if not buf and len(data) >= HEADER.size:
            # Fast path: one whole message in one read, the common case for small calls.
            (size,) = HEADER.unpack_from(data)
            if len(data) == HEADER.size + size:
                return [data[HEADER.size :]]
        buf += data
        out = []
        while len(buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(buf)
            end = HEADER.size + size
            if len(buf) < end:
                break
            out.append(bytes(buf[HEADER.size : end]))
            del buf[:end]
        return out
