"""Agents as long-lived local Python processes: the embedded default backend.

Each agent is a child interpreter that warms up once (imports, the pool's ``setup``) and then
serves calls one at a time over a pair of inherited pipes (the framed channel of ``_channel``);
nothing listens on a port. The parent's event loop reads results without threads, and learns of a
child's death from a pidfd (Linux) or by polling. A child never outlives its parent: it has
``PR_SET_PDEATHSIG`` on Linux and, everywhere, a lifeline pipe whose end-of-file means the parent
is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shoal.backends import _channel, _ship
from shoal.backends._channel import Channel, CpuWatch
from shoal.backends.base import AgentHandle, AgentSpec
from shoal.errors import ConfigError

AGENT_MAIN = str(Path(__file__).with_name("_agent_main.py"))
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_READ_SIZE = 1 << 16


class ProcessAgent(AgentHandle):
    """One child process and the channel that reaches it."""

    __slots__ = ("_exit_watch", "channel", "cpu", "popen", "spec", "stopping")

    def __init__(self, spec: AgentSpec, popen: subprocess.Popen[bytes], channel: Channel):
        super().__init__(spec.agent_id, popen.pid)
        self.spec = spec
        self.popen = popen
        self.channel = channel
        self.cpu = CpuWatch(popen.pid)
        self.stopping = False
        self._exit_watch: int | None = None

    @property
    def last_heard(self) -> float:
        """Loop time of the last frame received from the agent (a reply, a heartbeat, ...)."""
        return self.channel.last_heard


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
        self._pollers: set[asyncio.Task[None]] = set()  # exit watchers where pidfd is missing

    def __repr__(self) -> str:
        return f"ProcessBackend(python={self._python!r})"

    # -- the protocol -------------------------------------------------------------------------

    async def start(self, spec: AgentSpec) -> ProcessAgent:
        init = _ship.init_message(spec, self._spin)
        agent = self._spawn(spec)
        try:
            agent.pid = await _channel.warm_up(agent.channel, spec, init, " (see its output above)")
        except BaseException:
            await self.kill(agent)
            raise
        return agent

    def call(
        self,
        handle: ProcessAgent,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> asyncio.Future[Any]:
        return handle.channel.call(fn, args, kwargs)

    def pipelines(self, handle: ProcessAgent) -> bool:
        return handle.channel.ordered

    def recall(self, handle: ProcessAgent, future: asyncio.Future[Any]) -> bool:
        return handle.channel.recall(future)

    async def check_health(self, handle: ProcessAgent) -> bool:
        return await _channel.check_health(handle)

    async def stop(self, handle: ProcessAgent, grace: float) -> None:
        if await _channel.stop(handle, grace, self.kill):
            await _end_group(handle)  # (kill ends the group itself)

    async def kill(self, handle: ProcessAgent) -> None:
        handle.stopping = True
        _sigkill(handle.popen)
        await asyncio.shield(handle.channel.exited)
        await _end_group(handle)

    def unresponsive_for(self, handle: ProcessAgent, now: float) -> float:
        """Seconds since the agent last showed life during its current call: a reply, a
        heartbeat (``AgentSpec.heartbeat_interval``) or CPU time used by its main thread
        (``/proc``; a SIGSTOPped agent never counts as progressing). 0 when it runs no call."""
        return _channel.unresponsive_for(handle.channel, handle.cpu, now)

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
        channel = _channel.Channel(
            spec.agent_id, cmd_w, res_r, life_w, kill=functools.partial(_sigkill, popen)
        )
        channel.ordered = spec.max_concurrency == 1
        agent = ProcessAgent(spec, popen, channel)
        loop = asyncio.get_running_loop()
        _relay_output(loop, popen.pid, spec.agent_id, ((out_r, 1), (err_r, 2)))
        self._watch_exit(agent, loop)
        return agent

    def _watch_exit(self, agent: ProcessAgent, loop: asyncio.AbstractEventLoop) -> None:
        try:
            pidfd = os.pidfd_open(agent.popen.pid)
        except (AttributeError, OSError):
            task = loop.create_task(self._poll_exit(agent))
            self._pollers.add(task)
            task.add_done_callback(self._pollers.discard)
            return
        agent._exit_watch = pidfd
        loop.add_reader(pidfd, self._on_exit, agent)

    async def _poll_exit(self, agent: ProcessAgent) -> None:
        delay = 0.001
        while agent.popen.poll() is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        self._on_exit(agent)

    def _on_exit(self, agent: ProcessAgent) -> None:
        if agent._exit_watch is not None:
            asyncio.get_running_loop().remove_reader(agent._exit_watch)
            os.close(agent._exit_watch)
            agent._exit_watch = None
        code = agent.popen.wait()
        agent.channel.finish(
            code,
            f"agent {agent.agent_id} (pid {agent.pid}) died with exit code {code} "
            f"{_signal_name(code)}while running a call",
        )
        agent.exit_code = code
        if not agent.stopping and agent.spec.on_exit is not None:
            agent.spec.on_exit(agent)


def _sigkill(popen: subprocess.Popen[bytes]) -> None:
    """Kill an agent that has not been reaped, with its whole process group."""
    if popen.returncode is None:
        _kill_group(popen.pid)


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
