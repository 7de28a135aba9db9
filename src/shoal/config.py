"""Validated configuration: checked once, at the edge, into frozen objects.

A bad key or value fails with a :class:`~shoal.errors.ConfigError` that names the key, the value
and what is allowed, e.g. ``pool 'api': min_size=5 is greater than max_size=2``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from shoal.errors import ConfigError

Assignment = Literal["mru", "round_robin"]
M = TypeVar("M", bound=BaseModel)


def default_max_size() -> int:
    """One agent per core, like ``ProcessPoolExecutor``."""
    return os.cpu_count() or 1


class PoolConfig(BaseModel):
    """Everything that shapes one pool. Durations are float seconds.

    The seed's ``pool_config`` keys (``min_size``, ``max_size``, ``idle_timeout``) keep their
    names; the rest are shoal's own.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(min_length=1)
    image: str | None = None
    min_size: int = Field(default=1, ge=0, strict=True)
    max_size: int = Field(default_factory=default_max_size, ge=1, strict=True)
    idle_timeout: float = Field(default=300.0, gt=0)
    max_queue: int | None = Field(default=None, ge=0, strict=True)
    max_uses: int | None = Field(default=None, ge=1, strict=True)
    max_lifetime: float | None = Field(default=None, gt=0)
    assignment: Assignment = "mru"
    health_check_interval: float = Field(default=30.0, gt=0)
    health_check_timeout: float = Field(default=5.0, gt=0)
    start_timeout: float = Field(default=120.0, gt=0)
    stop_grace: float = Field(default=10.0, ge=0)
    setup: Callable[[], object] | None = None
    price_per_hour: float | None = Field(default=None, ge=0)  # $ per agent-hour, for cost caps
    # Start an agent at once for a caller who would otherwise wait, unless the busy agents will
    # reach it before a new agent could be up; "eager": for every such caller, whatever the
    # busy agents will do (a FaaS platform's rule: lower waits, more starts). Off, the pool's
    # size moves only with its target (resize / an autoscaler): how the field's autoscalers
    # behave.
    on_demand: StrictBool | Literal["eager"] = True
    # A crash loop: this many failed starts within crash_loop_window seconds break the pool.
    crash_loop_starts: int = Field(default=5, ge=1, strict=True)
    crash_loop_window: float = Field(default=60.0, gt=0)
    # Warn (with where it was taken) about an agent held longer than this, in seconds.
    leak_threshold: float | None = Field(default=None, gt=0)
    # Retire an agent whose resident memory exceeds this many MiB after a call.
    max_memory_mb: float | None = Field(default=None, gt=0)
    # Spread max_lifetime over [1 - jitter, 1] of it, so agents do not all recycle at once.
    lifetime_jitter: float = Field(default=0.1, ge=0, lt=1)
    # Take an agent running a call for frozen (and kill it, failing that call with AgentLost)
    # after this many seconds without a heartbeat, a reply or CPU progress; None turns it off.
    # Generous, so that a long computation in C that holds the GIL is not taken for frozen.
    heartbeat_timeout: float | None = Field(default=30.0, gt=0)
    # Where agents run and what each reserves, as the backend understands it (Ray: num_cpus,
    # num_gpus, memory, resources, scheduling_strategy, label_selector).
    placement: dict[str, Any] | None = None
    # How many calls one agent runs at once (Ray's max_concurrency, Modal's concurrent inputs):
    # async functions run concurrently on the agent's event loop, plain ones in its threads.
    # For I/O-bound steps (LLM calls, HTTP); CPU-bound ones gain nothing above 1.
    max_concurrency: int = Field(default=1, ge=1, le=10_000, strict=True)
    # Where agents live (see shoal.pool.placement); none: one on-demand placement on the pool's
    # own backend. ``build`` also takes ``regions`` (region -> placement keys) and merges them.
    placements: tuple[Any, ...] = ()
    # Placements farther than this from the caller get new agents only when nearer ones cannot.
    rtt_target_ms: float | None = Field(default=None, ge=0)

    @field_validator("on_demand", mode="before")
    @classmethod
    def _on_demand_choice(cls, value: object) -> object:
        if value is True or value is False or value == "eager":
            return value
        raise ValueError("on_demand takes True, False or 'eager'")

    @model_validator(mode="after")
    def _sizes_in_order(self) -> Self:
        if self.min_size > self.max_size:
            raise ValueError(
                f"min_size={self.min_size} is greater than max_size={self.max_size}; "
                "make max_size at least min_size"
            )
        return self

    @classmethod
    def build(cls, where: str, options: Mapping[str, Any]) -> PoolConfig:
        """Validate ``options`` into a config, raising :class:`ConfigError` that names ``where``.

        ``placements`` (a list of placements or dicts) and ``regions`` (a mapping of region to
        a dict of placement keys) are checked by :func:`shoal.pool.placement.parse_placements`
        and merged into ``placements``."""
        if isinstance(options, Mapping) and ("placements" in options or "regions" in options):
            from shoal.pool.placement import parse_placements

            options = dict(options)
            options["placements"] = parse_placements(
                where, options.get("placements"), options.pop("regions", None)
            )
        return validate(cls, where, options)


def validate(model: type[M], where: str, options: Mapping[str, Any]) -> M:
    """Validate a mapping into ``model``; every problem is listed in one :class:`ConfigError`."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}: expected a mapping of options, got {type(options).__name__}")
    allowed = sorted(model.model_fields)
    unknown = [k for k in options if k not in model.model_fields]
    if unknown:
        raise ConfigError(f"{where}: " + "; ".join(_unknown_key(k, allowed) for k in unknown))
    try:
        return model.model_validate(dict(options))
    except ValidationError as err:
        raise ConfigError(f"{where}: {describe(err)}") from None


def _unknown_key(key: object, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}"


def describe(err: ValidationError) -> str:
    """Turn pydantic's report into one line per problem: ``key=value: what is wrong``."""
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if loc:
            parts.append(f"{loc}={e.get('input')!r}: {msg}")
        else:
            parts.append(msg)
    return "; ".join(parts)
