"""What runs inside an agent for a workflow step. Standard library only, so it imports fast.

An agent keeps one instance of each workflow class it serves, created (and its ``setup``
run) once, when the agent warms up or at its first step of that workflow. Every later step of
that workflow on that agent reuses it: that is what makes a warm agent worth having.
"""

from __future__ import annotations

import inspect
from typing import Any

_instances: dict[type, Any] = {}


def _instance(cls: type) -> Any:
    inst = _instances.get(cls)
    if inst is None:
        inst = cls()
        setup = getattr(inst, "setup", None)
        if callable(setup):
            result = setup()
            if inspect.isawaitable(result):
                raise TypeError(
                    f"{cls.__qualname__}.setup must be a plain method, not async: it runs once "
                    "per agent before any step"
                )
        _instances[cls] = inst
    return inst


class WorkflowSetup:
    """A pool's ``setup`` for a workflow: build the agent's instance and run its ``setup``."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __call__(self) -> None:
        _instance(self.cls)

    def __repr__(self) -> str:
        return f"WorkflowSetup({self.cls.__qualname__})"


class StepInvoker:
    """Calls one step method on the agent's instance of its workflow class."""

    def __init__(self, cls: type, method: str) -> None:
        self.cls = cls
        self.method = method
        self.__qualname__ = f"{cls.__qualname__}.{method}"  # named so in errors
        # Steps are coroutine functions: an agent running several calls at once runs them on
        # its event loop rather than in a thread.
        self.shoal_async = inspect.iscoroutinefunction(getattr(cls, method, None))

    def __call__(self, ctx: Any, *args: Any) -> Any:
        return getattr(_instance(self.cls), self.method)(ctx.resolved(), *args)

    def __repr__(self) -> str:
        return f"{self.cls.__qualname__}.{self.method}"


class ContextCall:
    """Calls a mapreduce's function with its context's input restored (see ``Context``)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.__qualname__ = getattr(fn, "__qualname__", repr(fn))  # named so in errors
        self.shoal_async = inspect.iscoroutinefunction(fn)

    def __call__(self, ctx: Any, *args: Any) -> Any:
        return self.fn(ctx.resolved(), *args)

    def __repr__(self) -> str:
        return self.__qualname__
