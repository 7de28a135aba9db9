"""What a predictor has learnt, kept across restarts: a small JSON file per pool.

A policy's state is a chain of frozen dataclasses (guards around keep-warm around the predictor
around the reactive policy, each holding the next in ``inner``). :func:`export` takes from it
what took hours to learn — the forecaster's rate bins, period, models and errors, and the
keep-warm policy's idle-gap histogram — as plain JSON-ready data, and :func:`restore` puts such
data back into a fresh state. Both are pure; :func:`save` and :func:`load` are the file I/O the
:class:`~shoal.scaling.AutoScaler` does at its stop and start (``scaling_policy`` key
``state_file``).

The windows and smoothed rates of the reactive policy and the guards are not kept: they describe
the last minutes before the stop, not the load's shape, and would be stale after a restart.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from shoal.errors import ConfigError
from shoal.scaling.keepwarm import BUCKETS, GapHistogram, KeepWarmState
from shoal.scaling.predict import ForecastState
from shoal.scaling.predictive import PredictState

VERSION = 1
_ARRAYS = ("history", "season", "ridge_a", "ridge_b")


def _chain(state: Any) -> list[Any]:
    out = []
    for _ in range(16):
        if state is None or not dataclasses.is_dataclass(state):
            break
        out.append(state)
        state = getattr(state, "inner", None)
    return out


def _forecast_to_json(f: ForecastState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in dataclasses.fields(f):
        value = getattr(f, field.name)
        if field.name in _ARRAYS:
            value = np.asarray(value).tolist()
        elif field.name == "features":
            value = [np.asarray(x).tolist() for x in value]
        elif field.name == "pending":
            value = [list(x) for x in value]
        elif isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    return out


def _forecast_from_json(data: dict[str, Any]) -> ForecastState:
    names = {f.name for f in dataclasses.fields(ForecastState)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown forecast fields {sorted(unknown)}")
    kw: dict[str, Any] = {}
    for name, value in data.items():
        if name in _ARRAYS:
            kw[name] = np.asarray(value, dtype=float)
        elif name == "features":
            kw[name] = tuple(np.asarray(x, dtype=float) for x in value)
        elif name == "pending":
            kw[name] = tuple(tuple(float(v) for v in x) for x in value)
        elif isinstance(value, list):
            kw[name] = tuple(float(v) for v in value)
        else:
            kw[name] = value
    return ForecastState(**kw)


def export(state: Any) -> dict[str, Any] | None:
    """What the policy state holds of a forecaster and a gap histogram; None if neither."""
    out: dict[str, Any] = {"version": VERSION}
    for s in _chain(state):
        if isinstance(s, PredictState):
            out["forecast"] = _forecast_to_json(s.forecast)
        elif isinstance(s, KeepWarmState):
            out["gaps"] = {"counts": list(s.gaps.counts), "beyond": s.gaps.beyond}
    return out if len(out) > 1 else None


def restore(state: Any, data: dict[str, Any]) -> Any:
    """``state`` with the learnt parts of ``data`` put back (a ValueError if they do not fit)."""
    if data.get("version") != VERSION:
        raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
    forecast = _forecast_from_json(data["forecast"]) if "forecast" in data else None
    gaps = None
    if "gaps" in data:
        counts = tuple(int(c) for c in data["gaps"]["counts"])
        if len(counts) != BUCKETS:
            raise ValueError(f"{len(counts)} gap buckets, expected {BUCKETS}")
        gaps = GapHistogram(counts, int(data["gaps"]["beyond"]))

    def put(s: Any) -> Any:
        if s is None or not dataclasses.is_dataclass(s) or isinstance(s, type):
            return s
        inner = getattr(s, "inner", None)
        changes: dict[str, Any] = {}
        if inner is not None:
            changes["inner"] = put(inner)
        if isinstance(s, PredictState) and forecast is not None:
            changes["forecast"] = forecast
        if isinstance(s, KeepWarmState) and gaps is not None:
            changes["gaps"] = gaps
        return dataclasses.replace(s, **changes) if changes else s

    return put(state)


def save(path: str | os.PathLike[str], state: Any) -> bool:
    """Write what ``state`` has learnt to ``path`` (atomically); False if it holds nothing."""
    data = export(state)
    if data is None:
        return False
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, target)
    return True


def load(path: str | os.PathLike[str], state: Any) -> Any:
    """``state`` with what ``path`` holds put back; ``state`` itself if there is no file.

    A file that cannot be read or does not fit is a :class:`~shoal.errors.ConfigError` naming
    it and how to fix it."""
    target = Path(path)
    if not target.exists():
        return state
    try:
        return restore(state, json.loads(target.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"state_file {str(target)!r} holds no predictor state shoal can use ({exc}); "
            "delete it to start learning afresh"
        ) from None
