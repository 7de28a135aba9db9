"""The framed channel to one agent process, and the calls outstanding on it.

The process and container backends both reach their agents through a :class:`Channel`: a pair
of pipes or one Unix socket carrying ``_wire`` frames, written without blocking (what the pipe
does not take waits in an out buffer) and read by the event loop. Each call goes out under a
fresh id and is settled by the reply that echoes it; a reply to an id that is not outstanding
means something else writes on the agent's channel (a forked copy of it, say), so the agent
can no longer be trusted: every call on it fails and it is killed. When the agent exits, the
backend that noticed calls :meth:`Channel.finish`, which fails whatever is still outstanding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from shoal.backends import _ship, _wire
from shoal.backends.base import AgentSpec
from shoal.errors import AgentLost, AgentStartError, CallRecalled

_READ_SIZE = 1 << 18
# A pipe takes a write of at most this many bytes whole or not at all (POSIX PIPE_BUF).
_ATOMIC = 4096


class PendingCall:
    """An outstanding call: its future, and what sending it again needs."""

    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(
        self,
        future: asyncio.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs


class Channel:
    """One agent's framed channel: its descriptors, its outstanding calls, its last sign of life.

    ``out_fd`` carries frames to the agent, ``in_fd`` its replies (one socket may be both);
    the pool holds ``lifeline_fd`` open so that the agent sees end-of-file when the pool's
    process is gone. ``kill`` ends the agent at once; it is used when the agent breaks the
    protocol. ``pending`` maps each outstanding call id to its call (a call whose future was
    cancelled stays there until its reply comes: that id was abandoned, not answered).
    ``last_heard`` is the loop time of the last frame received, ``busy_since`` when the agent
    last went from no outstanding call to one.
    """

    __slots__ = (
        "_batch",
        "_control",
        "_in",
        "_kill",
        "_last_id",
        "_lifeline",
        "_loop",
        "_out",
        "_out_buf",
        "_parked",
        "_reader",
        "_reading",
        "agent_id",
        "broken",
        "busy_since",
        "exit_code",
        "exited",
        "last_heard",
        "ordered",
        "pending",
        "sent_keys",
    )

    def __init__(
        self,
        agent_id: str,
        out_fd: int,
        in_fd: int,
        lifeline_fd: int,
        kill: Callable[[], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.agent_id = agent_id
        self._out, self._in, self._lifeline = out_fd, in_fd, lifeline_fd
        self._kill = kill
        self._reader = _wire.FrameReader()
        self._out_buf = bytearray()
        # Frames of calls queued behind another (prefetch) that were kept back unwritten: too
        # big for one atomic write, or behind bytes still waiting to go. A frame the pipe took
        # in part cannot be taken back until the agent reads it, which it does only once the
        # call ahead ends; a frame not begun can. They go out when the call ahead is answered.
        self._parked: dict[int, bytes] = {}
        # Frames of calls queued behind another, written together at the end of this pass of
        # the event loop: one write (one wake-up of the agent) for all those sent in it.
        self._batch: dict[int, bytes] = {}
        self._last_id = 0
        self._control: asyncio.Future[tuple[Any, ...]] | None = None
        self.pending: dict[int, PendingCall] = {}
        self.sent_keys: set[int] = set()  # function keys the agent has been sent
        self.broken: str | None = None  # why the agent can no longer be trusted
        self.exit_code: int | None = None
        self.exited: asyncio.Future[int] = loop.create_future()
        self.last_heard = self.busy_since = loop.time()
        # The agent serves one call at a time, in the order sent: a call behind another
        # outstanding one has not started, and can be taken back with recall().
        self.ordered = False
        os.set_blocking(out_fd, False)
        os.set_blocking(in_fd, False)
        loop.add_reader(in_fd, self._on_readable)
        self._reading = True

    # -- calls --------------------------------------------------------------------------------

    def call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> asyncio.Future[Any]:
        """Send ``fn(*args, **kwargs)``; a future for its outcome (see ``Backend.call``)."""
        payload = _ship.encode_call(self.sent_keys, fn, args, kwargs)
        call = PendingCall(self._loop.create_future(), fn, args, kwargs)
        self._send_call(call, payload)
        return call.future

    def _send_call(self, call: PendingCall, payload: bytes) -> None:
        call_id = self._last_id + 1
        if (
            self.ordered
            and self.pending
            and (self._parked or self._out_buf or len(payload) + _wire.HEADER.size > _ATOMIC)
        ):
            self._check_open()
            self._parked[call_id] = payload  # written once the call ahead is answered
        elif self.ordered and self.pending:
            self._check_open()
            if not self._batch:
                self._loop.call_soon(self._write_batch)
            self._batch[call_id] = payload
        else:
            self.send(payload, call_id)
        self._last_id = call_id
        if not self.pending:
            self.busy_since = self._loop.time()
        self.pending[call_id] = call

    def recall(self, future: asyncio.Future[Any]) -> bool:
        """Ask the agent not to start the call behind ``future`` if it has not started yet;
        True if it is known at once that it will not. The call then ends with
        :class:`~shoal.errors.CallRecalled` (unless its future was cancelled), or, had it
        started, as it would have: either way with one outcome.

        On an ordered channel the answer is often known at once: the agent answers a call
        before it reads the next, so if the call ahead is still unanswered once the replies
        already written are read, this one has not started, and the CANCEL, now wholly in the
        pipe ahead of the agent, will stop it (the agent's NOT_STARTED reply is then ignored).
        A call whose frame was kept back unwritten (see ``_parked``) is simply dropped.
        """
        call_id = next((i for i, c in self.pending.items() if c.future is future), None)
        if call_id is None or (future.done() and not future.cancelled()):
            return False
        if (
            self._parked.pop(call_id, None) is not None
            or self._batch.pop(call_id, None) is not None
        ):  # never written: nothing to cancel
            del self.pending[call_id]
            if not future.done():
                future.set_exception(
                    CallRecalled(f"call {call_id} was taken back from agent {self.agent_id}")
                )
            return True
        try:
            self.send(pickle.dumps((_wire.CANCEL, call_id), _wire.PROTOCOL))
        except AgentLost:
            return False  # gone: finish() fails the call
        if not self.ordered or self._out_buf or next(iter(self.pending)) == call_id:
            return False
        with contextlib.suppress(BlockingIOError, OSError):
            while self._reading and (data := os.read(self._in, _READ_SIZE)):
                self._frames(data)
        if call_id not in self.pending or next(iter(self.pending)) == call_id:
            return False  # answered meanwhile, or it may have started
        if not future.done():
            future.set_exception(
                CallRecalled(f"call {call_id} was taken back from agent {self.agent_id}")
            )
        return True

    def request(self, payload: bytes) -> asyncio.Future[tuple[Any, ...]]:
        """Send a control message (INIT, PING) and return a future for the agent's answer."""
        if self._control is not None and not self._control.done():
            raise RuntimeError(f"agent {self.agent_id} is already answering a control message")
        self.send(payload, _wire.CONTROL)
        fut: asyncio.Future[tuple[Any, ...]] = self._loop.create_future()
        self._control = fut
        return fut

    def _check_open(self) -> None:
        if self.exit_code is not None or self.broken is not None or self._out < 0:
            raise AgentLost(
                self.broken or f"agent {self.agent_id} is gone (exit code {self.exit_code})",
                self.agent_id,
                exit_code=self.exit_code,
                delivered=False,
            )

    def _unpark(self) -> None:
        """The call ahead was answered: write the kept-back frames, in order. The first, the
        agent's next call, goes whatever its size; those behind it only as ``_send_call``
        would write them (whole into the pipe), the rest staying kept back: a frame the pipe
        took in part, or one waiting behind it, cannot be taken back at once."""
        parked, self._parked = self._parked, {}
        (first_id, first), *rest = parked.items()
        try:
            self.send(first, first_id)
        except AgentLost:
            return  # gone: finish() fails the calls
        behind: dict[int, bytes] = {}
        for i, (call_id, payload) in enumerate(rest):
            if len(payload) + _wire.HEADER.size > _ATOMIC:
                self._parked = dict(rest[i:])
                break
            behind[call_id] = payload
        self._write_behind(behind)

    def _write_batch(self) -> None:
        """Write the frames batched in this pass (see ``_batch``), in one system call."""
        batch, self._batch = self._batch, {}
        if batch and self._out >= 0:
            self._write_behind(batch)

    def _write_behind(self, frames: dict[int, bytes]) -> None:
        """Write frames of calls queued behind another, each whole in the pipe or not at all:
        in as few writes as keep each at most ``_ATOMIC`` bytes (all of a batch of tiny calls
        in one), which a pipe takes whole or refuses. Those it refuses, or that would wait
        behind bytes in the out buffer, are kept back with the parked ones, ahead of them. (A
        socket may take part of a write: the rest of that frame then waits in the out buffer,
        and the frames after it are kept back.)"""
        size_of = _wire.HEADER.size
        chunks: list[list[int]] = []
        size = _ATOMIC
        for call_id, payload in frames.items():
            n = size_of + len(payload)
            if size + n > _ATOMIC:
                chunks.append([])
                size = 0
            chunks[-1].append(call_id)
            size += n
        unsent = dict(frames)
        pack = _wire.HEADER.pack
        for chunk in chunks:
            if self._out_buf:
                break
            parts: list[bytes] = []
            for call_id in chunk:
                parts.append(pack(len(frames[call_id]), call_id))
                parts.append(frames[call_id])
            try:
                written = os.writev(self._out, parts)
            except BlockingIOError:
                break
            except (BrokenPipeError, ConnectionResetError):
                return  # gone: finish() fails the calls
            for call_id in chunk:
                if written <= 0:
                    break
                payload = unsent.pop(call_id)
                n = size_of + len(payload)
                if written < n:  # taken in part: the rest must follow
                    self._out_buf += (pack(len(payload), call_id) + payload)[written:]
                    self._loop.add_writer(self._out, self._on_writable)
                written -= n
        if unsent:
            self._parked = {**unsent, **self._parked}

    def send(self, payload: bytes, call_id: int = _wire.CONTROL) -> None:
        """Write one frame, or queue what the pipe does not take now; never blocks."""
        self._check_open()
        if self._batch:
            self._write_batch()  # frames go out in the order they were sent
        self._write([_wire.HEADER.pack(len(payload), call_id), payload])

    def _write(self, parts: list[bytes]) -> None:
        if self._out_buf:
            for part in parts:
                self._out_buf += part
            return
        try:
            n = os.writev(self._out, parts)
        except BlockingIOError:
            n = 0
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise AgentLost(
                f"agent {self.agent_id} is gone; the call was not delivered",
                self.agent_id,
                delivered=False,
            ) from exc
        if n < sum(map(len, parts)):
            self._out_buf += b"".join(parts)[n:]
            self._loop.add_writer(self._out, self._on_writable)

    # -- the loop's callbacks -----------------------------------------------------------------

    def _on_writable(self) -> None:
        try:
            n = os.write(self._out, self._out_buf)
        except BlockingIOError:
            return
        except OSError:
            n = len(self._out_buf)  # whoever watches the agent's exit reports the loss
        del self._out_buf[:n]
        if not self._out_buf:
            self._loop.remove_writer(self._out)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._in, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # End of file: the agent is exiting; its exit watcher fails any pending call.
            self._stop_reading()
            return
        self._frames(data)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._in)

    def _frames(self, data: bytes) -> None:
        self.last_heard = self._loop.time()
        for call_id, payload in self._reader.feed(data):
            if call_id == _wire.LOG:
                self._log(payload)
            elif call_id:
                self._reply(call_id, payload)
                if self.broken is not None:
                    return
                if self._parked and next(iter(self.pending)) in self._parked:
                    self._unpark()
            elif payload != _wire.HEARTBEAT_MSG:
                self._control_reply(payload)

    def _reply(self, call_id: int, payload: bytes) -> None:
        call = self.pending.pop(call_id, None)
        if call is None:
            self._break(
                f"agent {self.agent_id} broke the protocol: reply to call {call_id}, which is "
                "not outstanding (a forked copy of the agent?); it was killed"
            )
            return
        fut = call.future
        if fut.done():
            return  # an abandoned call's late reply; the pool kills this agent
        try:
            reply = pickle.loads(payload)
        except BaseException as exc:  # unpickling may run anything, sys.exit included
            fut.set_exception(_ship.undecodable(self.agent_id, exc))
            return
        kind = reply[0]
        if kind == _wire.OK:
            fut.set_result(reply[1])
        elif kind == _wire.NOT_STARTED:
            fut.set_exception(
                CallRecalled(f"call {call_id} was taken back from agent {self.agent_id}")
            )
        elif kind == _wire.UNKNOWN_FN:
            # The agent evicted the function: send it again, whole, under a new id.
            self.sent_keys.discard(reply[1])
            try:
                self._send_call(
                    call, _ship.encode_call(self.sent_keys, call.fn, call.args, call.kwargs)
                )
            except Exception as exc:
                fut.set_exception(exc)
        else:
            try:
                fut.set_result(_ship.outcome(reply, self.sent_keys, call.fn, self.agent_id))
            except Exception as exc:
                fut.set_exception(exc)

    def _log(self, payload: bytes) -> None:
        """A log record from the agent: hand it to this process's logging, as if logged here
        (the controller's levels, handlers and format apply), marked with the agent's id."""
        try:
            name, levelno, message, created = pickle.loads(payload)
            logger = logging.getLogger(name)
            if not logger.isEnabledFor(levelno):
                return
            record = logging.makeLogRecord(
                {
                    "name": name,
                    "levelno": levelno,
                    "levelname": logging.getLevelName(levelno),
                    "msg": f"[{self.agent_id}] {message}",
                    "created": created,
                    "agent_id": self.agent_id,
                }
            )
            logger.handle(record)
        except Exception:
            logging.getLogger("shoal.backends").exception(
                "agent %s sent a log record that could not be read", self.agent_id
            )

    def _control_reply(self, payload: bytes) -> None:
        fut = self._control
        if fut is None or fut.done():
            return  # a PONG for a health check whose caller gave up
        self._control = None
        try:
            fut.set_result(pickle.loads(payload))
        except BaseException as exc:
            fut.set_exception(_ship.undecodable(self.agent_id, exc))

    def _break(self, why: str) -> None:
        """The agent broke the protocol: fail all its calls, stop listening, kill it."""
        self.broken = why
        self._stop_reading()
        self._fail_all(lambda: AgentLost(why, self.agent_id, delivered=True))
        self._kill()

    def _fail_all(self, error: Callable[[], BaseException]) -> None:
        for call in self.pending.values():
            if not call.future.done():
                call.future.set_exception(error())
        self.pending.clear()
        if self._control is not None and not self._control.done():
            self._control.set_exception(error())
        self._control = None

    # -- the end ------------------------------------------------------------------------------

    def finish(self, code: int, lost: str) -> None:
        """The agent is gone with exit status ``code``: take the replies still in the pipe,
        fail every call left outstanding with ``AgentLost(lost)``, close the descriptors."""
        if self.exit_code is not None:
            return
        self._stop_reading()
        if self.broken is None and self._in >= 0:
            # A reply written just before the exit may still sit in the pipe: take it first.
            with contextlib.suppress(OSError):
                while data := os.read(self._in, _READ_SIZE):
                    self._frames(data)
        self.exit_code = code
        self._parked.clear()
        self._batch.clear()
        if self._out_buf:
            self._loop.remove_writer(self._out)
            self._out_buf.clear()
        for fd in {self._out, self._in, self._lifeline}:  # a socket may be both
            os.close(fd)
        self._out = self._in = self._lifeline = -1
        if self.ordered:
            # Only the oldest outstanding call can have started; the ones behind it never
            # reached the agent's code and are safe to run elsewhere.
            behind = list(self.pending.values())[1:]
            for call in behind:
                if not call.future.done():
                    call.future.set_exception(
                        AgentLost(
                            f"{lost}; this call, queued behind another, had not started",
                            self.agent_id,
                            exit_code=code,
                            delivered=False,
                        )
                    )
        self._fail_all(lambda: AgentLost(lost, self.agent_id, exit_code=code))
        self.exited.set_result(code)


async def warm_up(channel: Channel, spec: AgentSpec, init: bytes, hint: str) -> int:
    """Send INIT and wait for READY; the agent's pid. Raises AgentStartError (the caller
    kills the agent on any exception)."""
    try:
        reply = await channel.request(init)
    except AgentLost as exc:
        raise AgentStartError(
            f"pool {spec.pool!r}: agent {spec.agent_id} exited with code {exc.exit_code} "
            f"while warming up{hint}",
            spec.agent_id,
        ) from exc
    if reply[0] != _wire.READY:
        raise _ship.setup_failed(spec, reply)
    pid: int = reply[1]
    return pid


async def ping(channel: Channel) -> bool:
    """Whether the agent answers a PING."""
    try:
        reply = await channel.request(_wire.PING_MSG)
    except AgentLost:
        return False
    return bool(reply[0] == _wire.PONG)


class CpuWatch:
    """Whether a process's main thread is making progress, read from Linux's ``/proc``.

    Only the main thread is read: it runs the calls, and the agent's own helper threads (the
    heartbeat, the lifeline) must not pass for progress of a deadlocked call. A stopped process
    (state ``T``/``t``, SIGSTOP or a debugger) never counts as progressing.
    """

    __slots__ = ("_path", "_sampled_at", "_ticks", "progress_at")

    def __init__(self, pid: int) -> None:
        self._path = f"/proc/{pid}/task/{pid}/stat"
        self._ticks = -1
        self._sampled_at = float("-inf")
        self.progress_at = float("-inf")

    def sample(self, now: float, since: float) -> float:
        """The loop time at which the thread was last seen using CPU since ``since`` (or
        -inf). Progress is seen between two samples, so sample at the rate you check."""
        try:
            with open(self._path, "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            state, ticks = fields[0], int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            return self.progress_at
        if state in (b"T", b"t"):
            ticks = self._ticks  # stopped: no progress, whatever the counters say
        elif self._sampled_at >= since and ticks != self._ticks:
            self.progress_at = now
        self._ticks, self._sampled_at = ticks, now
        return self.progress_at


def unresponsive_for(channel: Channel, cpu: CpuWatch | None, now: float) -> float:
    """Seconds since the agent behind ``channel`` last showed life during its current call."""
    if not channel.pending or channel.exit_code is not None:
        return 0.0
    since = channel.busy_since
    last = max(since, channel.last_heard)
    if cpu is not None:
        last = max(last, cpu.sample(now, since))
    return max(0.0, now - last)


async def check_health(handle: Any) -> bool:
    """Whether an idle agent on ``handle.channel`` answers a ping (a stopping one does not)."""
    if not handle.alive or handle.stopping:
        return False
    return await ping(handle.channel)


async def stop(handle: Any, grace: float, kill: Callable[[Any], Awaitable[None]]) -> bool:
    """Ask the agent on ``handle.channel`` to exit, and ``kill`` it if it has not within
    ``grace`` seconds. True if it exited on its own."""
    if handle.alive and not handle.stopping:
        handle.stopping = True
        with contextlib.suppress(AgentLost):
            handle.channel.send(_wire.STOP_MSG)
    try:
        await asyncio.wait_for(asyncio.shield(handle.channel.exited), grace)
    except TimeoutError:
        await kill(handle)
        return False
    return True
