"""The exception tree: every error shoal raises is a :class:`ShoalError`.

Errors are named by who must react: the caller (``ConfigError``, ``SerializationError``), the
capacity planner (``PoolAtCapacity``, ``PoolTimeout``), or the pool itself (``AgentLost``,
``AgentStartError``). Messages say what was wrong and how to fix it.
"""

from __future__ import annotations


class ShoalError(Exception):
    """Root of every error shoal raises."""


class ConfigError(ShoalError, ValueError):
    """A configuration key or value is invalid; the message names the key and what is allowed."""


class SerializationError(ShoalError, TypeError):
    """Arguments, a result or a function could not cross the process boundary."""


class BackendError(ShoalError):
    """A backend could not be used (missing extra, unreachable cluster, ...)."""


class PoolError(ShoalError):
    """A pool could not serve a call; carries the pool's state when it was raised."""

    def __init__(self, message: str, state: str = "") -> None:
        super().__init__(f"{message} {state}".strip())
        self.state = state


class PoolAtCapacity(PoolError):
    """The pool is at ``max_size`` and its wait queue holds ``max_queue`` callers already."""


class PoolTimeout(PoolError, TimeoutError):
    """No agent became free within the caller's timeout."""


class PoolBroken(PoolError):
    """Agents of this pool keep failing to start; the last start error is the ``__cause__``.

    Raised at once to callers while the pool is broken, instead of letting them wait; the pool
    keeps trying to start agents (with backoff) and recovers when one starts.
    """


class PoolClosed(PoolError):
    """The pool is closing or closed and takes no more calls."""


class AgentError(ShoalError):
    """Something happened to one agent; the pool lives on and replaces it."""

    def __init__(self, message: str, agent_id: str | None = None) -> None:
        super().__init__(message)
        self.agent_id = agent_id


class AgentStartError(AgentError):
    """An agent failed to start or warm up; the remote cause is chained as ``__cause__``."""


class ResourcesUnavailable(AgentStartError):
    """The cluster has no room for one more agent: not a crash, and not counted as one.

    ``short`` maps each resource short to how much more one agent needs. The pool keeps the
    agents it has and tries again later (when another pool shrinks, or a node joins).
    """

    def __init__(
        self, message: str, agent_id: str | None = None, *, short: dict[str, float] | None = None
    ) -> None:
        super().__init__(message, agent_id)
        self.short = dict(short or {})


class AgentLost(AgentError):
    """The agent died before answering the call.

    ``delivered`` is False when the call never reached the agent, so it is always safe to retry;
    ``exit_code`` is the process's exit status (negative: killed by that signal). ``remote`` is
    True when the user's code raised it inside an agent (a nested pool's loss, say): it says
    nothing of the agent that ran the code, which stays in service.
    """

    def __init__(
        self,
        message: str,
        agent_id: str | None = None,
        *,
        exit_code: int | None = None,
        delivered: bool = True,
        remote: bool = False,
    ) -> None:
        super().__init__(message, agent_id)
        self.exit_code = exit_code
        self.delivered = delivered
        self.remote = remote


class Preempted(AgentLost):
    """The agent's spot capacity was reclaimed before its call finished, or the agent went
    down with its whole placement (a region's failure).

    The call was cancelled at the notice's deadline; :meth:`AgentPool.call` re-queues it at the
    head of the queue (unless ``on_preempt="fail"``), so callers of ``call``/``run``/``map``
    see this only when a call was preempted too often.
    """


def agent_failed(exc: BaseException) -> bool:
    """True when ``exc`` is the loss of an agent (or a call timeout) seen here, which is worth a
    retry on another agent — not such an error raised by the user's code inside the agent."""
    if isinstance(exc, AgentLost):
        return not exc.remote
    # A CallTimeout carries no such flag; one raised inside an agent has its remote traceback.
    return isinstance(exc, CallTimeout) and not isinstance(exc.__cause__, RemoteTraceback)


class CallRecalled(AgentError):
    """A call the pool took back from an agent before it started, to run it on an agent that
    came free sooner. The pool's own calls retry it; it is never raised to their callers."""


class CallTimeout(AgentError, TimeoutError):
    """A call ran past its timeout; the agent running it was killed and is replaced."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised inside an agent, chained as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class RemoteError(ShoalError):
    """An exception raised in an agent that could not be rebuilt here (it was not picklable)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_message = message


class WorkflowError(ConfigError):
    """A workflow, step or mapreduce is defined or invoked wrongly; raised before anything runs."""


class RunStopped(ShoalError):
    """The run was asked to stop (``handle.stop()``, SIGTERM): it took no new work, let the
    calls in flight finish, and ended before its last step."""


class StepFailed(ShoalError):
    """A step of a run failed; names the workflow, the step and, for parallel steps, the item.

    The step's own exception is chained as ``__cause__`` (and its remote traceback under that).
    """

    def __init__(
        self,
        message: str,
        *,
        workflow: str,
        step: str,
        item_index: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.step = step
        self.item_index = item_index
        self.attempts = attempts
