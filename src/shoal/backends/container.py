"""Agents in containers, through the Docker Engine API (which Docker and Podman both serve).

Each agent is a container started from the pool's ``image`` that runs shoal's agent process. It
has no network by default: it talks to the pool over a Unix socket in a directory mounted into
the container — the same framed messages as a local agent's pipes, so calls, errors, warm-up and
failure handling are those of :class:`~shoal.backends.process.ProcessBackend`, which this
backend extends. Stopping an agent removes its container; a container killed from outside is an
:class:`~shoal.errors.AgentLost` like any other agent.

The image needs a Python with shoal importable. By default the host's interpreter and the
driver's ``sys.path`` are bind-mounted read-only at the same paths (``mount_host_python``), so
a tiny image works; an image with its own Python and shoal sets ``python`` and turns that off.

The ``docker`` SDK is an optional extra (``pip install 'shoal[container]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from shoal.backends import _ship, _wire
from shoal.backends.base import AgentSpec
from shoal.backends.process import ProcessAgent, ProcessBackend
from shoal.errors import AgentLost, AgentStartError, BackendError

_HOST_SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/etc")


class ContainerAgent(ProcessAgent):
    __slots__ = ("container", "folder", "removed")

    def __init__(self, spec: AgentSpec, container: Any, fds: tuple[int, int, int], folder: str):
        super().__init__(spec, None, fds, pid=None)
        self.container = container
        self.folder = folder
        # Resolved once the exited container is removed and its socket folder deleted.
        self.removed: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class ContainerBackend(ProcessBackend):
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
        super().__init__(python=python or sys.executable, env=env, spin=spin)
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
            extra = [sys.base_prefix, sys.prefix, *sys.path]
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
        folder = tempfile.mkdtemp(prefix="shoal-", dir="/tmp")  # a socket path must be short
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(os.path.join(folder, "agent.sock"))
        os.chmod(folder, 0o777)  # the agent may run as another user inside the container
        listener.listen(2)
        listener.setblocking(False)
        container = None
        volumes = self._mounts(folder)
        try:
            options: dict[str, Any] = {
                "command": [
                    self._python,
                    "-m",
                    "shoal.backends._agent_main",
                    "--socket",
                    "/shoal/agent.sock",
                ],
                "detach": True,
                # An init as PID 1, so the agent is an ordinary process: signals (a SIGKILL it
                # sends itself included) behave as they do outside a container.
                "init": True,
                "network_mode": self.network,
                "volumes": volumes,
                "environment": {**self._env, **spec.env},
                "labels": {"shoal.pool": spec.pool, "shoal.agent": spec.agent_id},
                "working_dir": _working_dir(volumes),
            }
            if self.cpus:
                options["nano_cpus"] = int(self.cpus * 1e9)
            if self.memory_mb:
                options["mem_limit"] = f"{self.memory_mb}m"
            try:
                container = await asyncio.to_thread(engine.containers.run, image, **options)
            except self._docker.errors.ImageNotFound as exc:
                raise AgentStartError(
                    f"pool {spec.pool!r}: image {image!r} not found: build or pull it first",
                    spec.agent_id,
                ) from exc
            except self._docker.errors.APIError as exc:
                raise AgentStartError(
                    f"pool {spec.pool!r}: the engine refused to start {image!r}: {exc}",
                    spec.agent_id,
                ) from exc
            fds = []
            for _ in range(2):
                conn, _addr = await self._accept(loop, listener, container, spec)
                fds.append(conn.detach())
            chan, life = fds
            os.set_blocking(chan, False)
            agent = ContainerAgent(spec, container, (chan, chan, life), folder)
        except BaseException:
            listener.close()
            if container is not None:
                await asyncio.to_thread(_remove, container)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        listener.close()
        loop.add_reader(chan, self._on_readable, agent)
        self._watchers.add(task := loop.create_task(self._watch_container(agent)))
        task.add_done_callback(self._watchers.discard)
        try:
            reply = await self._request(agent, init)
        except AgentLost as exc:
            await self.kill(agent)
            raise AgentStartError(
                f"pool {spec.pool!r}: agent {spec.agent_id} (container {_short(container)}) "
                f"exited with code {exc.exit_code} while warming up",
                spec.agent_id,
            ) from exc
        except BaseException:
            await self.kill(agent)
            raise
        if reply[0] == _wire.READY:
            agent.pid = reply[1]
            return agent
        await self.kill(agent)
        raise _ship.setup_failed(spec, reply)

    async def _accept(
        self, loop: asyncio.AbstractEventLoop, listener: socket.socket, container: Any, spec: Any
    ) -> tuple[socket.socket, Any]:
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        exited = asyncio.ensure_future(asyncio.to_thread(container.wait))
        done, _ = await asyncio.wait({accept, exited}, return_when=asyncio.FIRST_COMPLETED)
        if accept in done:
            exited.cancel()
            return accept.result()
        accept.cancel()
        logs = await asyncio.to_thread(container.logs, tail=20)
        raise AgentStartError(
            f"pool {spec.pool!r}: container {_short(container)} for agent {spec.agent_id} "
            f"exited with {exited.result().get('StatusCode')} before connecting:\n"
            f"{logs.decode(errors='replace')}",
            spec.agent_id,
        )

    async def _watch_container(self, agent: ContainerAgent) -> None:
        """Learn the container's exit status, however it ended, and settle the agent."""
        try:
            status = await asyncio.to_thread(agent.container.wait)
            code = int(status.get("StatusCode", -1))
        except Exception:
            code = -1
        if code >= 128:
            code = -(code - 128)  # the engine reports death by signal N as 128 + N
        self._finish(agent, code)
        try:
            await asyncio.to_thread(_remove, agent.container)
            shutil.rmtree(agent.folder, ignore_errors=True)
        finally:
            agent.removed.set_result(None)

    async def stop(self, handle: ProcessAgent, grace: float) -> None:
        assert isinstance(handle, ContainerAgent)
        await super().stop(handle, grace)
        await asyncio.shield(handle.removed)

    async def kill(self, handle: ProcessAgent) -> None:
        assert isinstance(handle, ContainerAgent)
        handle.stopping = True
        if handle.alive:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(handle.container.kill)
        await asyncio.shield(handle.exited)
        await asyncio.shield(handle.removed)

    def memory_bytes(self, handle: ProcessAgent) -> int | None:
        return None  # the agent's pid lives in the container's namespace, not ours


def _working_dir(volumes: Mapping[str, Any]) -> str:
    """This process's directory if the container can see it (relative paths then agree)."""
    cwd = os.getcwd()
    seen = any(cwd == m or cwd.startswith(m.rstrip("/") + "/") for m in volumes)
    return cwd if seen else "/"


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
