"""The simulator's placements: spot capacity and its preemptions, a cost cap, regions, outages.

``shoal simulate --prefer-spot``, ``--spot-price``, ``--preemptions-per-hour``, ``--notice``,
``--cost-cap``, ``--regions`` and ``--region-outage`` run the production pool with
placements (each on its own :class:`~shoal.sim.backend.SimBackend`), its spot preference and
its spend ceiling. What is simulated: the spot market (preemptions drawn by
:class:`~shoal.spot.SimulatedPreemptions`, each agent killed by its backend at the notice's
deadline), the regions' distances (round trips added to each answer) and their outages.

The regions file is a JSON list of placements, each with the keys of
:class:`~shoal.pool.placement.Placement` (``region``, ``capacity``, ``price_per_hour``,
``max_size``, ``rtt_ms``, ``notice_s``, ``name``) and three of the simulator's: ``load_share``
(the share of the workload's requests that originate in that region; the shares of a region's
entries add up, and all together make 1; none given: equal shares), ``shift_h`` (hours by
which that region's arrivals are shifted, wrapping at the workload's end: a time zone) and
``rtt_from`` (round trips in ms from callers in other regions, ``{"region": ms}``).

A caller reaches a placement in its own region in the placement's ``rtt_ms``; one in another
region in ``rtt_from[caller's region]``, else ``rtt_ms`` + :data:`CROSS_REGION_RTT_MS`.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.config import validate
from shoal.errors import ConfigError
from shoal.pool.placement import DEFAULT_NOTICE_S, DEFAULT_PRICE_PER_HOUR, Placement
from shoal.sim.workload import Workload

#: Round trip added when a caller reaches a placement in another region and the file gives no
#: ``rtt_from`` for it: about the US east-west coast round trip.
CROSS_REGION_RTT_MS = 70.0
#: The spot price when only the on-demand one is given: spot's usual discount.
SPOT_PRICE_FACTOR = 0.3
#: The simulator's own keys of a regions file entry (the rest are the placement's).
SIM_KEYS = ("load_share", "shift_h", "rtt_from")


@dataclass(frozen=True)
class RegionEntry:
    """One placement of a simulated pool, with the simulator's view of its region."""

    placement: Placement
    load_share: float | None = None
    shift_h: float = 0.0
    rtt_from: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Outage:
    """``region``'s backend fails its starts and loses its agents from ``start`` to ``end``
    (seconds from the start of the counted run)."""

    region: str
    start: float
    end: float


@dataclass(frozen=True)
class PlacementOptions:
    """What a simulation with placements runs: the placements, the pool's spot preference
    (``on_demand_base`` None: ``min_size``), the preemptions of its spot agents (a rate per
    spot agent-hour, or a trace of times), its spend ceiling in $/h, and outages."""

    entries: tuple[RegionEntry, ...]
    prefer_spot: bool = False
    spot_fraction: float = 0.8
    on_demand_base: int | None = None
    preemptions_per_hour: float = 0.0
    preemption_trace: tuple[float, ...] | None = None
    cost_cap: float | None = None
    outages: tuple[Outage, ...] = ()

    def policy_keys(self) -> dict[str, Any]:
        """The ``scaling_policy`` keys that ask the pool for this spot preference and cap."""
        keys: dict[str, Any] = {}
        if self.prefer_spot:
            keys.update(prefer_spot=True, spot_fraction=self.spot_fraction)
            if self.on_demand_base is not None:
                keys["on_demand_base"] = self.on_demand_base
        if self.cost_cap is not None:
            keys["cost_threshold"] = self.cost_cap
        return keys

    @property
    def regions(self) -> list[str]:
        """The regions, in the order their first placement is given."""
        return list(dict.fromkeys(e.placement.region for e in self.entries))

    def rtt_s(self, origin: str, entry: RegionEntry) -> float:
        """Seconds of round trip from a caller in ``origin`` to ``entry``'s placement."""
        p = entry.placement
        if p.region == origin:
            return p.rtt_ms / 1000
        return entry.rtt_from.get(origin, p.rtt_ms + CROSS_REGION_RTT_MS) / 1000


def _number(where: str, key: str, value: Any, *, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key}={value!r} must be a number")
    if value < low:
        raise ConfigError(f"{where}: {key}={value!r} must be >= {low:g}")
    return float(value)


def parse_regions(doc: Any, where: str = "--regions") -> tuple[RegionEntry, ...]:
    """Validate a regions document (see the module's doc) into entries; one-line errors."""
    if not isinstance(doc, list) or not doc:
        raise ConfigError(
            f"{where}: expected a non-empty JSON list of placements, e.g. "
            '[{"region": "us-east", "capacity": "on_demand", "price_per_hour": 0.1}]'
        )
    entries = []
    for i, item in enumerate(doc):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{at}: expected an object of placement keys, got {item!r}")
        keys = {k: v for k, v in item.items() if k not in SIM_KEYS}
        for banned in ("backend", "preemption"):
            if banned in keys:
                raise ConfigError(
                    f"{at}: {banned!r} cannot be given in a file; the simulator sets it"
                )
        placement = validate(Placement, at, keys)
        share = item.get("load_share")
        if share is not None:
            share = _number(at, "load_share", share)
        shift = item.get("shift_h", 0.0)
        if (
            isinstance(shift, bool)
            or not isinstance(shift, int | float)
            or not math.isfinite(shift)
        ):
            raise ConfigError(f"{at}: shift_h={shift!r} must be a number of hours")
        rtt_from = item.get("rtt_from", {})
        if not isinstance(rtt_from, dict):
            raise ConfigError(f'{at}: rtt_from must map regions to ms, e.g. {{"eu": 80}}')
        rtts = {str(k): _number(at, f"rtt_from[{k!r}]", v) for k, v in rtt_from.items()}
        entries.append(RegionEntry(placement, share, float(shift), rtts))
    names = [e.placement.name for e in entries]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(f"{where}: two placements are named {dup!r}; give each a unique 'name'")
    shifts: dict[str, float] = {}
    for e in entries:
        r = e.placement.region
        if shifts.setdefault(r, e.shift_h) != e.shift_h:
            raise ConfigError(f"{where}: region {r!r} has two shift_h values; give it one")
    given = [e.load_share for e in entries if e.load_share is not None]
    if given and not math.isclose(sum(given), 1.0, abs_tol=1e-6):
        raise ConfigError(f"{where}: the load_share values add up to {sum(given):g}, not 1")
    return tuple(entries)


def load_regions(path: str | Path) -> tuple[RegionEntry, ...]:
    """Read a ``--regions`` JSON file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--regions {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--regions {path}: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    return parse_regions(doc, f"--regions {path}")


def parse_outage(text: str) -> Outage:
    """``NAME:START_S:END_S`` → :class:`Outage`; a one-line error otherwise."""
    parts = text.rsplit(":", 2)
    usage = "give NAME:START_S:END_S, e.g. us-east:600:1200"
    if len(parts) != 3 or not parts[0]:
        raise ConfigError(f"--region-outage {text!r}: {usage}")
    try:
        start, end = float(parts[1]), float(parts[2])
    except ValueError:
        raise ConfigError(
            f"--region-outage {text!r}: START_S and END_S must be seconds; {usage}"
        ) from None
    if not (0 <= start < end and math.isfinite(end)):
        raise ConfigError(f"--region-outage {text!r}: need 0 <= START_S < END_S")
    return Outage(parts[0], start, end)


def placement_options(
    *,
    price: float | None = None,
    spot_price: float | None = None,
    prefer_spot: bool = False,
    preemptions_per_hour: float = 0.0,
    notice: float | None = None,
    cost_cap: float | None = None,
    regions: Sequence[RegionEntry] | None = None,
    outages: Sequence[Outage] = (),
    spot_fraction: float = 0.8,
    on_demand_base: int | None = None,
) -> PlacementOptions | None:
    """The placements the simulator's flags ask for, or None when they ask for none.

    Without ``regions``: one on-demand placement at ``price`` (default
    :data:`~shoal.pool.placement.DEFAULT_PRICE_PER_HOUR`), and a spot one (at ``spot_price``,
    default :data:`SPOT_PRICE_FACTOR` of ``price``; ``notice`` seconds of notice, default
    120) when spot is preferred, priced or preempted. With ``regions``, ``price``,
    ``spot_price`` and ``notice`` fill what its entries leave out.
    """
    if spot_price is not None and not spot_price >= 0:
        raise ConfigError(f"--spot-price {spot_price!r} must be $ per agent-hour >= 0")
    if not preemptions_per_hour >= 0 or not math.isfinite(preemptions_per_hour):
        raise ConfigError(
            f"--preemptions-per-hour {preemptions_per_hour!r} must be a rate >= 0 "
            "(per spot agent-hour)"
        )
    if notice is not None and not (notice > 0 and math.isfinite(notice)):
        raise ConfigError(f"--notice {notice!r} must be seconds > 0 (AWS gives 120, GCP 30)")
    if cost_cap is not None and not (cost_cap > 0 and math.isfinite(cost_cap)):
        raise ConfigError(f"--cost-cap {cost_cap!r} must be $ per hour > 0")
    wanted = (
        prefer_spot
        or spot_price is not None
        or preemptions_per_hour > 0
        or notice is not None
        or cost_cap is not None
        or regions is not None
        or bool(outages)
    )
    if not wanted:
        return None
    on_demand = DEFAULT_PRICE_PER_HOUR if price is None else price
    spot = on_demand * SPOT_PRICE_FACTOR if spot_price is None else spot_price
    if regions is None:
        entries = [RegionEntry(Placement(capacity="on_demand", price_per_hour=on_demand))]
        if prefer_spot or spot_price is not None or preemptions_per_hour > 0 or notice:
            entries.append(
                RegionEntry(
                    Placement(
                        capacity="spot",
                        price_per_hour=spot,
                        notice_s=notice or DEFAULT_NOTICE_S,
                    )
                )
            )
    else:
        entries = [_filled(e, on_demand, spot, notice) for e in regions]
    if prefer_spot and not any(e.placement.spot for e in entries):
        raise ConfigError(
            '--prefer-spot: no placement is on spot; add one with "capacity": "spot" to --regions'
        )
    known = {e.placement.region for e in entries}
    for outage in outages:
        if outage.region not in known:
            raise ConfigError(
                f"--region-outage {outage.region}: no such region; known: "
                + ", ".join(sorted(known))
            )
    return PlacementOptions(
        entries=tuple(entries),
        prefer_spot=prefer_spot,
        spot_fraction=spot_fraction,
        on_demand_base=on_demand_base,
        preemptions_per_hour=float(preemptions_per_hour),
        cost_cap=cost_cap,
        outages=tuple(outages),
    )


def _filled(entry: RegionEntry, on_demand: float, spot: float, notice: float | None) -> RegionEntry:
    p = entry.placement
    given = p.model_fields_set
    update: dict[str, Any] = {}
    if p.price_per_hour is None:
        update["price_per_hour"] = spot if p.spot else on_demand
    if p.spot and notice is not None and "notice_s" not in given:
        update["notice_s"] = notice
    if not update:
        return entry
    return RegionEntry(p.model_copy(update=update), entry.load_share, entry.shift_h, entry.rtt_from)


def split_origins(
    workload: Workload, options: PlacementOptions, seed: int
) -> tuple[Workload, tuple[int, ...]]:
    """Give each request a region of origin (drawn by ``load_share``, seeded) and shift its
    arrival by its region's ``shift_h`` (wrapping at the horizon); returns the re-sorted
    workload and each request's origin (an index into ``options.regions``)."""
    regions = options.regions
    shares = dict.fromkeys(regions, 0.0)
    shifts = dict.fromkeys(regions, 0.0)
    given = any(e.load_share is not None for e in options.entries)
    for e in options.entries:
        r = e.placement.region
        shares[r] += (e.load_share or 0.0) if given else 0.0
        shifts[r] = e.shift_h
    if not given:
        shares = dict.fromkeys(regions, 1.0 / len(regions))
    weights = [shares[r] for r in regions]
    offsets = [shifts[r] * 3600.0 for r in regions]
    if len(regions) == 1 and not offsets[0]:
        return workload, (0,) * len(workload)
    rng = random.Random(seed * 7_919 + 13)
    cum = list(_accumulate(weights))
    horizon = workload.horizon or 1.0
    rows = []
    for a, d in workload:
        k = min(_bisect(cum, rng.random() * cum[-1]), len(regions) - 1)
        t = a
        if offsets[k]:
            t = (a + offsets[k]) % horizon
            if t >= horizon:  # a tiny negative shift rounds up to the horizon itself
                t = 0.0
        rows.append((t, d, k))
    rows.sort(key=lambda r: r[0])
    shifted = Workload(
        workload.name,
        tuple(r[0] for r in rows),
        tuple(r[1] for r in rows),
        workload.horizon,
    )
    return shifted, tuple(r[2] for r in rows)


def _accumulate(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


def _bisect(cum: list[float], x: float) -> int:
    import bisect

    return bisect.bisect_right(cum, x)


class CostMeter:
    """The spend rate of every simulated agent (starting ones included), the most agents
    alive at once, and the seconds the rate spent over a cap."""

    def __init__(self, cap: float | None) -> None:
        self.cap = cap
        self.rate = 0.0
        self.live = 0
        self.peak = 0
        self.over_s = 0.0
        self._since = 0.0

    def change(self, price: float, delta: int, now: float) -> None:
        self._accrue(now)
        self.live += delta
        self.rate = self.rate + delta * price if self.live else 0.0
        self.peak = max(self.peak, self.live)

    def _accrue(self, now: float) -> None:
        cap = self.cap
        if cap is not None and self.rate > cap * (1 + 1e-9) and now > self._since:
            self.over_s += now - self._since
        self._since = max(self._since, now)

    def reset(self, now: float) -> None:
        """Count from ``now``: the peak is who is alive, nothing has been over."""
        self._accrue(now)
        self.over_s = 0.0
        self.peak = self.live

    def over_until(self, now: float) -> float:
        self._accrue(now)
        return self.over_s


def on_live(meter: CostMeter, price: float) -> Any:
    """The ``on_live`` hook of a backend whose agents cost ``price`` $/h."""
    return functools.partial(meter.change, price)
