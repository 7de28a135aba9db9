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
import logging
import os
import pickle
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from shoal.backends import _ray_nodes, _ship, _wire
from shoal.backends._ray_nodes import NodeWatch
from shoal.backends.base import AgentHandle, AgentSpec
from shoal.errors import (
    AgentLost,
    AgentStartError,
    BackendError,
    ConfigError,
    ResourcesUnavailable,
)

_ACTOR_CLASS: Any = None
_CLASSES_JOB: str | None = None
log = logging.getLogger("shoal.backends.ray")


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
    """The actor: one warm agent on the cluster (wrapped with ``ray.remote`` at first use).

    Creating it is cheap (the driver's path only), so that its placement — which can wait for
    resources — is told apart from its warm-up (the pool's ``setup``, in :meth:`warm`). Calls run
    in the default group, the pool's ``max_concurrency`` at once (each in a thread of Ray's, a
    coroutine on that thread's own event loop); ``lifeline`` and ``ping`` run in a group of
    their own, so the driver learns of the actor's death while it is idle and sees it alive
    while it runs a call.
    """

    def __init__(self, sys_path: list[str], slots: int = 1) -> None:
        import threading
        from collections import OrderedDict

        for entry in reversed(sys_path):  # the driver's path, so its modules import here too
            if entry not in sys.path:
                sys.path.insert(0, entry)
        self._functions: OrderedDict[int, Any] = OrderedDict()
        self._never = threading.Event()
        self._slots = slots
        self._decoding = threading.Lock()  # the function cache is shared by the call threads
        self._local = threading.local()  # each call thread's event loop

    def where(self) -> tuple[str, str, int]:
        import ray

        ctx = ray.get_runtime_context()
        ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        return ctx.get_node_id(), ip, os.getpid()

    def warm(self, setup_blob: bytes) -> bytes:
        from shoal.backends import _agent_main

        self._main = _agent_main
        failed = _agent_main.warm_up(setup_blob)
        return failed or pickle.dumps((_wire.READY, os.getpid()), _wire.PROTOCOL)

    def call(self, body: bytes) -> bytes:
        main = self._main
        if self._slots == 1:
            reply: bytes = main.serve(body, self._functions)
            return reply
        with self._decoding:
            call = main.decode(body, self._functions)
        if isinstance(call, bytes):
            return call
        fn, args, kwargs = call
        try:
            result = fn(*args, **kwargs)
            if hasattr(type(result), "__await__"):
                import asyncio

                loop = getattr(self._local, "loop", None)
                if loop is None:
                    loop = self._local.loop = asyncio.new_event_loop()
                result = loop.run_until_complete(result)
        except BaseException as exc:
            failed: bytes = main._exception_message(_wire.RAISED, exc)
            return failed
        reply = main.result_message(result)
        return reply

    def lifeline(self) -> None:
        self._never.wait()  # answers never: it fails when the actor dies

    def ping(self) -> bytes:
        return _wire.PONG_MSG


class _Probe:
    """A tiny actor pinned to a node that hosts agents: it answers while the node runs at all,
    whatever the agents' code does (holding the GIL, say), so a silent probe means a node that
    is frozen or cut off."""

    def ping(self) -> bool:
        return True


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
    """An agent's actor, and where it runs: ``node`` (Ray's node id) and ``node_ip``."""

    __slots__ = (
        "actor",
        "calls",
        "gone",
        "in_call",
        "last_seen",
        "lifeline",
        "node",
        "node_ip",
        "pinging",
        "sent_keys",
        "spec",
        "stopping",
    )

    def __init__(
        self, spec: AgentSpec, actor: Any, pid: int | None, node: str, node_ip: str
    ) -> None:
        super().__init__(spec.agent_id, pid)
        self.spec = spec
        self.actor = actor
        self.node = node
        self.node_ip = node_ip
        self.sent_keys: set[int] = set()
        self.lifeline: asyncio.Future[Any] | None = None
        self.in_call = False
        self.calls = 0  # calls running on it (up to the pool's max_concurrency)
        # Resolved with why, if its node is lost: shared by the calls running on it.
        self.gone: asyncio.Future[str] | None = None
        self.last_seen = 0.0  # loop time of the last reply or pong
        self.pinging = False
        self.stopping = False

    def __repr__(self) -> str:
        state = "alive" if self.alive else f"exited {self.exit_code}"
        return f"<RayAgent {self.agent_id} pid={self.pid} node={self.node_ip} {state}>"


PLACEMENT_KEYS = frozenset(
    {"num_cpus", "num_gpus", "memory", "resources", "scheduling_strategy", "label_selector"}
)


class RayBackend:
    """Start agents as Ray actors.

    ``address`` is an existing cluster's address (``"auto"``, ``"127.0.0.1:6379"``,
    ``"ray://host:10001"``, ...); with None a local Ray instance is started on first use, and
    every process of it (GCS, raylet, workers, this driver) listens on loopback only, unless
    ``expose=True`` lets Ray bind all interfaces as it does by default (for other machines to
    join it). A connection this backend opened is closed by :meth:`shutdown` once no backend
    uses it; one the program opened itself is left alone. ``init_kwargs`` go to ``ray.init``.

    Each actor reserves ``num_cpus`` (default 1 on a cluster, 0.1 on a local instance started
    here, so that a pool may hold more agents than the machine has cores) and ``resources``;
    a pool's ``placement`` overrides them per pool (``num_cpus``, ``num_gpus``, ``memory``,
    ``resources``, ``label_selector`` and ``scheduling_strategy``: ``"SPREAD"``,
    ``{"node": id_or_ip, "soft": False}``, ``{"placement_group": pg_or_name, "bundle_index":
    -1}`` or any of Ray's strategy objects). ``runtime_env`` is Ray's, and a pool's ``image``
    becomes its ``image_uri`` unless ``runtime_env`` says otherwise.

    An agent that the cluster has no room for fails its start at once with
    :class:`~shoal.errors.ResourcesUnavailable`, naming what is short — unless ``autoscaling``
    says the cluster grows on demand: then the actor waits (Ray's autoscaler sees it as
    demand) up to the pool's ``start_timeout``.

    Liveness: an idle actor's death reaches the pool at once (a call left pending on it fails
    when it dies); while a call runs, a probe on the agent's node is pinged every
    ``probe_interval`` seconds, and a node silent for ``node_timeout`` seconds is taken for
    frozen or cut off (its agents' calls fail with ``AgentLost`` long before Ray declares the
    node dead). New agents avoid, for ``avoid_for`` seconds, a node that has just lost agents.
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
        autoscaling: bool = False,
        node_timeout: float = 3.0,
        probe_interval: float = 0.5,
        avoid_for: float = 60.0,
    ) -> None:
        self._ray = _ray()
        self.address = address
        self.num_cpus = num_cpus
        self.resources = dict(resources or {})
        self.runtime_env = dict(runtime_env or {})
        self.init_kwargs = dict(init_kwargs or {})
        self.expose = expose
        self.autoscaling = autoscaling
        self.node_timeout = node_timeout
        self.probe_interval = probe_interval
        self.avoid_for = avoid_for
        self._init_lock: asyncio.Lock | None = None
        self._joined = False  # counted among the users of a connection shoal opened
        self._local = False  # that connection is a local instance started here
        self._agents: set[RayAgent] = set()
        self._nodes: dict[str, NodeWatch] = {}
        self._driver_node: str | None = None  # the node this driver runs on, if it is on one
        self._watcher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"RayBackend(address={self.address!r}, num_cpus={self.num_cpus})"

    # -- connection -------------------------------------------------------------------------------

    async def _ensure_ray(self) -> None:
        ray = self._ray
        if self._joined:
            return
        if self._init_lock is None:
            self._init_lock = asyncio.Lock()
        async with self._init_lock:
            if self._joined:
                return
            if ray.is_initialized():
                self._check_same_cluster()
                if _USERS[0] > 0:  # a connection another backend opened: share it
                    self._joined = True
                    self._local = _USERS_LOCAL[0]
                    _USERS[0] += 1
                return
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            kwargs.update(self.init_kwargs)
            if self.address is not None:
                kwargs["address"] = self.address
            init = ray.init
            if (
                self.address is None and not self.expose and not os.environ.get("RAY_ADDRESS")
            ) or _is_loopback(self.address):
                init = functools.partial(init_on_loopback, ray)
            if threading.current_thread() is threading.main_thread():
                # Once, and only here: Ray sets its signal handlers from the main thread only.
                init(**kwargs)
            else:
                await asyncio.to_thread(init, **kwargs)
            self._joined = True
            self._local = self.address is None and not os.environ.get("RAY_ADDRESS")
            _USERS[0] += 1
            _USERS_LOCAL[0] = self._local

    def _check_same_cluster(self) -> None:
        """Refuse to run on a cluster other than the one ``address`` names."""
        wanted = self.address
        if wanted is None or wanted == "auto" or "://" in wanted:
            return
        current = self._ray.get_runtime_context().gcs_address
        if _port(wanted) != _port(current) or (
            not _is_loopback(wanted) and _host(wanted) != _host(current)
        ):
            raise BackendError(
                f"RayBackend(address={wanted!r}): this process is already connected to the Ray "
                f"cluster at {current}; a process talks to one cluster. Use address={current!r} "
                "or None, or ray.shutdown() first."
            )

    def shutdown(self) -> None:
        """Leave the Ray connection; the last backend using one that shoal opened closes it (a
        cluster is disconnected from, never stopped)."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        self._drop_probes()
        if not self._joined:
            return
        self._joined = False
        _USERS[0] -= 1
        if _USERS[0] == 0 and self._ray.is_initialized():
            self._ray.shutdown()

    def _own_node(self) -> str:
        try:
            return str(self._ray.get_runtime_context().get_node_id())
        except Exception:  # a Ray Client driver runs on no node of the cluster
            return ""

    def _cpus_per_agent(self) -> float:
        if self.num_cpus is not None:
            return self.num_cpus
        return 0.1 if self._local else 1.0

    # -- the cluster's capacity -------------------------------------------------------------------

    def _demand(self, options: Mapping[str, Any]) -> dict[str, float]:
        """What one agent reserves, by Ray's resource names."""
        need = {"CPU": float(options.get("num_cpus", 0.0))}
        if options.get("num_gpus"):
            need["GPU"] = float(options["num_gpus"])
        if options.get("memory"):
            need["memory"] = float(options["memory"])
        need.update({k: float(v) for k, v in options.get("resources", {}).items()})
        return {k: v for k, v in need.items() if v > 0}

    def capacity(self, placement: Mapping[str, Any] | None = None) -> int:
        """How many agents of this shape the cluster's live nodes could hold, all else aside."""
        need = self._demand(self._options(placement or {}))
        return _ray_nodes.capacity(self._ray.nodes(), need)

    async def default_max_size(self, placement: Mapping[str, Any]) -> int | None:
        """A pool's default ``max_size``: as many of its agents as the cluster's live nodes
        can hold (None if they can hold none: its starts then say what is short). On a local
        instance started here, whose agents reserve 0.1 CPU only so that pools sized by hand
        may exceed the cores, the default counts one CPU per agent, as local processes do."""
        await self._ensure_ray()
        need = self._demand(self._options(placement))
        if self._local and self.num_cpus is None and "num_cpus" not in placement:
            need["CPU"] = 1.0
        return _ray_nodes.capacity(self._ray.nodes(), need) or None

    def _shortfall(self, need: Mapping[str, float]) -> dict[str, tuple[float, float, float]]:
        """``{resource: (needed, free now, cluster total)}`` for what one more agent lacks."""
        free = self._ray.available_resources()
        total = self._ray.cluster_resources()
        return {
            k: (v, free.get(k, 0.0), total.get(k, 0.0))
            for k, v in need.items()
            if free.get(k, 0.0) + 1e-9 < v
        }

    # -- agents -----------------------------------------------------------------------------------

    def _actor_class(self) -> Any:
        global _ACTOR_CLASS, _PROBE_CLASS, _CLASSES_JOB
        # An actor class made in an earlier connection (ray.shutdown, then ray.init again) makes
        # actors that die unborn: make them afresh for each connection.
        job = self._ray.get_runtime_context().get_job_id()
        if _ACTOR_CLASS is None or job != _CLASSES_JOB:
            _CLASSES_JOB = job
            for method in ("lifeline", "ping", "where"):
                getattr(_Agent, method).__ray_concurrency_group__ = "life"
            _ACTOR_CLASS = self._ray.remote(
                max_restarts=0, max_task_retries=0, concurrency_groups={"life": 3}
            )(_Agent)
            _PROBE_CLASS = self._ray.remote(num_cpus=0, max_restarts=0)(_Probe)
        return _ACTOR_CLASS

    def _options(self, placement: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(placement) - PLACEMENT_KEYS
        if unknown:
            raise ConfigError(
                f"placement: unknown key(s) {sorted(unknown)} for the Ray backend; allowed: "
                f"{', '.join(sorted(PLACEMENT_KEYS))}"
            )
        options: dict[str, Any] = {"num_cpus": self._cpus_per_agent()}
        if self.resources:
            options["resources"] = dict(self.resources)
        options.update({k: v for k, v in placement.items() if k != "scheduling_strategy"})
        if "scheduling_strategy" in placement:
            options["scheduling_strategy"] = self._strategy(placement["scheduling_strategy"])
        return options

    def _strategy(self, value: Any) -> Any:
        from ray.util import placement_group as pg_api
        from ray.util.scheduling_strategies import (
            NodeAffinitySchedulingStrategy,
            PlacementGroupSchedulingStrategy,
        )

        if not isinstance(value, Mapping):
            return value  # "SPREAD", "DEFAULT" or one of Ray's strategy objects
        if "node" in value:
            node = str(value["node"])
            for info in self._ray.nodes():  # an address is as good as an id
                if info.get("NodeManagerAddress") == node and info.get("Alive"):
                    node = info["NodeID"]
            return NodeAffinitySchedulingStrategy(node, soft=bool(value.get("soft", False)))
        if "placement_group" in value:
            group = value["placement_group"]
            if isinstance(group, str):
                group = pg_api.get_placement_group(group)
            return PlacementGroupSchedulingStrategy(
                group,
                placement_group_bundle_index=int(value.get("bundle_index", -1)),
                placement_group_capture_child_tasks=False,
            )
        raise ConfigError(
            f"placement: scheduling_strategy={dict(value)!r} is not understood; use 'SPREAD', "
            "{'node': id_or_ip, 'soft': bool} or {'placement_group': pg_or_name, "
            "'bundle_index': int}"
        )

    def _avoiding(self, need: Mapping[str, float], now: float) -> list[str]:
        for node, until in list(_AVOID.items()):
            if until <= now:
                del _AVOID[node]
        if not _AVOID:
            return []
        return _ray_nodes.nodes_to_avoid(self._ray.nodes(), _AVOID, need, now)

    async def start(self, spec: AgentSpec) -> RayAgent:
        await self._ensure_ray()
        if self._driver_node is None:
            self._driver_node = self._own_node()
        loop = asyncio.get_running_loop()
        placement = dict(getattr(spec, "placement", None) or {})
        try:
            options = self._options(placement)
        except (ConfigError, ValueError) as exc:
            raise AgentStartError(f"pool {spec.pool!r}: {exc}", spec.agent_id) from exc
        init = pickle.loads(_ship.init_message(spec, 0.0))
        sys_path, setup_blob = init[1], init[2]
        env = dict(self.runtime_env)
        if spec.image and "container" not in env and "image_uri" not in env:
            env["image_uri"] = spec.image
        if spec.env:
            env["env_vars"] = {**env.get("env_vars", {}), **spec.env}
        if env:
            options["runtime_env"] = env
        slots = int(getattr(spec, "max_concurrency", 1))
        if slots > 1:  # calls at once in the default group (the "life" group has its own)
            options["max_concurrency"] = slots
        need = self._demand(options)
        checked = "scheduling_strategy" not in options or options["scheduling_strategy"] in (
            "SPREAD",
            "DEFAULT",
        )
        if not self.autoscaling:
            nowhere = self._fits_nowhere(need)
            if nowhere:
                raise self._no_room(spec, nowhere, " on any one node")
        if checked and not self.autoscaling:
            # No actor made only to wait on a full fixed cluster. The view of what is free
            # lags behind actors just killed, so it must say "short" for a while.
            for _ in range(round(_SHORT_FOR_S / _PLACEMENT_CHECK_S) + 1):
                short = self._shortfall(need)
                if not short:
                    break
                await asyncio.sleep(_PLACEMENT_CHECK_S)
            else:
                raise self._no_room(spec, short)
        avoid = self._avoiding(need, loop.time()) if checked else []
        if avoid and "label_selector" not in options:
            # A replacement goes elsewhere than a node that has just lost agents, if it can be
            # placed elsewhere at once; if not, anywhere.
            avoiding = {**options, "label_selector": {"ray.io/node-id": f"!in({','.join(avoid)})"}}
            actor = self._actor_class().options(**avoiding).remote(sys_path, slots)
            try:
                where: Any = await self._placed(spec, actor, need, patience=_AVOID_PATIENCE_S)
            except Exception:
                where = None  # died where it was placed: try again, anywhere
            except BaseException:
                self._ray.kill(actor, no_restart=True)  # cancelled: leave nothing running
                raise
            if where is None:
                self._ray.kill(actor, no_restart=True)
        else:
            where = None
        try:
            if where is None:
                actor = self._actor_class().options(**options).remote(sys_path, slots)
                where = await self._placed(spec, actor, need if checked else None)
            node, node_ip, pid = where
            reply = pickle.loads(await actor.warm.remote(setup_blob))
        except BaseException as exc:
            self._ray.kill(actor, no_restart=True)
            if isinstance(exc, asyncio.CancelledError | AgentStartError):
                raise
            raise AgentStartError(
                f"pool {spec.pool!r}: Ray actor for agent {spec.agent_id} died while warming "
                f"up: {type(exc).__name__}: {exc}",
                spec.agent_id,
            ) from exc
        if reply[0] != _wire.READY:
            self._ray.kill(actor, no_restart=True)
            raise _ship.setup_failed(spec, reply)
        handle = RayAgent(spec, actor, pid, node, node_ip)
        handle.last_seen = loop.time()
        self._agents.add(handle)
        handle.lifeline = asyncio.ensure_future(actor.lifeline.remote())
        handle.lifeline.add_done_callback(functools.partial(self._lifeline_ended, handle))
        self._watch_calls()
        return handle

    async def _placed(
        self,
        spec: AgentSpec,
        actor: Any,
        need: Mapping[str, float] | None,
        patience: float | None = None,
    ) -> tuple[str, str, int] | None:
        """Wait until the actor is placed on a node: ``(node id, node ip, pid)``, or None if no
        node took it within ``patience``; fail fast if the cluster has no room."""
        where: asyncio.Future[Any] = asyncio.ensure_future(actor.where.remote())
        short_since: float | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                done, _ = await asyncio.wait((where,), timeout=patience or _PLACEMENT_CHECK_S)
                if done:
                    node, node_ip, pid = where.result()
                    return str(node), str(node_ip), int(pid)
                if patience is not None:
                    if self._lease(actor) == "none":
                        return None  # no node took it within its patience
                    patience = None  # a node took it: its worker is starting
                lease = "" if need is None or self.autoscaling else self._lease(actor)
                short = (
                    self._shortfall(need) if need is not None and lease in ("none", "asked") else {}
                )
                if not short:
                    short_since = None
                    continue
                short_since = loop.time() if short_since is None else short_since
                # Asked of a node, it may be queued there or its worker may be starting:
                # give the second the benefit of the doubt for longer.
                patience_s = _SHORT_FOR_S if lease == "none" else _QUEUED_FOR_S
                if loop.time() - short_since >= patience_s:
                    raise self._no_room(spec, short)
        finally:
            where.cancel()

    def _fits_nowhere(self, need: Mapping[str, float]) -> dict[str, tuple[float, float, float]]:
        """``{resource: (needed, most on one node, cluster total)}`` if no live node could ever
        hold one agent (empty if some node could)."""
        nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]
        if any(all(have.get(k, 0.0) + 1e-9 >= v for k, v in need.items()) for have in nodes):
            return {}
        return {
            k: (
                v,
                max((h.get(k, 0.0) for h in nodes), default=0.0),
                sum(h.get(k, 0.0) for h in nodes),
            )
            for k, v in need.items()
            if all(h.get(k, 0.0) + 1e-9 < v for h in nodes)
        }

    def _no_room(
        self,
        spec: AgentSpec,
        short: Mapping[str, tuple[float, float, float]],
        where: str = "",
    ) -> ResourcesUnavailable:
        describe = _describe_short(short)
        if where:
            describe = describe.replace(" free", " on one node")
        return ResourcesUnavailable(
            f"pool {spec.pool!r}: no room on the Ray cluster{where} for agent "
            f"{spec.agent_id}: {describe} (it can hold "
            f"{self.capacity(spec_placement(spec))} such agents in all). Lower the pool's "
            "max_size or its placement's resources, add nodes, or use "
            "RayBackend(autoscaling=True) on a cluster that grows.",
            spec.agent_id,
            short={k: v[0] - v[1] for k, v in short.items()},
        )

    def _lease(self, actor: Any) -> str:
        """How far Ray got placing the actor: ``"none"`` (no node asked: waiting for
        resources), ``"asked"`` (a node asked for a worker: queued there, or the worker is
        starting) or ``"leased"`` (it has a worker process)."""
        try:
            from ray._private import state

            info = state.actors(actor._actor_id.hex())
        except Exception:  # an internal table: if it is not there, judge by the totals alone
            return "none"
        if info.get("Pid"):
            return "leased"
        return "asked" if info.get("Address", {}).get("IPAddress") else "none"

    def _lifeline_ended(self, handle: RayAgent, _: object) -> None:
        """The call left pending on the actor failed: the actor is gone."""
        if handle.stopping or not handle.alive:
            return
        handle.exit_code = -1
        self._lost(handle)
        if handle.spec.on_exit is not None:
            handle.spec.on_exit(handle)

    def _lost(self, handle: RayAgent) -> None:
        """An agent died on its own: its node is avoided for a while."""
        self._agents.discard(handle)
        _AVOID[handle.node] = asyncio.get_running_loop().time() + self.avoid_for

    # -- calls ------------------------------------------------------------------------------------

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
        loop = asyncio.get_running_loop()
        if not handle.calls:
            handle.last_seen = loop.time()
            handle.gone = loop.create_future()
        handle.calls += 1
        handle.in_call = True
        try:
            return await _ship.call_over(
                functools.partial(self._request, handle),
                handle.sent_keys,
                fn,
                args,
                kwargs,
                handle.agent_id,
            )
        finally:
            handle.calls -= 1
            if not handle.calls:
                handle.in_call = False
                handle.gone = None

    async def _request(self, handle: RayAgent, payload: bytes) -> tuple[Any, ...]:
        errors = self._ray.exceptions
        reply_ref: asyncio.Future[Any] = asyncio.ensure_future(handle.actor.call.remote(payload))
        waits: set[asyncio.Future[Any]] = {reply_ref}
        if handle.gone is not None:
            waits.add(handle.gone)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not reply_ref.done():
                reply_ref.cancel()
        if not reply_ref.done() or reply_ref.cancelled():
            # Its node stopped answering: Ray would wait for the node's death (about a minute).
            why = handle.gone.result() if handle.gone is not None else "node lost"
            handle.exit_code = -1
            self._lost(handle)
            self._ray.kill(handle.actor, no_restart=True)
            raise AgentLost(
                f"agent {handle.agent_id} (Ray actor, pid {handle.pid}) was lost during its "
                f"call: {why}",
                handle.agent_id,
            )
        try:
            raw = reply_ref.result()
        except Exception as exc:
            transient = isinstance(exc, errors.ActorUnavailableError)
            # Ray could not even reach the actor: the call never ran, so it is safe elsewhere.
            undelivered = "failed to connect to all addresses" in str(exc)
            if not transient:
                handle.exit_code = -1
            if handle.alive or handle.exit_code == -1:
                self._lost(handle)
            what = "unreachable" if transient else "lost"
            raise AgentLost(
                f"agent {handle.agent_id} (Ray actor, pid {handle.pid}, node {handle.node_ip}) "
                f"was {what}{'' if undelivered else ' during its call'}: "
                f"{type(exc).__name__}: {exc}",
                handle.agent_id,
                delivered=not undelivered,
            ) from exc
        handle.last_seen = asyncio.get_running_loop().time()
        try:
            reply: tuple[Any, ...] = pickle.loads(raw)
        except BaseException as exc:  # unpickling may run anything, sys.exit included
            raise _ship.undecodable(handle.agent_id, exc) from exc
        return reply

    # -- liveness ---------------------------------------------------------------------------------

    def unresponsive_for(self, handle: RayAgent, now: float) -> float:
        """Seconds since the agent last answered a ping or a call while it runs one. (A call on
        a node silent for ``node_timeout`` seconds fails sooner, on its own.)"""
        if not handle.in_call:
            return 0.0
        return max(0.0, now - handle.last_seen)

    def _watch_calls(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(), name="shoal-ray-liveness"
            )

    async def _watch(self) -> None:
        """While agents live: ping a probe on each of their nodes, and the agents running calls.

        A node silent for ``node_timeout`` seconds after its probe first answered (or for
        ``FIRST_PONG_S`` if it never did) is taken for frozen or cut off: the calls running on
        it fail now, and its idle agents are reported gone, rather than waiting the minute Ray
        takes to declare the node dead."""
        loop = asyncio.get_running_loop()
        try:
            while self._agents:
                try:
                    self._watch_once(loop.time())
                except Exception:  # never let one bad round stop the watching
                    log.exception("shoal: Ray liveness check failed")
                await asyncio.sleep(self.probe_interval)
        finally:
            self._watcher = None
            self._drop_probes()

    def _drop_probes(self) -> None:
        """No agents left to watch: the probes go (a later agent gets fresh ones, whose silence
        counts from their own pings)."""
        if self._ray.is_initialized():
            for watch in self._nodes.values():
                self._ray.kill(watch.actor, no_restart=True)
        self._nodes.clear()

    def _watch_once(self, now: float) -> None:
        by_node: dict[str, list[RayAgent]] = {}
        for handle in self._agents:
            by_node.setdefault(handle.node, []).append(handle)
        for node in [n for n in self._nodes if n not in by_node]:
            self._ray.kill(self._nodes.pop(node).actor, no_restart=True)  # no agents left
        for node, handles in by_node.items():
            for handle in handles:
                if handle.in_call and not handle.pinging:
                    handle.pinging = True
                    self._ping(handle.actor.ping.remote(), handle)
            if node == self._driver_node:
                continue  # this driver's own node cannot freeze while the driver runs
            watch = self._nodes.get(node)
            if watch is None:
                watch = self._nodes[node] = NodeWatch(self._probe(node))
            if not watch.pinging:
                watch.sent(now)
                self._ping(watch.actor.ping.remote(), watch)
            silent = watch.silent_for(now)
            if watch.failed is not None:
                self._node_lost(node, f"its node {handles[0].node_ip} is gone ({watch.failed})")
            elif silent > self.node_timeout:
                self._node_lost(
                    node,
                    f"its node {handles[0].node_ip} has not answered for {silent:.1f} s "
                    f"(node_timeout={self.node_timeout} s): frozen or cut off",
                )

    def _node_lost(self, node: str, why: str) -> None:
        """Every agent on ``node`` is lost: calls running there fail now, idle agents are
        reported gone (so no call is sent to them), and new agents go elsewhere for a while."""
        _AVOID[node] = asyncio.get_running_loop().time() + self.avoid_for
        for handle in [h for h in self._agents if h.node == node]:
            if handle.gone is not None:
                if not handle.gone.done():
                    handle.gone.set_result(why)
            elif handle.alive and not handle.stopping:
                handle.exit_code = -1
                self._lost(handle)
                if handle.spec.on_exit is not None:
                    handle.spec.on_exit(handle)

    def _probe(self, node: str) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._actor_class()
        return _PROBE_CLASS.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote()

    def _ping(self, ref: Any, target: RayAgent | NodeWatch) -> None:
        fut = asyncio.ensure_future(ref)

        def done(f: asyncio.Future[Any]) -> None:
            exc = None if f.cancelled() else f.exception()
            if isinstance(target, RayAgent):
                target.pinging = False
                if exc is None and not f.cancelled():
                    target.last_seen = asyncio.get_running_loop().time()
            elif f.cancelled():
                target.sent_at = None
            elif exc is None:
                target.pong()
            else:
                target.lost(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")

        fut.add_done_callback(done)

    async def check_health(self, handle: RayAgent) -> bool:
        if not handle.alive:
            return False
        try:
            return bool(await handle.actor.ping.remote() == _wire.PONG_MSG)
        except self._ray.exceptions.ActorUnavailableError:
            return False  # unreachable for now: not known dead, but no use
        except self._ray.exceptions.RayError:
            handle.exit_code = -1
            self._lost(handle)
            return False

    async def stop(self, handle: RayAgent, grace: float) -> None:
        # An actor has nothing to flush: its calls are over when the pool stops it.
        await self.kill(handle)

    async def kill(self, handle: RayAgent) -> None:
        handle.stopping = True
        self._agents.discard(handle)
        if handle.alive:
            handle.exit_code = 0
        if handle.lifeline is not None:
            handle.lifeline.cancel()
        self._ray.kill(handle.actor, no_restart=True)


_PLACEMENT_CHECK_S = 0.5
# Nodes that have just lost agents -> loop time until which new agents avoid them. Shared by
# every backend of the process: it is news about the cluster, not about one backend.
_AVOID: dict[str, float] = {}
_AVOID_PATIENCE_S = 2.0  # how long a replacement waits for a node other than those avoided
_SHORT_FOR_S = 5.0  # how long "no room" must last to be believed (the view lags)
_QUEUED_FOR_S = 10.0  # ... for an actor a node was asked for, whose worker may be starting
_PROBE_CLASS: Any = None
_USERS = [0]  # backends sharing the Ray connection one of them opened
_USERS_LOCAL = [False]  # that connection is a local instance


def spec_placement(spec: AgentSpec) -> Mapping[str, Any]:
    return getattr(spec, "placement", None) or {}


def _describe_short(short: Mapping[str, tuple[float, float, float]]) -> str:
    return ", ".join(
        f"needs {need:g} {name}, {free:g} of {total:g} free"
        for name, (need, free, total) in short.items()
    )


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


def _port(address: str) -> str:
    return address.rsplit(":", 1)[-1]


def _is_loopback(address: str | None) -> bool:
    if not address or "://" in address:
        return False
    host = _host(address)
    return host == "localhost" or host.startswith("127.")
