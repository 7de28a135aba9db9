"""Agents in containers, through the Docker Engine API (which Docker and Podman both serve).

Each agent is a container started from the pool's ``image`` that runs shoal's agent process. It
has no network by default: it talks to the pool over a Unix socket in a directory mounted into
the container — the same framed channel as a local agent's pipes (``_channel``), so calls,
errors, warm-up and failure handling are those of :class:`~shoal.backends.process.ProcessBackend`.
Stopping an agent removes its container; a container killed from outside is an
:class:`~shoal.errors.AgentLost` like any other agent.

The image needs a Python with shoal importable. By default the host's interpreter, its
libraries and the driver's ``sys.path`` are bind-mounted read-only at the same paths
(``mount_host_python``; never ``/etc``, never a folder as broad as ``/`` or ``/tmp``), so a tiny
image works; an image with its own Python and shoal sets ``python`` and turns that off.

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

from shoal.backends import _channel, _ship
from shoal.backends._channel import Channel, CpuWatch
from shoal.backends.base import AgentHandle, AgentSpec
from shoal.backends.process import AGENT_MAIN
from shoal.errors import AgentStartError, BackendError, ConfigError

# What the host's Python needs from the host's system: its libraries and the loader. Not /etc:
# the interpreter runs without it (ld.so.cache is optional), and it holds the host's secrets.
_HOST_SYSTEM = ("/usr", "/lib", "/lib64", "/bin")
# Folders never mounted whole, whatever sys.path says: only the modules loaded from them are.
_TOO_BROAD = ("/", "/tmp", "/var/tmp", "/etc", "/var", "/run", "/home", "/root", "/dev", "/proc")


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
    ``unix:///run/podman/podman.sock``, else Docker's). ``cpus``, ``memory_mb`` and
    ``pids_limit`` limit each container; ``network`` is ``"none"`` unless you need one.

    Every container runs as this process's uid:gid with all capabilities dropped,
    ``no-new-privileges``, a read-only root filesystem with a private tmpfs ``/tmp``, and sees
    only its own socket folder, the interpreter, its site-packages and the project's folders.
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
        pids_limit: int = 1024,
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
        self.pids_limit = pids_limit
        self._client: Any = None
        self._watchers: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"ContainerBackend(image={self.image!r}, base_url={self.base_url!r})"

    def _engine(self) -> Any:
        if self._client is None:
            client = None
            try:
                # The docker SDK leaves its socket open when a unix socket refuses the
                # connection while it builds the client: probe the socket first, closing it.
                _probe_socket(self.base_url)
                client = self._docker.DockerClient(base_url=self.base_url, timeout=60)
                client.ping()
                _remove_orphans(client)
                self._client = client
            except Exception as exc:
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
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
            paths += _python_paths()
            paths.append(os.path.realpath(os.path.dirname(AGENT_MAIN)))  # the agent's script
        for path in sorted(set(paths), key=len):
            if _is_socket_folder(path):
                continue  # another agent's channel: never
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
            agent.channel.ordered = spec.max_concurrency == 1
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
                "shoal.owner": _owner(),
                "shoal.folder": folder,
            },
            "working_dir": _working_dir(volumes),
            # Nothing in the box is more than the user who started the pool, and less if
            # possible: no capabilities, no setuid gains, nothing written outside /tmp.
            "user": f"{os.getuid()}:{os.getgid()}",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "read_only": True,
            "tmpfs": {"/tmp": "rw,nosuid,nodev,mode=1777"},
            "pids_limit": self.pids_limit,
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

    def pipelines(self, handle: ContainerAgent) -> bool:
        return handle.channel.ordered

    def recall(self, handle: ContainerAgent, future: asyncio.Future[Any]) -> bool:
        return handle.channel.recall(future)

    async def check_health(self, handle: ContainerAgent) -> bool:
        return await _channel.check_health(handle)

    async def stop(self, handle: ContainerAgent, grace: float) -> None:
        await _channel.stop(handle, grace, self.kill)
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


def _python_paths() -> list[str]:
    """The interpreter's prefixes and the driver's ``sys.path``, never a folder too broad.

    An entry such as ``/`` or ``/tmp`` (``shoal run /tmp/flow.py`` puts the script's folder on
    the path) is replaced by just the modules this process has loaded from it.
    """
    found = []
    entries = [sys.base_prefix, sys.prefix, *sys.path]
    for entry in entries:
        if not entry or not os.path.isdir(entry):
            continue
        path = os.path.realpath(entry)
        if path not in _broad_folders():
            found.append(path)
            continue
        for module in list(sys.modules.values()):
            origin = getattr(module, "__file__", None)
            if not origin:
                continue
            origin = os.path.realpath(origin)
            if os.path.dirname(origin) != path:
                # A package directly in the folder: the package's folder.
                parent = os.path.dirname(os.path.dirname(origin))
                if parent != path or not origin.endswith("__init__.py"):
                    continue
                origin = os.path.dirname(origin)
            found.append(origin)
    return found


def _broad_folders() -> set[str]:
    home = os.path.expanduser("~")
    folders = {*_TOO_BROAD, tempfile.gettempdir(), home}
    return {os.path.realpath(f) for f in folders if f}


def _is_socket_folder(path: str) -> bool:
    """Whether ``path`` is, or is inside, an agent's socket folder (``/tmp/shoal-*``)."""
    rel = os.path.relpath(path, "/tmp")
    return not rel.startswith("..") and rel.split(os.sep)[0].startswith("shoal-")


# -- ownership and orphans ----------------------------------------------------------------------


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname()


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None if there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _owner(pid: int | None = None) -> str:
    """The owner label: this boot, this pid and its start time, so a reused pid is not us."""
    pid = os.getpid() if pid is None else pid
    return f"{_boot_id()}/{pid}/{_start_time(pid) or 0}"


def _owner_is_dead(label: str, running: bool) -> bool:
    """Whether the controller named by an owner label is provably gone.

    Same boot: its pid is gone or now belongs to a process that started at another time.
    Another boot (or an older label): only a container that is no longer running — we cannot
    see that boot's processes, and the engine may be shared by other machines.
    """
    boot, _, rest = label.partition("/")
    pid, _, started = rest.partition("/")
    if not pid.isdigit():
        return not running and _legacy_owner_dead(label)
    if boot != _boot_id():
        return not running
    return _start_time(int(pid)) != started


def _legacy_owner_dead(label: str) -> bool:
    host, _, pid = label.partition(":")
    return host == socket.gethostname() and pid.isdigit() and _start_time(int(pid)) is None


def _remove_orphans(engine: Any) -> None:
    """Remove agent containers whose controller is provably gone, and their socket folders.

    A controller that was SIGKILLed could not remove them: its agents exit through their
    lifeline, their containers and folders stay. Another live controller's containers, running
    or not, are never touched.
    """
    with contextlib.suppress(Exception):
        for c in engine.containers.list(all=True, filters={"label": "shoal.owner"}):
            label = c.labels.get("shoal.owner", "")
            if label == _owner() or not _owner_is_dead(label, c.status == "running"):
                continue
            _remove(c)
            folder = c.labels.get("shoal.folder", "")
            if folder and _is_socket_folder(folder) and os.path.dirname(folder) == "/tmp":
                shutil.rmtree(folder, ignore_errors=True)


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


def _probe_socket(base_url: str) -> None:
    """Connect to a ``unix://`` engine socket and close the connection at once; raises the
    ``OSError`` (nothing there, refused) without leaving a socket open. Other URLs pass."""
    scheme, _, path = base_url.partition("://")
    if scheme not in ("unix", "http+unix") or not path:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)


def _default_socket() -> str:
    for path in ("/run/podman/podman.sock", "/var/run/docker.sock"):
        if os.path.exists(path):
            return f"unix://{path}"
    return "unix:///var/run/docker.sock"
