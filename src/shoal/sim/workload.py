"""Workloads for the simulator: when requests arrive and how long each one runs.

A :class:`Workload` is a sequence of ``(arrival_time_s, duration_s)`` pairs, from a trace file
(:func:`load_trace`: a ``time_s,duration_s`` CSV, or the Azure Functions public trace's
per-minute invocation counts) or from a seeded generator (:data:`GENERATORS`: steady Poisson,
diurnal, on/off bursts, a flash crowd, a ramp, long-tailed service times). Service times come
from a :class:`Distribution` (:class:`Fixed`, :class:`Exponential`, :class:`LogNormal`).

Everything random takes a seed, so a workload is the same every time it is made.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from shoal.errors import ConfigError

#: What one simulation replays at most, so a hostile or mistaken trace fails at once with the
#: line to fix instead of running for ever or exhausting memory: two weeks of time (the Azure
#: Functions trace's length), a request of a day, five million requests (about a minute per
#: policy, and under a gigabyte).
MAX_HORIZON_S = 14 * 86_400.0
MAX_DURATION_S = 86_400.0
MAX_REQUESTS = 5_000_000

# -- service-time (and cold-start) distributions ------------------------------------------------


class Distribution(Protocol):
    """Where random durations come from: a mean, and a sample drawn with a given RNG."""

    @property
    def mean(self) -> float: ...

    def sample(self, rng: random.Random) -> float: ...


@dataclass(frozen=True)
class Fixed:
    """Always the same duration."""

    value: float

    def __post_init__(self) -> None:
        _check_duration("Fixed value", self.value)

    @property
    def mean(self) -> float:
        return self.value

    def sample(self, rng: random.Random) -> float:
        return self.value

    def __str__(self) -> str:
        return f"fixed {self.value:g} s"


@dataclass(frozen=True)
class Exponential:
    """Exponentially distributed durations (memoryless: the M in M/M/c)."""

    mean: float

    def __post_init__(self) -> None:
        _check_duration("Exponential mean", self.mean, positive=True)

    def sample(self, rng: random.Random) -> float:
        return rng.expovariate(1.0 / self.mean)

    def __str__(self) -> str:
        return f"exponential, mean {self.mean:g} s"


@dataclass(frozen=True)
class LogNormal:
    """Long-tailed durations with the given mean; ``sigma`` is the spread of ``log(duration)``.

    With the default ``sigma=1.5`` the median is a third of the mean and the 99th percentile
    about ten times the mean — the shape of real function run times.
    """

    mean: float
    sigma: float = 1.5

    def __post_init__(self) -> None:
        _check_duration("LogNormal mean", self.mean, positive=True)
        _check_duration("LogNormal sigma", self.sigma, positive=True)

    def sample(self, rng: random.Random) -> float:
        mu = math.log(self.mean) - self.sigma**2 / 2
        return rng.lognormvariate(mu, self.sigma)

    def __str__(self) -> str:
        return f"lognormal, mean {self.mean:g} s, sigma {self.sigma:g}"


#: Distributions by the name the command line uses, built from a mean.
DISTRIBUTIONS: dict[str, Callable[[float], Distribution]] = {
    "fixed": Fixed,
    "exponential": Exponential,
    "lognormal": LogNormal,
}


def distribution(name: str, mean: float) -> Distribution:
    """The distribution called ``name`` (see :data:`DISTRIBUTIONS`) with the given mean."""
    make = DISTRIBUTIONS.get(name)
    if make is None:
        raise ConfigError(
            f"unknown service-time distribution {name!r}; known: {', '.join(DISTRIBUTIONS)}"
        )
    return make(mean)


def _check_duration(what: str, value: float, *, positive: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{what}={value!r}: must be a finite number of seconds {bound}")


# -- workloads ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Workload:
    """Requests to replay: arrival times (seconds from the start, ascending) and run times.

    ``horizon`` is how long the workload lasts (at least its last arrival): a quiet end still
    costs the agents a policy keeps. Iterating yields ``(arrival_time_s, duration_s)`` pairs.
    """

    name: str
    arrivals: tuple[float, ...]
    durations: tuple[float, ...]
    horizon: float = field(default=0.0)
    #: For a generated workload: draws the same shape anew over ``(duration, stream)``, from
    #: another random stream of its seed (``stream`` >= 1 numbers it); None for a trace.
    redraw: Callable[[float, int], Workload] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.arrivals) != len(self.durations):
            raise ConfigError(
                f"workload {self.name!r}: {len(self.arrivals)} arrival times but "
                f"{len(self.durations)} durations"
            )
        last = self.arrivals[-1] if self.arrivals else 0.0
        object.__setattr__(self, "horizon", max(self.horizon, last))

    def __len__(self) -> int:
        return len(self.arrivals)

    def __reduce__(
        self,
    ) -> tuple[type[Workload], tuple[str, tuple[float, ...], tuple[float, ...], float]]:
        # ``redraw`` closes over a rate function (often a lambda): a pickled workload keeps its
        # requests and is redrawn as a trace is.
        return (Workload, (self.name, self.arrivals, self.durations, self.horizon))

    def __iter__(self) -> Iterator[tuple[float, float]]:
        return zip(self.arrivals, self.durations, strict=True)

    @property
    def mean_duration(self) -> float:
        return math.fsum(self.durations) / len(self.durations) if self.durations else 0.0

    def peak_load(self, window: float = 60.0) -> float:
        """The busiest ``window`` seconds' offered load: arrivals per second * mean run time,
        which is how many agents that stretch keeps busy on average."""
        if not self.arrivals:
            return 0.0
        arrivals, n = self.arrivals, len(self.arrivals)
        most, j = 0, 0
        for i, t in enumerate(arrivals):  # two pointers: [t, t + window) holds j - i arrivals
            end = t + window
            while j < n and arrivals[j] < end:
                j += 1
            most = max(most, j - i)
        return most / window * self.mean_duration

    @classmethod
    def from_pairs(
        cls, name: str, pairs: list[tuple[float, float]], horizon: float = 0.0
    ) -> Workload:
        """A workload from ``(arrival, duration)`` pairs in any order (sorted by arrival)."""
        pairs = sorted(pairs, key=lambda p: p[0])
        return cls(name, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), horizon)

    def __repr__(self) -> str:
        return (
            f"<Workload {self.name!r}: {len(self)} requests over {self.horizon:g} s, "
            f"mean run time {self.mean_duration:.3g} s>"
        )


# -- generators -----------------------------------------------------------------------------------

RateFn = Callable[[float], float]


def poisson(
    name: str,
    rate: RateFn,
    peak_rate: float,
    duration: float,
    service: Distribution,
    seed: int,
) -> Workload:
    """A (non-homogeneous) Poisson arrival process with rate ``rate(t)`` ≤ ``peak_rate``.

    Drawn by thinning (Lewis and Shedler): candidates at ``peak_rate``, each kept with
    probability ``rate(t) / peak_rate`` — exact for any rate function, and seeded.
    """
    _check_duration(f"workload {name!r}: duration", duration, positive=True)
    if not peak_rate > 0 or not math.isfinite(peak_rate):
        raise ConfigError(f"workload {name!r}: rate={peak_rate!r} must be a number > 0")
    rng = random.Random(seed)
    # A second stream for run times, so the arrivals do not change with the service model.
    srng = random.Random(seed * 1_000_003 + 1)
    expo, uniform, sample = rng.expovariate, rng.random, service.sample
    arrivals: list[float] = []
    t = 0.0
    while True:
        t += expo(peak_rate)
        if t >= duration:
            break
        if uniform() * peak_rate <= rate(t):
            arrivals.append(t)
    durations = tuple(sample(srng) for _ in arrivals)

    def redraw(span: float, stream: int) -> Workload:
        return poisson(name, rate, peak_rate, span, service, _stream_seed(seed, stream))

    return Workload(name, tuple(arrivals), durations, duration, redraw)


def _stream_seed(seed: int, stream: int) -> int:
    """Another generator's seed from ``seed``: stream ``k`` >= 1 is none of the streams
    ``poisson`` draws with (``seed`` and ``seed * 1_000_003 + 1``)."""
    return (seed * 1_000_003 + 1 + stream) * 7_919 + stream


def steady(
    rate: float = 10.0,
    duration: float = 3600.0,
    *,
    service: Distribution | None = None,
    seed: int = 0,
) -> Workload:
    """Poisson arrivals at a constant ``rate`` per second."""
    return poisson("steady", lambda t: rate, rate, duration, service or _DEFAULT_SERVICE, seed)


def diurnal(
    rate: float = 10.0,
    duration: float = 3600.0,
    *,
    amplitude: float = 0.8,
    period: float | None = None,
    service: Distribution | None = None,
    seed: int = 0,
) -> Workload:
    """A day's swing: the rate follows a sine around ``rate`` (±``amplitude`` of it), from the
    trough at the start to the peak half a ``period`` later (``period`` defaults to
    ``duration``: one day squeezed into the run)."""
    if not 0 <= amplitude <= 1:
        raise ConfigError(f"diurnal: amplitude={amplitude!r} must be within [0, 1]")
    p = period or duration

    def fn(t: float) -> float:
        return rate * (1 - amplitude * math.cos(2 * math.pi * t / p))

    return poisson(
        "diurnal", fn, rate * (1 + amplitude), duration, service or _DEFAULT_SERVICE, seed
    )


def bursty(
    rate: float = 10.0,
    duration: float = 3600.0,
    *,
    burst: float = 8.0,
    on_s: float = 30.0,
    off_s: float = 270.0,
    service: Distribution | None = None,
    seed: int = 0,
) -> Workload:
    """On/off bursts: ``rate`` between bursts; every ``on_s + off_s`` seconds a burst of
    ``burst * rate`` lasting ``on_s``, the first after one quiet stretch."""
    cycle = on_s + off_s

    def fn(t: float) -> float:
        return rate * burst if (t % cycle) >= off_s else rate

    return poisson(
        "bursty", fn, rate * max(burst, 1.0), duration, service or _DEFAULT_SERVICE, seed
    )


def flash(
    rate: float = 10.0,
    duration: float = 3600.0,
    *,
    spike: float = 10.0,
    at: float | None = None,
    decay_s: float = 120.0,
    service: Distribution | None = None,
    seed: int = 0,
) -> Workload:
    """A flash crowd: ``rate`` until ``at`` (a third of the run by default), then at once
    ``spike * rate``, decaying back exponentially with time constant ``decay_s``."""
    start = duration / 3 if at is None else at

    def fn(t: float) -> float:
        if t < start:
            return rate
        return rate * (1 + (spike - 1) * math.exp(-(t - start) / decay_s))

    return poisson("flash", fn, rate * max(spike, 1.0), duration, service or _DEFAULT_SERVICE, seed)


def ramp(
    rate: float = 10.0,
    duration: float = 3600.0,
    *,
    peak: float = 10.0,
    service: Distribution | None = None,
    seed: int = 0,
) -> Workload:
    """A ramp up and down: from ``rate`` linearly to ``peak * rate`` at half time, and back."""
    half = duration / 2

    def fn(t: float) -> float:
        return rate * (1 + (peak - 1) * (1 - abs(t - half) / half))

    return poisson("ramp", fn, rate * max(peak, 1.0), duration, service or _DEFAULT_SERVICE, seed)


def longtail(
    rate: float = 10.0,
    duration: float = 3600.0,
    *,
    service: Distribution | None = None,
    sigma: float = 1.5,
    seed: int = 0,
) -> Workload:
    """Steady Poisson arrivals whose run times are long-tailed: :class:`LogNormal` with the
    mean of ``service`` (1 s by default) and spread ``sigma``."""
    mean = (service or _DEFAULT_SERVICE).mean
    return poisson("longtail", lambda t: rate, rate, duration, LogNormal(mean, sigma), seed)


_DEFAULT_SERVICE: Distribution = Exponential(1.0)


class Generator(Protocol):
    def __call__(
        self,
        rate: float = ...,
        duration: float = ...,
        *,
        service: Distribution | None = ...,
        seed: int = ...,
    ) -> Workload: ...


#: The seeded generators by name: ``GENERATORS["diurnal"](rate=20, duration=7200, seed=1)``.
GENERATORS: dict[str, Generator] = {
    "steady": steady,
    "diurnal": diurnal,
    "bursty": bursty,
    "flash": flash,
    "ramp": ramp,
    "longtail": longtail,
}


def generate(
    name: str,
    rate: float = 10.0,
    duration: float = 3600.0,
    *,
    service: Distribution | None = None,
    seed: int = 0,
) -> Workload:
    """The workload of the generator called ``name``; see :data:`GENERATORS`."""
    make = GENERATORS.get(name)
    if make is None:
        raise ConfigError(f"unknown workload {name!r}; known: {', '.join(GENERATORS)}")
    if duration > MAX_HORIZON_S:
        raise ConfigError(
            f"duration={duration:g} s is past the {MAX_HORIZON_S:,.0f} s (two weeks) a "
            "simulation replays; give a shorter --duration"
        )
    if rate * duration > MAX_REQUESTS:
        raise ConfigError(
            f"rate={rate:g}/s over {duration:g} s is about {rate * duration:,.0f} requests, more "
            f"than the {MAX_REQUESTS:,} a simulation replays; lower --rate or --duration"
        )
    return make(rate, duration, service=service, seed=seed)


# -- trace files ----------------------------------------------------------------------------------


class TraceError(ConfigError):
    """A trace file cannot be read; names the file, the line and what is wrong with it."""

    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"trace {where}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem


_AZURE_KEYS = ("HashOwner", "HashApp", "HashFunction", "Trigger")


def load_trace(
    path: str | Path,
    *,
    service: Distribution | None = None,
    seed: int = 0,
) -> Workload:
    """Read a trace file, recognising its format by its first line.

    - ``time_s,duration_s`` CSV (:func:`csv_trace`), one row per request;
    - the Azure Functions trace's per-minute counts (:func:`azure_trace`), whose header starts
      with ``HashOwner,HashApp,HashFunction,Trigger``; ``service`` gives the run times.

    Raises :class:`TraceError` naming the line and what is wrong with it.
    """
    p = Path(path)
    try:
        with p.open(newline="") as f:
            first = f.readline()
    except OSError as exc:
        raise TraceError(p, None, f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TraceError(p, 1, f"is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    if first.lstrip("\ufeff").startswith(_AZURE_KEYS[0]):
        return azure_trace(p, service=service, seed=seed)
    return csv_trace(p)


def csv_trace(path: str | Path) -> Workload:
    """Read a ``time_s,duration_s`` CSV trace: one request per row, header optional.

    Times are seconds from the start of the trace (any order; they are sorted), durations the
    request's run time. Blank lines and lines starting with ``#`` are skipped.
    """
    p = Path(path)
    pairs: list[tuple[float, float]] = []
    first = True  # a header may only come before the first row
    try:
        with p.open(newline="") as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                if first and _is_header(row):
                    names = [c.strip().lstrip("\ufeff") for c in row]
                    if names != ["time_s", "duration_s"]:
                        raise TraceError(
                            p, lineno, f"header {','.join(names)!r} is not 'time_s,duration_s'"
                        )
                    first = False
                    continue
                first = False
                if len(pairs) >= MAX_REQUESTS:
                    raise TraceError(
                        p,
                        lineno,
                        f"more than {MAX_REQUESTS:,} requests, the most a simulation replays; "
                        "replay a part of the trace",
                    )
                pairs.append(_csv_row(p, lineno, row))
    except OSError as exc:
        raise TraceError(p, None, f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TraceError(p, None, f"is not text: {exc.reason}") from None
    except csv.Error as exc:
        raise TraceError(p, None, f"is not valid CSV: {exc}") from None
    if not pairs:
        raise TraceError(p, None, "holds no requests (expected rows of time_s,duration_s)")
    return Workload.from_pairs(p.stem, pairs)


def _is_header(row: list[str]) -> bool:
    try:
        float(row[0])
    except ValueError:
        return True
    return False


def _csv_row(path: Path, lineno: int, row: list[str]) -> tuple[float, float]:
    if len(row) != 2:
        raise TraceError(
            path, lineno, f"expected 2 fields (time_s,duration_s), found {len(row)}: {row!r}"
        )
    values = []
    for name, text in zip(("time_s", "duration_s"), row, strict=True):
        try:
            value = float(text)
        except ValueError:
            raise TraceError(path, lineno, f"{name}={text.strip()!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise TraceError(path, lineno, f"{name}={text.strip()} must be a finite number >= 0")
        values.append(value)
    time_s, duration_s = values
    if time_s > MAX_HORIZON_S:
        raise TraceError(
            path,
            lineno,
            f"time_s={row[0].strip()} is past the {MAX_HORIZON_S:,.0f} s (two weeks) a "
            "simulation replays; times are seconds from the trace's start",
        )
    if duration_s > MAX_DURATION_S:
        raise TraceError(
            path,
            lineno,
            f"duration_s={row[1].strip()} is longer than the {MAX_DURATION_S:,.0f} s (a day) "
            "a simulated request may run; durations are seconds",
        )
    return time_s, duration_s


def azure_trace(
    path: str | Path,
    *,
    service: Distribution | None = None,
    seed: int = 0,
) -> Workload:
    """Read the Azure Functions public trace's invocation counts (``invocations_per_function``).

    Each row is one function: ``HashOwner,HashApp,HashFunction,Trigger`` then the columns
    ``1`` .. ``1440``, its invocations in each minute of the day. All rows are replayed as one
    pool's load: each minute's total is spread uniformly at random over that minute (seeded).
    The trace has no run times; they are drawn from ``service`` (exponential, mean 1 s, by
    default).
    """
    p = Path(path)
    totals: list[int] = []
    try:
        with p.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise TraceError(p, 1, "is empty")
            header = [h.strip().lstrip("\ufeff") for h in header]
            if tuple(header[:4]) != _AZURE_KEYS:
                raise TraceError(
                    p, 1, f"header must start with {','.join(_AZURE_KEYS)}, not {header[:4]!r}"
                )
            minutes = header[4:]
            for i, name in enumerate(minutes, start=1):
                if name != str(i):
                    raise TraceError(
                        p, 1, f"column {i + 4} of the header is {name!r}; expected {str(i)!r}"
                    )
            if not minutes:
                raise TraceError(p, 1, "has no minute columns ('1', '2', ...)")
            if len(minutes) * 60.0 > MAX_HORIZON_S:
                raise TraceError(
                    p, 1, f"has {len(minutes):,} minutes, past the two weeks a simulation replays"
                )
            total = 0
            totals = [0] * len(minutes)
            for lineno, row in enumerate(reader, start=2):
                if not row or not "".join(row).strip():
                    continue
                if len(row) != len(header):
                    raise TraceError(p, lineno, f"expected {len(header)} fields, found {len(row)}")
                for minute, text in enumerate(row[4:]):
                    try:
                        count = int(text) if text.strip() else 0
                    except ValueError:
                        raise TraceError(
                            p,
                            lineno,
                            f"minute {minute + 1}: count {text.strip()!r} is not an integer",
                        ) from None
                    if count < 0:
                        raise TraceError(p, lineno, f"minute {minute + 1}: count {count} < 0")
                    total += count
                    if total > MAX_REQUESTS:
                        raise TraceError(
                            p,
                            lineno,
                            f"minute {minute + 1}: count {count:,} brings the trace past "
                            f"{MAX_REQUESTS:,} requests, the most a simulation replays; "
                            "replay fewer functions",
                        )
                    totals[minute] += count
    except OSError as exc:
        raise TraceError(p, None, f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TraceError(p, None, f"is not text: {exc.reason}") from None
    except csv.Error as exc:
        raise TraceError(p, None, f"is not valid CSV: {exc}") from None
    return spread_counts(p.stem, totals, 60.0, service=service, seed=seed)


def spread_counts(
    name: str,
    counts: list[int],
    bucket_s: float,
    *,
    service: Distribution | None = None,
    seed: int = 0,
) -> Workload:
    """A workload from arrival counts per bucket of ``bucket_s`` seconds, each count spread
    uniformly at random over its bucket (seeded)."""
    rng = random.Random(seed)
    srng = random.Random(seed * 1_000_003 + 1)
    uniform = rng.random
    arrivals: list[float] = []
    for i, count in enumerate(counts):
        start = i * bucket_s
        arrivals.extend(sorted(start + uniform() * bucket_s for _ in range(count)))
    sample = (service or _DEFAULT_SERVICE).sample
    durations = tuple(sample(srng) for _ in arrivals)
    return Workload(name, tuple(arrivals), durations, len(counts) * bucket_s)
