"""Draw simulation runs: load, pool size, queue depth and wait over time, one line per policy.

matplotlib (the ``sim`` extra) is imported only here, when a plot is asked for, on the Agg
backend so no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shoal.errors import BackendError
from shoal.sim.run import SimResult

# Baselines in muted colours, shoal's own policies in strong ones, so "auto" stands out.
_SHOAL_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2")
_OTHER_COLOURS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#bcbd22", "#7f7f7f", "#17becf")


def require_matplotlib() -> None:
    """Raise :class:`~shoal.errors.BackendError` now if matplotlib is missing, so a command
    asked to plot fails before it simulates anything."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BackendError(
            "plotting needs matplotlib. Install it with: pip install 'shoal[sim]'"
        ) from None


def plot(results: Sequence[SimResult], path: str | Path, *, title: str | None = None) -> Path:
    """Write a PNG of ``results`` (runs of the same workload) to ``path``; returns the path.

    Four panels share the time axis: the offered load (arrivals per second), then per policy
    the pool's live agents, the callers waiting, and the mean wait of the requests arriving in
    each interval. Raises :class:`~shoal.errors.BackendError` if matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendError(
            "plotting needs matplotlib. Install it with: pip install 'shoal[sim]'"
        ) from None
    if not results:
        raise ValueError("nothing to plot: no results")
    span = max(r.series.time[-1] if r.series.time else 0.0 for r in results)
    unit, scale = ("h", 3600.0) if span > 3 * 3600 else ("min", 60.0) if span > 300 else ("s", 1.0)

    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True, constrained_layout=True)
    load_ax, size_ax, queue_ax, wait_ax = axes
    first = results[0].series
    t = [x / scale for x in first.time]
    load_ax.fill_between(t, first.load, step="post", color="#bbbbbb", linewidth=0)
    load_ax.set_ylabel("arrivals / s")
    load_ax.set_title("offered load", loc="left", fontsize=10)

    shoal_i = other_i = 0
    for r in results:
        s = r.series
        x = [v / scale for v in s.time]
        if r.policy.split(":")[0] in ("auto", "aggressive", "reactive", "conservative", "target"):
            colour = _SHOAL_COLOURS[shoal_i % len(_SHOAL_COLOURS)]
            shoal_i += 1
            width, z = 2.0, 3
        else:
            colour = _OTHER_COLOURS[other_i % len(_OTHER_COLOURS)]
            other_i += 1
            width, z = 1.3, 2
        style: dict[str, Any] = {"color": colour, "linewidth": width, "zorder": z}
        label = f"{r.policy}: p99 wait {r.p99_wait_s:.2f} s, {r.agent_seconds / 3600:,.1f} agent-h"
        size_ax.step(x, s.size, where="post", label=label, **style)
        queue_ax.step(x, s.queue, where="post", **style)
        wait_ax.step(x, s.mean_wait, where="post", **style)
    size_ax.set_ylabel("agents")
    size_ax.set_title("pool size (live agents, starting ones included)", loc="left", fontsize=10)
    queue_ax.set_ylabel("callers")
    queue_ax.set_title("queue depth (callers waiting for an agent)", loc="left", fontsize=10)
    wait_ax.set_ylabel("seconds")
    wait_ax.set_title(
        f"mean wait of the requests arriving in each {first.interval:g} s", loc="left", fontsize=10
    )
    wait_ax.set_xlabel(f"time ({unit})")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.margins(x=0)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.legend(loc="outside lower center", ncol=min(3, len(results)), fontsize=9, frameon=False)
    out = Path(path)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
