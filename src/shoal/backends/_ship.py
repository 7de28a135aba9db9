"""Shipping calls to agents and their outcomes back, for backends that talk over a byte pipe.

Functions go by import reference when the agent can import them, and by value (cloudpickle) when
not: lambdas, closures, and anything defined in the user's ``__main__`` script. A function is
pickled once; each agent receives its bytes once and afterwards only a small integer key.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import pickle
import sys
import types
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import cloudpickle

from shoal.backends import _wire
from shoal.backends.base import AgentSpec
from shoal.errors import (
    AgentLost,
    AgentStartError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
)

_keys = itertools.count(1)
_BY_VALUE = 1 << 64  # keys of functions sent by value: content digests, apart from counters
_SENT_KEYS = 1024
_fn_cache: weakref.WeakKeyDictionary[Any, tuple[int, bytes]] = weakref.WeakKeyDictionary()
# Functions sent by value: what their bytes were made from, and the token made.
_by_value_cache: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], tuple[int, bytes]]] = (
    weakref.WeakKeyDictionary()
)


def _needs_value(blob: bytes) -> bool:
    # An agent's __main__ is shoal's agent script, so anything pickled by reference to the
    # user's __main__ must travel by value instead.
    return b"__main__" in blob


def dumps(obj: Any) -> bytes:
    """Pickle ``obj``, by reference where the other side can import it and by value if not."""
    try:
        blob = pickle.dumps(obj, _wire.PROTOCOL)
    except Exception:
        blob = b"__main__"
    if _needs_value(blob):
        by_value: bytes = cloudpickle.dumps(obj, _wire.PROTOCOL)
        return by_value
    return blob


def function_token(fn: Callable[..., Any]) -> tuple[int | None, bytes]:
    """``(key, pickled fn)``: what a CALL carries of its function.

    A module-level function the agent can import is pickled once, by reference, and keyed by
    the object: it has no state to go stale. A function sent by value — a lambda, a closure, a
    function of the user's script — must run with the current values of the globals and cells
    it reads. It is pickled again only when one of those may have changed (see
    :func:`_inputs`): a rebound global, closure cell or default, or one that holds a mutable
    value, whose contents can change unseen. Its key is a digest of the bytes, so an agent that
    already holds the same bytes does not load them again. Callables that carry data (a
    partial, a bound method) go whole every time (key None).
    """
    cacheable = isinstance(fn, types.FunctionType)
    cached = _fn_cache.get(fn) if cacheable else None
    if cached is not None:
        return cached
    inputs: tuple[Any, ...] | None = None
    if cacheable:
        inputs = _inputs(fn, set())  # type: ignore[arg-type]
        seen = _by_value_cache.get(fn)
        if inputs is not None and seen is not None and seen[0] == inputs:
            return seen[1]
    try:
        blob = pickle.dumps(fn, _wire.PROTOCOL)
        by_reference = not _needs_value(blob)
    except Exception:
        by_reference = False
    if not by_reference:
        try:
            blob = cloudpickle.dumps(fn, _wire.PROTOCOL)
        except Exception as exc:
            raise SerializationError(
                f"function {_name(fn)} cannot be sent to an agent: {exc}. "
                "Use a module-level function, or one that cloudpickle can serialise."
            ) from exc
    if not cacheable:
        return (None, blob)
    if not by_reference:
        digest = hashlib.blake2b(blob, digest_size=8).digest()
        token = (int.from_bytes(digest, "big") | _BY_VALUE, blob)
        if inputs is not None:
            _by_value_cache[fn] = (inputs, token)
        return token
    token = (next(_keys), blob)
    _fn_cache[fn] = token
    return token


# Values that cannot change without being rebound (which the inputs see): compared by value.
_SCALARS = (int, float, complex, str, bytes, bool, type(None), range)
# Objects pickled by reference or for what they are (a class, a module, a builtin): identity.
_NAMED = (type, types.ModuleType, types.BuiltinFunctionType)


@functools.lru_cache(maxsize=1024)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Every name ``code`` and the code nested in it may look up (attribute names too: a
    superset is safe, names that are not globals are skipped)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_global_names(const))
    return tuple(sorted(names))


def _inputs(fn: types.FunctionType, seen: set[int]) -> tuple[Any, ...] | None:
    """What a by-value function's bytes depend on, to compare with the last time it was
    pickled; None when that cannot be told without pickling it (a mutable value read).

    The code, the defaults, each closure cell's value and each global the code may read,
    recursively through the functions it reads that also travel by value. Scalars compare by
    value, classes, modules and importable functions by identity (the tuple holds them, so an
    id is never reused), tuples element-wise. Anything else — a list, a dict, an instance,
    a function with attributes — is mutable in place, so the function is pickled afresh.
    """
    if id(fn) in seen:
        return ()
    seen.add(id(fn))
    if fn.__dict__ or fn.__kwdefaults__:
        return None
    out: list[Any] = [fn.__code__]
    if fn.__defaults__ and (d := _value(fn.__defaults__, seen)) is None:
        return None
    if fn.__defaults__:
        out.append(d)
    for cell in fn.__closure__ or ():
        try:
            v = _value(cell.cell_contents, seen)
        except ValueError:  # an empty cell
            v = ("empty",)
        if v is None:
            return None
        out.append(v)
    g = fn.__globals__
    for name in _global_names(fn.__code__):
        if name in g:
            v = _value(g[name], seen)
            if v is None:
                return None
            out.append((name, v))
    return tuple(out)


def _value(value: Any, seen: set[int]) -> Any:
    if isinstance(value, _SCALARS):
        return (type(value), value)
    if isinstance(value, _NAMED):
        return (_Same(value),)
    if isinstance(value, types.FunctionType):
        if _fn_cache.get(value) is not None:  # importable: pickled by reference
            return (_Same(value),)
        if getattr(value, "__module__", None) != "__main__" and value.__closure__ is None:
            try:
                if not _needs_value(pickle.dumps(value, _wire.PROTOCOL)):
                    return (_Same(value),)
            except Exception:
                pass
        inner = _inputs(value, seen)
        return None if inner is None else (_Same(value), inner)
    if type(value) is tuple:
        items = [_value(v, seen) for v in value]
        return None if any(v is None for v in items) else tuple(items)
    return None


class _Same:
    """Equal only to a holder of the very same object."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def encode_call(
    sent: set[int], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> bytes:
    """The CALL message for one agent; ``sent`` holds the function keys it already has."""
    key, fn_blob = function_token(fn)
    msg = (_wire.CALL, key, None if key in sent else fn_blob, args, kwargs)
    try:
        payload = dumps(msg)
    except Exception as exc:
        raise SerializationError(_which_argument(fn, args, kwargs, exc)) from exc
    if key is not None:
        if len(sent) >= _SENT_KEYS:
            sent.clear()  # the agent keeps a bounded cache too; it asks again for what it lost
        sent.add(key)
    return payload


def _which_argument(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any], exc: Exception
) -> str:
    labelled = [(f"argument {i}", a) for i, a in enumerate(args)]
    labelled += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in labelled:
        try:
            dumps(value)
        except Exception as inner:
            return (
                f"{label} of {_name(fn)} ({type(value).__qualname__}) cannot be sent to an "
                f"agent: {inner}. Arguments cross a process boundary: pass data (or something "
                "that pickles), not live objects such as locks, sockets or open files."
            )
    return f"the call to {_name(fn)} cannot be sent to an agent: {exc}"


def init_message(spec: AgentSpec, spin_s: float) -> bytes:
    """The INIT message for a new agent: the driver's sys.path, the pool's setup, how long to
    poll for the next call, how often to heartbeat during a call (0: never), how many calls to
    run at once, and the logging level whose records the agent forwards here."""
    try:
        setup_blob = dumps(spec.setup)
    except Exception as exc:
        raise SerializationError(_setup_error(spec, exc)) from exc
    heartbeat = float(spec.heartbeat_interval or 0.0)
    # Agents log what this process would: the least severe level its loggers let through.
    level = min(
        logging.getLogger().getEffectiveLevel(), logging.getLogger("shoal").getEffectiveLevel()
    )
    msg = (_wire.INIT, list(sys.path), setup_blob, spin_s, heartbeat, spec.max_concurrency, level)
    return pickle.dumps(msg, _wire.PROTOCOL)


def _setup_error(spec: AgentSpec, exc: Exception) -> str:
    """Say what of a pool's setup cannot cross to an agent: for a workflow, which module
    global its class uses (a workflow in a script travels by value, with what it refers to)."""
    cls = getattr(spec.setup, "cls", None)
    if not isinstance(cls, type):
        return f"pool {spec.pool!r}: setup {spec.setup!r} cannot be sent to an agent: {exc}"
    culprit = ""
    for member in vars(cls).values():
        code = getattr(member, "__code__", None)
        env = getattr(member, "__globals__", {})
        for name in getattr(code, "co_names", ()):
            if name in env:
                try:
                    cloudpickle.dumps(env[name], _wire.PROTOCOL)
                except Exception:
                    culprit = f"module global {name!r} ({type(env[name]).__name__}), "
                    break
        if culprit:
            break
    return (
        f"workflow class {cls.__qualname__!r} cannot be sent to its agents: {culprit or ''}"
        f"{exc}. A workflow defined in a script travels by value with the globals it uses: "
        "create such objects in the class's setup(self) (once per agent) instead of at module "
        "level, or move the workflow into an importable module"
    )


def setup_failed(spec: AgentSpec, reply: tuple[Any, ...]) -> AgentStartError:
    """The error for a START_FAILED reply, with the agent's exception as its cause."""
    cause = rebuild_exception(reply)
    err = AgentStartError(
        f"pool {spec.pool!r}: setup failed in agent {spec.agent_id}: "
        f"{type(cause).__name__}: {cause}",
        spec.agent_id,
    )
    err.__cause__ = cause
    return err


async def call_over(
    request: Callable[[bytes], Awaitable[tuple[Any, ...]]],
    sent: set[int],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    agent_id: str,
) -> Any:
    """One call through ``request`` (which sends a payload and returns the reply): the
    function's bytes go once per agent, and again if the agent has dropped them."""
    reply = await request(encode_call(sent, fn, args, kwargs))
    if reply[0] == _wire.UNKNOWN_FN:
        sent.discard(reply[1])
        reply = await request(encode_call(sent, fn, args, kwargs))
    return outcome(reply, sent, fn, agent_id)


def outcome(reply: tuple[Any, ...], sent: set[int], fn: Callable[..., Any], agent_id: str) -> Any:
    """The return value a decoded reply carries, or raise the error it stands for.

    UNKNOWN_FN is the caller's to handle (resend the function) before this.
    """
    kind = reply[0]
    if kind == _wire.OK:
        return reply[1]
    if kind == _wire.RAISED:
        raise rebuild_exception(reply)
    if kind == _wire.UNPICKLABLE:
        if reply[1] == "the call":  # the function may not have been kept: resend next time
            sent.clear()
        raise unpicklable(reply, fn)
    raise AgentLost(f"agent {agent_id} sent an unexpected reply {kind!r}", agent_id)


def undecodable(agent_id: str, exc: BaseException) -> SerializationError:
    """The error for a reply that could not be unpickled here (the agent is unharmed)."""
    return SerializationError(
        f"the reply from agent {agent_id} could not be unpickled here: {type(exc).__name__}: {exc}"
    )


def rebuild_exception(msg: tuple[Any, ...]) -> Exception:
    """Turn a RAISED or START_FAILED message into an exception with its remote traceback.

    An :class:`AgentLost` raised by the user's code comes back with ``remote=True``: it is
    about some other agent, not the one that ran the code.
    """
    _, blob, type_name, message, tb = msg
    exc: object = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except BaseException:  # unpickling may run anything, sys.exit included
            exc = None
    if exc is None or not isinstance(exc, Exception):
        # SystemExit, KeyboardInterrupt or CancelledError in an agent must not end the
        # caller's program or task: they arrive as an ordinary error naming them.
        exc = RemoteError(type_name, message)
    if isinstance(exc, AgentLost):
        exc.remote = True
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def unpicklable(msg: tuple[Any, ...], fn: Callable[..., Any]) -> SerializationError:
    _, what, detail = msg
    if what == "the result":
        hint = "Return plain data (lists, dicts, dataclasses), not generators, locks or handles."
    else:
        hint = (
            "The agent imports what the call refers to from this process's sys.path: keep the "
            "function's module and the arguments' classes importable there."
        )
    return SerializationError(
        f"{what} of {_name(fn)} could not cross the process boundary: {detail}. {hint}"
    )


def _name(fn: Callable[..., Any]) -> str:
    return repr(getattr(fn, "__qualname__", None) or fn)
