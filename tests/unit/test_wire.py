"""The frame format: a length and a call id before each payload."""

from __future__ import annotations

import os

from shoal.backends import _wire


def test_a_frame_carries_its_call_id() -> None:
    reader = _wire.FrameReader()
    assert reader.feed(_wire.frame(b"abc", 7)) == [(7, b"abc")]
    assert reader.feed(_wire.frame(b"ping")) == [(_wire.CONTROL, b"ping")]
    assert reader.feed(_wire.frame(b"", 2**64 - 1)) == [(2**64 - 1, b"")]


def test_frames_split_at_every_byte_come_back_whole_and_in_order() -> None:
    frames = [(1, b"x" * 100), (0, b""), (2, b"hello"), (99, bytes(range(256)))]
    stream = b"".join(_wire.frame(p, i) for i, p in frames)
    for cut in range(len(stream) + 1):
        reader = _wire.FrameReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert got == frames, cut
    reader = _wire.FrameReader()
    got = [f for i in range(len(stream)) for f in reader.feed(stream[i : i + 1])]
    assert got == frames


def test_several_frames_in_one_read() -> None:
    reader = _wire.FrameReader()
    data = _wire.frame(b"a", 1) + _wire.frame(b"bb", 2) + _wire.frame(b"ccc", 3)[:5]
    assert reader.feed(data) == [(1, b"a"), (2, b"bb")]
    assert reader.feed(_wire.frame(b"ccc", 3)[5:]) == [(3, b"ccc")]


def test_send_and_recv_over_a_pipe() -> None:
    r, w = os.pipe()
    try:
        _wire.send(w, b"payload", 42)
        _wire.send(w, _wire.PING_MSG)
        assert _wire.recv(r) == (42, b"payload")
        assert _wire.recv(r) == (_wire.CONTROL, _wire.PING_MSG)
        os.close(w)
        w = -1
        assert _wire.recv(r) is None
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
