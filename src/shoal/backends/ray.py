"""Agents as Ray actors: the same pools and workflows, with agents placed on a Ray cluster.

Each agent is an actor that warms up once (the pool's ``setup``, exactly as a local agent) and
then serves calls one at a time, using the same call handling as a local agent process. Calls
and replies travel as the same pickled messages, so functions defined in the user's script or in
modules importable only from the driver's path work too: the actor is given the driver's
``sys.path``, and whatever cannot be imported there travels by value.

Ray is an optional extra (``pip install 'shoal[ray]'``); nothing of shoal imports it unless this
backend is used.
"""

from __future__ import annotations

import asyncio
import functools
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from typing import Any

from shoal.backends import _ship, _wire
from shoal.backends.base import AgentHandle, AgentSpec
from shoal.errors import AgentLost, AgentStartError, BackendError

_ACTOR_CLASS: Any = None
_LOCAL_USERS = [0]  # backends sharing the local Ray instance one of them started


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BackendError(
            "the Ray backend needs Ray, which is not installed. Install it with: "
            "pip install 'shoal[ray]'"
        ) from None
    return ray


class _Agent:
    """The actor: one warm agent on the cluster (wrapped with ``ray.remote`` at first use)."""

    def __init__(self, sys_path: list[str], setup_blob: bytes) -> None:
        from collections import OrderedDict

        from shoal.backends import _agent_main

        for entry in reversed(sys_path):  # the driver's path, so its modules import here too
            if entry not in sys.path:
                sys.path.insert(0, entry)
        self._main = _agent_main
        self._functions: OrderedDict[int, Any] = OrderedDict()
        self._failed = _agent_main.warm_up(setup_blob)

    def ready(self) -> bytes:
        return self._failed or pickle.dumps((_wire.READY, os.getpid()), _wire.PROTOCOL)

    def call(self, body: bytes) -> bytes:
        reply: bytes = self._main.serve(body, self._functions)
        return reply

    def ping(self) -> bytes:
        return _wire.PONG_MSG


def init_on_loopback(ray: Any, **kwargs: Any) -> Any:
    """``ray.init`` of a new local instance whose every process listens on 127.0.0.1 only.

    Ray binds its gRPC servers to the node's address, and turns a loopback
    ``_node_ip_address`` back into the machine's routable address unless its "local only"
    switch (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read once at import) is off; the switch is
    turned off for the duration of the start so nobody has to set that variable.
    """
    from ray._private import ray_constants

    kwargs.setdefault("_node_ip_address", "127.0.0.1")
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        return ray.init(**kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


class RayAgent(AgentHandle):
    __slots__ = ("actor", "sent_keys")

    def __init__(self, agent_id: str, actor: Any, pid: int | None) -> None:
        super().__init__(agent_id, pid)
        self.actor = actor
        self.sent_keys: set[int] = set()


class RayBackend:
    """Start agents as Ray actors.

    ``address`` is an existing cluster's address (``"auto"``, ``"ray://host:10001"``, ...); with
    None a local Ray instance is started on first use, and every process of it (GCS, raylet,
    workers, this driver) listens on loopback only, unless ``expose=True`` lets Ray bind all
    interfaces as it does by default (for other machines to join it). ``num_cpus`` and
    ``resources`` are each actor's reservation; ``num_cpus`` defaults to 1 on a cluster and to
    0.1 on a local instance started here, so that, as with local worker processes, a pool may
    hold more agents than the machine has cores; ``runtime_env`` is Ray's, and a pool's
    ``image`` becomes its ``container.image`` unless ``runtime_env`` says otherwise.
    ``init_kwargs`` go to ``ray.init``.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: float | None = None,
        resources: Mapping[str, float] | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        init_kwargs: Mapping[str, Any] | None = None,
        expose: bool = False,
    ) -> None:
        self._ray = _ray()
        self.address = address
        self.num_cpus = num_cpus
        self.resources = dict(resources or {})
        self.runtime_env = dict(runtime_env or {})
        self.init_kwargs = dict(init_kwargs or {})
        self.expose = expose
        self._init_lock: asyncio.Lock | None = None
        self._started_ray = False
        self._joined = False  # counted among the users of the local instance

    def __repr__(self) -> str:
        return f"RayBackend(address={self.address!r}, num_cpus={self.num_cpus})"

    async def _ensure_ray(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            if not self._joined and _LOCAL_USERS[0] > 0:
                self._joined = True  # another backend's local instance: share it
                _LOCAL_USERS[0] += 1
            return
        if self._init_lock is None:
            self._init_lock = asyncio.Lock()
        async with self._init_lock:
            if ray.is_initialized():
                return
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            kwargs.update(self.init_kwargs)
            if self.address is not None:
                kwargs["address"] = self.address
            init = ray.init
            if self.address is None and not self.expose and not os.environ.get("RAY_ADDRESS"):
                init = functools.partial(init_on_loopback, ray)
            # ray.init blocks for seconds: keep the event loop (and every other pool) going.
            await asyncio.to_thread(init, **kwargs)
            self._started_ray = self.address is None  # a local instance of our own
            if self._started_ray:
                self._joined = True
                _LOCAL_USERS[0] += 1

    def _cpus_per_agent(self) -> float:
        if self.num_cpus is not None:
            return self.num_cpus
        return 0.1 if self._joined else 1.0

    def _actor_class(self) -> Any:
        global _ACTOR_CLASS
        if _ACTOR_CLASS is None:
            _ACTOR_CLASS = self._ray.remote(max_restarts=0, max_task_retries=0)(_Agent)
        return _ACTOR_CLASS

    async def start(self, spec: AgentSpec) -> RayAgent:
        await self._ensure_ray()
        init = pickle.loads(_ship.init_message(spec, 0.0))
        sys_path, setup_blob = init[1], init[2]
        env = dict(self.runtime_env)
        if spec.image and "container" not in env and "image_uri" not in env:
            env["image_uri"] = spec.image
        if spec.env:
            env["env_vars"] = {**env.get("env_vars", {}), **spec.env}
        options: dict[str, Any] = {"num_cpus": self._cpus_per_agent()}
        if self.resources:
            options["resources"] = self.resources
        if env:
            options["runtime_env"] = env
        actor = self._actor_class().options(**options).remote(sys_path, setup_blob)
        try:
            reply = pickle.loads(await actor.ready.remote())
        except BaseException as exc:
            self._ray.kill(actor, no_restart=True)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise AgentStartError(
                f"pool {spec.pool!r}: Ray actor for agent {spec.agent_id} died while warming "
                f"up: {type(exc).__name__}: {exc}",
                spec.agent_id,
            ) from exc
        if reply[0] != _wire.READY:
            self._ray.kill(actor, no_restart=True)
            raise _ship.setup_failed(spec, reply)
        return RayAgent(spec.agent_id, actor, reply[1])

    def call(
        self,
        handle: RayAgent,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> asyncio.Future[Any]:
        # A task per call: nothing next to what a call to an actor costs.
        if not handle.alive:
            raise AgentLost(f"agent {handle.agent_id} is gone", handle.agent_id, delivered=False)
        return asyncio.get_running_loop().create_task(self._call(handle, fn, args, kwargs))

    async def _call(
        self,
        handle: RayAgent,
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

    async def _request(self, handle: RayAgent, payload: bytes) -> tuple[Any, ...]:
        try:
            raw = await handle.actor.call.remote(payload)
        except Exception as exc:
            # The actor died, or Ray could not reach it at all: either way this agent is lost.
            handle.exit_code = -1
            raise AgentLost(
                f"agent {handle.agent_id} (Ray actor, pid {handle.pid}) was lost: "
                f"{type(exc).__name__}: {exc}",
                handle.agent_id,
            ) from exc
        try:
            reply: tuple[Any, ...] = pickle.loads(raw)
        except BaseException as exc:  # unpickling may run anything, sys.exit included
            raise _ship.undecodable(handle.agent_id, exc) from exc
        return reply

    async def check_health(self, handle: RayAgent) -> bool:
        if not handle.alive:
            return False
        try:
            return bool(await handle.actor.ping.remote() == _wire.PONG_MSG)
        except self._ray.exceptions.RayError:
            handle.exit_code = -1
            return False

    async def stop(self, handle: RayAgent, grace: float) -> None:
        # An actor has nothing to flush: its calls are over when the pool stops it.
        await self.kill(handle)

    async def kill(self, handle: RayAgent) -> None:
        if handle.alive:
            handle.exit_code = 0
            self._ray.kill(handle.actor, no_restart=True)

    def shutdown(self) -> None:
        """Leave the local Ray instance; the last backend using it stops it (never a cluster)."""
        if not self._joined:
            return
        self._joined = False
        _LOCAL_USERS[0] -= 1
        if _LOCAL_USERS[0] == 0 and self._ray.is_initialized():
            self._ray.shutdown()
