"""Agents in containers, through the Docker Engine API (which Docker and Podman both serve).

Each agent is a container started from the pool's ``image`` that runs shoal's agent process. It
has no network by default: it talks to the pool over a Unix socket in a directory mounted into
the container — the same framed channel as a local agent's pipes (``_channel``), so calls,
errors, warm-up and failure handling are those of :class:`~shoal.backends.process.ProcessBackend`.
Stopping an agent removes its container; a container killed from outside is an
:class:`~shoal.errors.AgentLost` like any other agent.

The image needs a Python with shoal importable. By default the host's interpreter and the
driver's ``sys.path`` are bind-mounted read-only at the same paths (``mount_host_python``), so
a tiny image works; an image with its own Python and shoal sets ``python`` and turns that off.

The ``docker`` SDK is an optional extra (``pip install 'shoal[container]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shoal.backends import _channel, _ship, _wire
from shoal.backends._channel import Channel, CpuWatch
from shoal.backends.base import AgentHandle, AgentSpec
from shoal.backends.process import AGENT_MAIN
from shoal.errors import AgentLost, AgentStartError, BackendError, ConfigError

_HOST_SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/etc")


class ContainerAgent(AgentHandle):
    """One agent container and the channel (a Unix socket) that reaches the agent in it.

    ``pid`` is the agent's pid inside the container; ``cpu`` watches it by its pid on this
    host, when the engine tells it and this host's ``/proc`` shows it (else None).
    """

    __slots__ = ("channel", "container", "cpu", "folder", "removed", "spec", "stopping")

    def __init__(self, spec: AgentSpec, container: Any, channel: Channel, folder: str):
        super().__init__(spec.agent_id)
        self.spec = spec
        self.container = container
        self.channel = channel
        self.folder = folder
        self.cpu: CpuWatch | None = None
        self.stopping = False
        # Resolved once the exited container is removed and its socket folder deleted.
        self.removed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def last_heard(self) -> float:
        """Loop time of the last frame received from the agent (a reply, a heartbeat, ...)."""
        return self.channel.last_heard


class ContainerBackend:
    """Start agents as containers of ``image`` (the pool's ``image`` wins when it has one).

    ``base_url`` is the engine's API socket (default: ``$DOCKER_HOST``, else Podman's
    ``unix:///run/podman/podman.sock``, else Docker's). ``cpus`` and ``memory_mb`` limit each
    container; ``network`` is ``"none"`` unless you need one.
    """

    name = "container"

    def __init__(
        self,
        image: str | None = None,
        *,
        base_url: str | None = None,
        python: str | None = None,
        mount_host_python: bool = True,
        mounts: Sequence[str] = (),
        cpus: float | None = None,
        memory_mb: int | None = None,
        network: str = "none",
        env: Mapping[str, str] | None = None,
        spin: float = 100e-6,
    ) -> None:
        if spin < 0:
            raise ConfigError(f"ContainerBackend: spin={spin!r} must be >= 0 seconds")
        self._python = python or sys.executable
        self._env = dict(env or {})
        self._spin = spin
        try:
            import docker
        except ImportError:
            raise BackendError(
                "the container backend needs the docker SDK, which is not installed. Install "
                "it with: pip install 'shoal[container]'"
            ) from None
        self._docker = docker
        self.image = image
        self.base_url = base_url or os.environ.get("DOCKER_HOST") or _default_socket()
        self.mount_host_python = mount_host_python
        self.extra_mounts = list(mounts)
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.network = network
        self._client: Any = None
        self._watchers: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"ContainerBackend(image={self.image!r}, base_url={self.base_url!r})"

    def _engine(self) -> Any:
        if self._client is None:
            try:
                self._client = self._docker.DockerClient(base_url=self.base_url, timeout=60)
                self._client.ping()
                _remove_orphans(self._client)
            except Exception as exc:
                self._client = None
                raise BackendError(
                    f"cannot reach a container engine at {self.base_url}: {exc}. Start one "
                    "(e.g. `podman system service --time=0 unix:///run/podman/podman.sock`) or "
                    "pass base_url="
                ) from exc
        return self._client

    def _mounts(self, folder: str) -> dict[str, dict[str, str]]:
        """The socket folder, and read-only the host paths the agent's Python needs."""
        volumes = {folder: {"bind": "/shoal", "mode": "rw"}}
        paths = [os.path.realpath(p) for p in self.extra_mounts]
        if self.mount_host_python:
            # System paths as they are named (on merged-/usr hosts /lib is a link to /usr/lib,
            # and the agent's loader looks for /lib), the rest by their real location.
            paths += [p for p in _HOST_SYSTEM if os.path.exists(p)]
            extra = [sys.base_prefix, sys.prefix, *sys.path, os.path.dirname(AGENT_MAIN)]
            paths += [os.path.realpath(p) for p in extra if p and os.path.isdir(p)]
        for path in sorted(set(paths), key=len):
            if not any(path == m or path.startswith(m.rstrip("/") + "/") for m in volumes):
                volumes[path] = {"bind": path, "mode": "ro"}
        return volumes

    async def start(self, spec: AgentSpec) -> ContainerAgent:
        image = spec.image or self.image
        if not image:
            raise AgentStartError(
                f"pool {spec.pool!r}: the container backend needs an image: give the pool an "
                "image= or ContainerBackend(image=...)",
                spec.agent_id,
            )
        init = _ship.init_message(spec, self._spin)
        loop = asyncio.get_running_loop()
        engine = await asyncio.to_thread(self._engine)
        name = _name(spec)
        folder = tempfile.mkdtemp(prefix="shoal-", dir="/tmp")  # a socket path must be short
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        run: asyncio.Future[Any] | None = None
        try:
            listener.bind(os.path.join(folder, "agent.sock"))
            listener.listen(2)
            listener.setblocking(False)
            run = asyncio.ensure_future(
                asyncio.to_thread(engine.containers.run, image, **self._options(spec, name, folder))
            )
            # Shielded: a cancelled start must still learn what the engine made, to remove it.
            container = await asyncio.shield(run)
            exit_code = _watch_exit(container, loop)
            fds = []
            for _ in range(2):
                conn = await self._accept(loop, listener, container, exit_code, spec)
                fds.append(conn.detach())
            chan, life = fds
            kill = functools.partial(self._kill_soon, container)
            agent = ContainerAgent(
                spec, container, Channel(spec.agent_id, chan, chan, life, kill), folder
            )
        except BaseException as exc:
            listener.close()
            if run is not None and not run.done():
                with contextlib.suppress(BaseException):
                    await asyncio.shield(run)
            await asyncio.shield(asyncio.to_thread(_remove_named, engine, name))
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(exc, self._docker.errors.ImageNotFound):
                raise AgentStartError(
                    f"pool {spec.pool!r}: image {image!r} not found: build or pull it first",
                    spec.agent_id,
                ) from exc
            if isinstance(exc, self._docker.errors.APIError):
                raise AgentStartError(
                    f"pool {spec.pool!r}: the engine refused to start {image!r}: {exc}",
                    spec.agent_id,
                ) from exc
            raise
        listener.close()
        self._keep(loop.create_task(self._watch_container(agent, exit_code)))
        try:
            agent.pid = await _channel.warm_up(
                agent.channel, spec, init, f" (container {_short(container)})"
            )
            agent.cpu = await asyncio.to_thread(_host_cpu_watch, container, agent.pid)
        except BaseException:
            await self.kill(agent)
            raise
        return agent

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    def _kill_soon(self, container: Any) -> None:
        """Kill a container from a loop callback (an agent that broke the protocol)."""
        self._keep(asyncio.get_running_loop().create_task(_kill_container(container)))

    def _agent_main(self) -> list[str]:
        """How the container runs the agent: this very file when the host's paths are mounted
        (the agent then speaks exactly this driver's protocol), else the image's shoal."""
        if self.mount_host_python:
            return [AGENT_MAIN]
        return ["-m", "shoal.backends._agent_main"]

    def _options(self, spec: AgentSpec, name: str, folder: str) -> dict[str, Any]:
        volumes = self._mounts(folder)
        options: dict[str, Any] = {
            "command": [self._python, *self._agent_main(), "--socket", "/shoal/agent.sock"],
            "name": name,
            "detach": True,
            # An init as PID 1, so the agent is an ordinary process: signals (a SIGKILL it
            # sends itself included) behave as they do outside a container.
            "init": True,
            "network_mode": self.network,
            "volumes": volumes,
            "environment": {**self._env, **spec.env},
            "labels": {
                "shoal.pool": spec.pool,
                "shoal.agent": spec.agent_id,
                "shoal.owner": _OWNER,
            },
            "working_dir": _working_dir(volumes),
        }
        if self.cpus:
            options["nano_cpus"] = int(self.cpus * 1e9)
        if self.memory_mb:
            options["mem_limit"] = f"{self.memory_mb}m"
        return options

    async def _accept(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: socket.socket,
        container: Any,
        exit_code: asyncio.Future[int],
        spec: AgentSpec,
    ) -> socket.socket:
        accept: asyncio.Future[Any] = asyncio.ensure_future(loop.sock_accept(listener))
        waiting: set[asyncio.Future[Any]] = {accept, exit_code}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if accept in done:
            conn: socket.socket = accept.result()[0]
            return conn
        accept.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await accept
        logs = b""
        with contextlib.suppress(Exception):
            logs = await asyncio.to_thread(container.logs, tail=20)
        raise AgentStartError(
            f"pool {spec.pool!r}: container {_short(container)} for agent {spec.agent_id} "
            f"exited with {exit_code.result()} before connecting:\n"
            f"{logs.decode(errors='replace')}",
            spec.agent_id,
        )

    async def _watch_container(self, agent: ContainerAgent, exit_code: asyncio.Future[int]) -> None:
        """Learn the container's exit status, however it ended, and settle the agent."""
        code = await exit_code
        agent.channel.finish(
            code,
            f"agent {agent.agent_id} (container {_short(agent.container)}) died with exit "
            f"code {code} while running a call",
        )
        agent.exit_code = code
        if not agent.stopping and agent.spec.on_exit is not None:
            agent.spec.on_exit(agent)
        try:
            await asyncio.to_thread(_remove, agent.container)
            shutil.rmtree(agent.folder, ignore_errors=True)
        finally:
            agent.removed.set_result(None)

    def call(
        self,
        handle: ContainerAgent,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> asyncio.Future[Any]:
        return handle.channel.call(fn, args, kwargs)

    async def check_health(self, handle: ContainerAgent) -> bool:
        if not handle.alive or handle.stopping:
            return False
        return await _channel.ping(handle.channel)

    async def stop(self, handle: ContainerAgent, grace: float) -> None:
        if handle.alive and not handle.stopping:
            handle.stopping = True
            with contextlib.suppress(AgentLost):
                handle.channel.send(_wire.STOP_MSG)
        try:
            await asyncio.wait_for(asyncio.shield(handle.channel.exited), grace)
        except TimeoutError:
            await self.kill(handle)
        await asyncio.shield(handle.removed)

    async def kill(self, handle: ContainerAgent) -> None:
        handle.stopping = True
        if handle.alive:
            await _kill_container(handle.container)
        await asyncio.shield(handle.channel.exited)
        await asyncio.shield(handle.removed)

    def unresponsive_for(self, handle: ContainerAgent, now: float) -> float:
        """Seconds since the agent last showed life during its current call: a reply, a
        heartbeat (``AgentSpec.heartbeat_interval``), or CPU time of its process read through
        this host's ``/proc`` under the host pid that the engine reports for the container
        (``State.Pid``, the container's init; the agent is its child). Where that pid is not
        visible here (a remote engine, a VM), heartbeats alone tell. 0 when it runs no call."""
        return _channel.unresponsive_for(handle.channel, handle.cpu, now)

    def memory_bytes(self, handle: ContainerAgent) -> int | None:
        return None  # the agent's pid lives in the container's namespace, not ours


async def _kill_container(container: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.to_thread(container.kill)


def _host_cpu_watch(container: Any, agent_pid: int) -> CpuWatch | None:
    """A CPU watch on the agent by its pid on this host, or None where it cannot be found.

    The engine reports the host pid of the container's init (``State.Pid``); the agent is the
    child of it whose innermost namespace pid (``NSpid`` in ``/proc``) is ``agent_pid``.
    """
    try:
        container.reload()
        init = int(container.attrs["State"]["Pid"])
        with open(f"/proc/{init}/task/{init}/children") as f:
            children = [int(c) for c in f.read().split()]
        for pid in [init, *children]:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("NSpid:") and int(line.split()[-1]) == agent_pid:
                        return CpuWatch(pid)
    except Exception:
        return None
    return None


def _working_dir(volumes: Mapping[str, Any]) -> str:
    """This process's directory if the container can see it (relative paths then agree)."""
    cwd = os.getcwd()
    seen = any(cwd == m or cwd.startswith(m.rstrip("/") + "/") for m in volumes)
    return cwd if seen else "/"


def _watch_exit(container: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]:
    """The container's exit status, waited for in a thread of its own.

    One waiting thread per container for its whole life would exhaust asyncio's shared
    executor (a handful of threads) and stall every other engine call.
    """
    fut: asyncio.Future[int] = loop.create_future()

    def settle(code: int) -> None:
        if not fut.done():
            fut.set_result(code)

    def wait() -> None:
        try:
            code = int(container.wait().get("StatusCode", -1))
        except Exception:
            code = -1
        if code >= 128:
            code = -(code - 128)  # the engine reports death by signal N as 128 + N
        with contextlib.suppress(RuntimeError):  # the loop may be closed by now
            loop.call_soon_threadsafe(settle, code)

    threading.Thread(target=wait, name=f"shoal-wait-{_short(container)}", daemon=True).start()
    return fut


_OWNER = f"{socket.gethostname()}:{os.getpid()}"


def _remove_orphans(engine: Any) -> None:
    """Remove stopped agent containers whose owning process on this host is gone (it was
    killed before it could remove them: its agents exit on their own, their containers stay)."""
    host = socket.gethostname()
    with contextlib.suppress(Exception):
        for c in engine.containers.list(all=True, filters={"label": "shoal.owner"}):
            owner_host, _, pid = c.labels.get("shoal.owner", "").partition(":")
            if owner_host == host and pid.isdigit() and not _pid_alive(int(pid)):
                _remove(c)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _name(spec: AgentSpec) -> str:
    safe = "".join(c if c.isalnum() or c in "_.-" else "-" for c in spec.agent_id)
    return f"shoal-{safe}-{uuid.uuid4().hex[:8]}"


def _remove_named(engine: Any, name: str) -> None:
    with contextlib.suppress(Exception):
        engine.containers.get(name).remove(force=True)


def _remove(container: Any) -> None:
    with contextlib.suppress(Exception):
        container.remove(force=True)


def _short(container: Any) -> str:
    return str(getattr(container, "short_id", "?"))


def _default_socket() -> str:
    for path in ("/run/podman/podman.sock", "/var/run/docker.sock"):
        if os.path.exists(path):
            return f"unix://{path}"
    return "unix:///var/run/docker.sock"
