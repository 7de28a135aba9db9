"""Agents as long-lived local Python processes: the embedded default backend.

Each agent is a child interpreter that warms up once (imports, the pool's ``setup``) and then
serves calls one at a time over a pair of inherited pipes; nothing listens on a port. The parent's
event loop reads results without threads, and learns of a child's death from a pidfd (Linux) or by
polling. A child never outlives its parent: it has ``PR_SET_PDEATHSIG`` on Linux and, everywhere,
a lifeline pipe whose end-of-file means the parent is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pickle
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shoal.backends import _ship, _wire
from shoal.backends.base import AgentHandle, AgentSpec
from shoal.errors import AgentLost, AgentStartError, ConfigError, SerializationError

AGENT_MAIN = str(Path(__file__).with_name("_agent_main.py"))
_READ_SIZE = 1 << 18
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ProcessAgent(AgentHandle):
    """One child process and the descriptors that reach it."""

    __slots__ = (
        "_exit_watch",
        "cmd_fd",
        "exited",
        "lifeline_fd",
        "out_buf",
        "pending",
        "popen",
        "reader",
        "res_fd",
        "sent_keys",
        "spec",
        "stopping",
    )

    def __init__(
        self,
        spec: AgentSpec,
        popen: subprocess.Popen[bytes] | None,
        fds: tuple[int, int, int],
        pid: int | None = None,
    ):
        super().__init__(spec.agent_id, popen.pid if popen is not None else pid)
        self.spec = spec
        self.popen = popen
        self.cmd_fd, self.res_fd, self.lifeline_fd = fds
        self.reader = _wire.FrameReader()
        self.pending: asyncio.Future[tuple[Any, ...]] | None = None
        self.out_buf = bytearray()
        self.sent_keys: set[int] = set()
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.stopping = False
        self._exit_watch: int | None = None


class ProcessBackend:
    """Start agents as child processes of this interpreter.

    ``python`` is the interpreter to run (this one by default); ``env`` is added to the
    inherited environment of every agent. After each reply an agent polls for its next call for
    ``spin`` seconds before going to sleep (0 turns this off): under load it halves the round
    trip, and it costs an idle agent at most that much CPU per call.
    """

    name = "process"

    def __init__(
        self,
        *,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        spin: float = 100e-6,
    ):
        if spin < 0:
            raise ConfigError(f"ProcessBackend: spin={spin!r} must be >= 0 seconds")
        self._python = python or sys.executable
        self._env = dict(env or {})
        self._spin = spin

    def __repr__(self) -> str:
        return f"ProcessBackend(python={self._python!r})"

    # -- the protocol -------------------------------------------------------------------------

    async def start(self, spec: AgentSpec) -> ProcessAgent:
        init = _ship.init_message(spec, self._spin)
        agent = self._spawn(spec)
        await self._warm_up(agent, spec, init, " (see its output above)")
        return agent

    async def _warm_up(self, agent: ProcessAgent, spec: AgentSpec, init: bytes, hint: str) -> None:
        """Send INIT and wait for READY; on any failure the agent is killed before raising."""
        try:
            reply = await self._request(agent, init)
        except AgentLost as exc:
            await self.kill(agent)
            raise AgentStartError(
                f"pool {spec.pool!r}: agent {spec.agent_id} exited with code {exc.exit_code} "
                f"while warming up{hint}",
                spec.agent_id,
            ) from exc
        except BaseException:
            await self.kill(agent)
            raise
        if reply[0] != _wire.READY:
            await self.kill(agent)
            raise _ship.setup_failed(spec, reply)
        agent.pid = reply[1]

    async def call(
        self,
        handle: ProcessAgent,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> Any:
        return await _ship.call_over(
            functools.partial(self._request, handle),
            handle.sent_keys,
            fn,
            args,
            kwargs,
            handle.agent_id,
        )

    async def check_health(self, handle: ProcessAgent) -> bool:
        if not handle.alive or handle.stopping:
            return False
        try:
            reply = await self._request(handle, _wire.PING_MSG)
        except AgentLost:
            return False
        return bool(reply[0] == _wire.PONG)

    async def stop(self, handle: ProcessAgent, grace: float) -> None:
        if handle.alive and not handle.stopping:
            handle.stopping = True
            with contextlib.suppress(AgentLost):
                self._send(handle, _wire.STOP_MSG)
        try:
            await asyncio.wait_for(asyncio.shield(handle.exited), grace)
        except TimeoutError:
            await self.kill(handle)
        else:
            await _end_group(handle)

    async def kill(self, handle: ProcessAgent) -> None:
        handle.stopping = True
        if handle.alive and handle.popen is not None:
            _kill_group(handle.popen.pid)
        await asyncio.shield(handle.exited)
        await _end_group(handle)

    def memory_bytes(self, handle: ProcessAgent) -> int | None:
        """The agent's resident memory (Linux ``/proc``), or None where it cannot be read."""
        try:
            with open(f"/proc/{handle.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return None

    # -- plumbing -----------------------------------------------------------------------------

    def _spawn(self, spec: AgentSpec) -> ProcessAgent:
        raise_fd_limit()
        fds: list[int] = []
        try:
            for _ in range(5):
                fds.extend(os.pipe())
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        cmd_r, cmd_w, res_r, res_w, life_r, life_w, out_r, out_w, err_r, err_w = fds
        child_fds = (cmd_r, res_w, life_r)
        env = None
        if self._env or spec.env:
            env = {**os.environ, **self._env, **spec.env}
        try:
            # A session of its own: a signal for the controller's process group (Ctrl-C,
            # `timeout`, `kill -- -PGID`) is not one for the agent, whose calls the controller
            # still wants to finish; and the agent's children form a group we can kill whole.
            popen = subprocess.Popen(
                [self._python, AGENT_MAIN, str(cmd_r), str(res_w), str(life_r), str(os.getpid())],
                pass_fds=child_fds,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        for fd in (*child_fds, out_w, err_w):
            os.close(fd)
        os.set_blocking(cmd_w, False)
        os.set_blocking(res_r, False)
        agent = ProcessAgent(spec, popen, (cmd_w, res_r, life_w))
        loop = asyncio.get_running_loop()
        _relay_output(loop, popen.pid, spec.agent_id, ((out_r, 1), (err_r, 2)))
        loop.add_reader(res_r, self._on_readable, agent)
        self._watch_exit(agent, loop)
        return agent

    async def _request(self, agent: ProcessAgent, payload: bytes) -> tuple[Any, ...]:
        if agent.pending is not None:
            raise RuntimeError(f"agent {agent.agent_id} is already running a call")
        fut: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        self._send(agent, payload)
        agent.pending = fut
        try:
            return await fut
        finally:
            agent.pending = None

    def _send(self, agent: ProcessAgent, payload: bytes) -> None:
        if not agent.alive or agent.cmd_fd < 0:
            raise AgentLost(
                f"agent {agent.agent_id} is gone (exit code {agent.exit_code})",
                agent.agent_id,
                exit_code=agent.exit_code,
                delivered=False,
            )
        header = _wire.HEADER.pack(len(payload))
        if agent.out_buf:
            agent.out_buf += header + payload
            return
        try:
            n = os.writev(agent.cmd_fd, [header, payload])
        except BlockingIOError:
            n = 0
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise AgentLost(
                f"agent {agent.agent_id} is gone; the call was not delivered",
                agent.agent_id,
                delivered=False,
            ) from exc
        total = len(header) + len(payload)
        if n < total:
            agent.out_buf += (header + payload)[n:]
            asyncio.get_running_loop().add_writer(agent.cmd_fd, self._on_writable, agent)

    def _on_writable(self, agent: ProcessAgent) -> None:
        try:
            n = os.write(agent.cmd_fd, agent.out_buf)
        except BlockingIOError:
            return
        except OSError:
            n = len(agent.out_buf)  # the exit watcher reports the loss
        del agent.out_buf[:n]
        if not agent.out_buf:
            asyncio.get_running_loop().remove_writer(agent.cmd_fd)

    def _on_readable(self, agent: ProcessAgent) -> None:
        try:
            data = os.read(agent.res_fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # End of file: the process is exiting; its exit watcher fails any pending call.
            asyncio.get_running_loop().remove_reader(agent.res_fd)
            return
        for payload in agent.reader.feed(data):
            self._deliver(agent, payload)

    def _deliver(self, agent: ProcessAgent, payload: bytes) -> None:
        fut = agent.pending
        if fut is None or fut.done():
            return  # the reply to a call whose caller was cancelled; the pool kills this agent
        try:
            fut.set_result(pickle.loads(payload))
        except Exception as exc:
            fut.set_exception(
                SerializationError(
                    f"the reply from agent {agent.agent_id} could not be unpickled here: "
                    f"{type(exc).__name__}: {exc}"
                )
            )

    def _watch_exit(self, agent: ProcessAgent, loop: asyncio.AbstractEventLoop) -> None:
        try:
            pidfd = os.pidfd_open(agent.pid or -1)
        except (AttributeError, OSError):
            loop.create_task(self._poll_exit(agent))
            return
        agent._exit_watch = pidfd
        loop.add_reader(pidfd, self._on_exit, agent)

    async def _poll_exit(self, agent: ProcessAgent) -> None:
        assert agent.popen is not None
        delay = 0.001
        while agent.popen.poll() is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        self._on_exit(agent)

    def _on_exit(self, agent: ProcessAgent) -> None:
        loop = asyncio.get_running_loop()
        if agent._exit_watch is not None:
            loop.remove_reader(agent._exit_watch)
            os.close(agent._exit_watch)
            agent._exit_watch = None
        assert agent.popen is not None
        self._finish(agent, agent.popen.wait())

    def _finish(self, agent: ProcessAgent, code: int) -> None:
        """The agent is gone with exit status ``code``: settle its call and free its fds."""
        loop = asyncio.get_running_loop()
        # A reply written just before the exit may still sit in the pipe: take it first.
        if agent.res_fd >= 0:
            loop.remove_reader(agent.res_fd)
            with contextlib.suppress(OSError):
                while data := os.read(agent.res_fd, _READ_SIZE):
                    for payload in agent.reader.feed(data):
                        self._deliver(agent, payload)
        agent.exit_code = code
        if agent.out_buf:
            loop.remove_writer(agent.cmd_fd)
            agent.out_buf.clear()
        for fd in {agent.cmd_fd, agent.res_fd, agent.lifeline_fd}:  # a socket may be both
            os.close(fd)
        agent.cmd_fd = agent.res_fd = agent.lifeline_fd = -1
        fut = agent.pending
        if fut is not None and not fut.done():
            fut.set_exception(
                AgentLost(
                    f"agent {agent.agent_id} (pid {agent.pid}) died with exit code {code} "
                    f"{_signal_name(code)}while running a call",
                    agent.agent_id,
                    exit_code=code,
                )
            )
        agent.exited.set_result(code)
        if not agent.stopping and agent.spec.on_exit is not None:
            agent.spec.on_exit(agent)


# -- the agent's process group and output --------------------------------------------------------

_OUTPUT: dict[int, asyncio.Future[None]] = {}  # agent pid -> relay of its output, until EOF
_OUTPUT_DRAIN_S = 5.0  # a descendant that escaped the group may hold the pipes open


def _kill_group(pgid: int) -> None:
    """SIGKILL the agent's process group: the agent and whatever its calls started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _end_group(handle: ProcessAgent) -> None:
    """Once the agent has exited: kill what is left of its group and relay its last output.

    The agent's pid stays its group's id while any member lives, so the group cannot be
    another's; children a step started (``sleep 120`` in a subprocess) die with it.
    """
    if handle.popen is None:
        return
    _kill_group(handle.popen.pid)
    relay = _OUTPUT.pop(handle.popen.pid, None)
    if relay is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(relay), _OUTPUT_DRAIN_S)


def _relay_output(
    loop: asyncio.AbstractEventLoop, pid: int, agent_id: str, pipes: tuple[tuple[int, int], ...]
) -> None:
    """Copy each line an agent writes to its stdout/stderr to ours, prefixed with its id.

    Read by the event loop (no thread); a line is written whole, so agents' lines never
    interleave mid-line; what is left at end of file is flushed. ``_OUTPUT[pid]`` is resolved
    when both pipes have ended.
    """
    done: asyncio.Future[None] = loop.create_future()
    prefix = f"[{agent_id}] ".encode()
    open_pipes = {fd for fd, _ in pipes}

    def on_readable(fd: int, target: int, partial: bytearray) -> None:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            partial += data
            end = partial.rfind(b"\n") + 1
            if not end:
                return
            chunk, partial[:] = bytes(partial[:end]), partial[end:]
        else:
            loop.remove_reader(fd)
            os.close(fd)
            chunk = bytes(partial) + b"\n" if partial else b""
            partial.clear()
            open_pipes.discard(fd)
            if not open_pipes and not done.done():
                done.set_result(None)
        if chunk:
            lines = chunk.splitlines(keepends=True)
            with contextlib.suppress(OSError):
                _write_all(target, b"".join(prefix + line for line in lines))

    for fd, target in pipes:
        os.set_blocking(fd, False)
        loop.add_reader(fd, on_readable, fd, target, bytearray())
    _OUTPUT[pid] = done
    done.add_done_callback(lambda f: _OUTPUT.pop(pid) if _OUTPUT.get(pid) is f else None)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


_FD_LIMIT_RAISED = [False]


def raise_fd_limit() -> None:
    """Raise this process's soft limit on open files to the hard one, once, as servers do.

    Each local agent costs the controller six descriptors (three pipes for calls and the
    lifeline, two for its output, a pidfd): the usual soft limit of 1024 would stop at about
    170 agents, while the hard limit is usually far higher.
    """
    if _FD_LIMIT_RAISED[0]:
        return
    _FD_LIMIT_RAISED[0] = True
    try:
        import resource
    except ImportError:  # not a Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _signal_name(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"({signal.Signals(-code).name}) "
    return ""
