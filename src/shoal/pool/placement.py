"""Where a pool's agents live: placements, and the notices that take spot capacity away.

A pool's agents live in one or more *placements*: a backend in a region, on on-demand or spot
capacity, at a price per agent-hour, with a size limit and a round-trip time from the caller.
A pool configured with none has one on-demand placement on its own backend, as before.

A :class:`PreemptionSource` watches one placement for the provider's notice that its spot
capacity is being reclaimed and hands each notice to the pool as a :class:`PreemptionNotice`.
The pool decides what a notice does (drain, replace, re-queue); the source only reads it.

This module is the contract between the pool, the preemption sources in :mod:`shoal.spot` and
the simulator; it holds data and validation only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shoal.errors import ConfigError

Capacity = Literal["on_demand", "spot"]

#: Seconds between a provider's spot notice and the reclaim when a placement does not say:
#: AWS's two minutes. (GCP gives 30 s; set ``notice_s`` for it.)
DEFAULT_NOTICE_S = 120.0
#: $ per agent-hour when neither a placement nor its pool gives a price: about one vCPU-hour on
#: demand at the large clouds, so ``cost_threshold: 100`` buys 1,000 agents.
DEFAULT_PRICE_PER_HOUR = 0.10
#: A spot placement without a price costs this fraction of the on-demand price (the pool's
#: ``price_per_hour``, else :data:`DEFAULT_PRICE_PER_HOUR`): spot's usual discount.
SPOT_PRICE_FACTOR = 0.3


class Placement(BaseModel):
    """One place a pool's agents can live.

    ``name`` is unique within a pool (default ``"<region>-<capacity>"``); ``backend`` is the
    backend that starts agents there (``None``: the pool's own); ``price_per_hour`` is $ per
    agent-hour (``None``: the pool's price, else the documented default); ``max_size`` caps this
    placement's agents (``None``: only the pool's ``max_size``); ``rtt_ms`` is the round trip from
    the caller to the placement; ``notice_s`` is how long a spot preemption notice precedes the
    reclaim; ``preemption`` is the source that watches for those notices.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = ""
    region: str = Field(default="local", min_length=1)
    capacity: Capacity = "on_demand"
    price_per_hour: float | None = Field(default=None, ge=0)
    max_size: int | None = Field(default=None, ge=0, strict=True)
    rtt_ms: float = Field(default=0.0, ge=0)
    notice_s: float | None = Field(default=None, gt=0)
    backend: Any = None
    preemption: Any = None

    @model_validator(mode="after")
    def _named(self) -> Self:
        if not self.name:
            object.__setattr__(self, "name", f"{self.region}-{self.capacity}")
        if self.capacity == "spot" and self.notice_s is None:
            object.__setattr__(self, "notice_s", DEFAULT_NOTICE_S)
        return self

    @property
    def spot(self) -> bool:
        return self.capacity == "spot"

    def price(self, pool_price: float | None) -> float:
        """$ per agent-hour here: the placement's own price, else the pool's (times
        :data:`SPOT_PRICE_FACTOR` on spot), else :data:`DEFAULT_PRICE_PER_HOUR` (likewise)."""
        if self.price_per_hour is not None:
            return self.price_per_hour
        base = DEFAULT_PRICE_PER_HOUR if pool_price is None else pool_price
        return base * SPOT_PRICE_FACTOR if self.spot else base


#: The keys a placement takes, in a ``pool_config``'s ``placements`` list or ``regions`` mapping.
PLACEMENT_KEYS = tuple(Placement.model_fields)


def parse_placements(
    where: str,
    placements: Sequence[Placement | Mapping[str, Any]] | None = None,
    regions: Mapping[str, Mapping[str, Any] | Placement] | None = None,
) -> tuple[Placement, ...]:
    """Validate a pool's ``placements`` (a list of placements or dicts) and ``regions`` (a
    mapping of region name to a dict of the same keys) into one tuple of placements, raising
    :class:`~shoal.errors.ConfigError` with one line naming the entry and what was wrong."""
    from shoal.config import validate

    found: list[Placement] = []
    if placements is not None:
        if isinstance(placements, (str, bytes, Mapping)) or not isinstance(placements, Sequence):
            raise ConfigError(
                f"{where}: placements={placements!r} must be a list of placements (dicts with "
                f"keys {', '.join(PLACEMENT_KEYS)})"
            )
        for i, entry in enumerate(placements):
            found.append(_one(validate, f"{where}: 'placements' entry {i}", entry, {}))
    if regions is not None:
        if not isinstance(regions, Mapping):
            raise ConfigError(
                f"{where}: regions={regions!r} must map each region's name to a dict of "
                "placement keys"
            )
        for region, entry in regions.items():
            if not isinstance(region, str) or not region:
                raise ConfigError(f"{where}: 'regions' key {region!r} is not a region name")
            if isinstance(entry, Mapping) and entry.get("region", region) != region:
                raise ConfigError(
                    f"{where}: 'regions' entry {region!r} says region={entry['region']!r}; "
                    "drop the key or make it match"
                )
            found.append(
                _one(validate, f"{where}: 'regions' entry {region!r}", entry, {"region": region})
            )
    seen: set[str] = set()
    for p in found:
        if p.name in seen:
            raise ConfigError(
                f"{where}: two placements are named {p.name!r}; give each a unique 'name'"
            )
        seen.add(p.name)
    return tuple(found)


def _one(
    validate: Callable[..., Placement],
    where: str,
    entry: Placement | Mapping[str, Any],
    extra: Mapping[str, Any],
) -> Placement:
    if isinstance(entry, Placement):
        if not extra:
            return entry
        fields = entry.model_dump()
        if entry.name == f"{entry.region}-{entry.capacity}":
            fields["name"] = ""  # named after its region: name it after the new one
        return Placement(**{**fields, **extra})
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f"{where}: expected a Placement or a dict of its keys, got {type(entry).__name__}"
        )
    return validate(Placement, where, {**extra, **entry})


@dataclass(frozen=True, slots=True)
class PreemptionNotice:
    """A provider's word that spot capacity is being reclaimed.

    ``placement`` names the placement; ``agent_ids`` the agents affected (``None``: every agent
    of the placement, as when the notice is for the whole machine they run on); ``deadline`` is
    the loop time at which they will be gone; ``action`` is the provider's word for what happens
    (AWS: ``terminate``, ``stop``, ``hibernate``; GCP: ``preempted``); ``source`` names where the
    notice came from (``aws``, ``gcp``, ``sim``, ...).
    """

    placement: str
    deadline: float
    action: str = "terminate"
    source: str = ""
    agent_ids: tuple[str, ...] | None = None


@runtime_checkable
class PreemptionSource(Protocol):
    """Watches one placement and reports each preemption notice once.

    ``watch`` runs until cancelled (the pool cancels it when it closes), calling ``notify`` for
    every new notice; ``now`` is the pool's clock, for turning the provider's wall-clock times
    into a loop-time ``deadline``. A source must not raise for a transient failure to read its
    endpoint: it logs and keeps polling.
    """

    async def watch(
        self,
        placement: Placement,
        notify: Callable[[PreemptionNotice], None],
        now: Callable[[], float],
    ) -> None: ...


__all__ = [
    "DEFAULT_NOTICE_S",
    "DEFAULT_PRICE_PER_HOUR",
    "PLACEMENT_KEYS",
    "SPOT_PRICE_FACTOR",
    "Capacity",
    "Placement",
    "PreemptionNotice",
    "PreemptionSource",
    "parse_placements",
]
