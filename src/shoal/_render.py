"""Text for people: the live progress frame of ``shoal run`` and its closing summary."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from shoal.runtime import RunHandle, Runtime

_BAR = 24
_MARK = {"pending": "·", "running": "▶", "done": "✓", "failed": "✗"}


def bar(done: int, total: int | None) -> str:
    if not total:
        return " " * _BAR
    filled = round(_BAR * done / total)
    return "█" * filled + "░" * (_BAR - filled)


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.0f} ms" if value < 1 else f"{value:.2f} s"


def frame(rt: Runtime, handle: RunHandle) -> list[str]:
    """The lines of one progress frame: a bar per step, then each pool's agents and queue."""
    now = rt.clock.now()
    elapsed = now - handle.started if handle.started is not None else 0.0
    lines = [f"{handle.workflow}  {handle.run_id}  {handle.status}  {elapsed:.1f} s"]
    width = max(len(s.name) for s in handle.progress.steps)
    for s in handle.progress.steps:
        total = s.total if s.parallel else 1
        count = f"{s.done}/{total}" if total is not None else "-"
        took = s.seconds if s.status != "running" or s.started is None else now - s.started
        lines.append(
            f"  {_MARK.get(s.status, '?')} {s.name:<{width}} {bar(s.done, total)} "
            f"{count:>11} {seconds(took):>9}"
        )
    pools = [p for p in rt.pools if p.name in handle.pools]
    if pools:
        lines.append("  pools")
        pw = max(len(p.name) for p in pools)
        for p in pools:
            m = p.metrics
            lines.append(
                f"    {p.name:<{pw}}  agents {m.size:>3}: {m.starting} starting, {m.idle} idle, "
                f"{m.busy} busy | queue {m.queue_depth}"
            )
    return lines


def redraw(out: TextIO, lines: list[str], previous: int) -> int:
    """Replace the ``previous`` lines drawn on a terminal with ``lines``; returns their count."""
    if previous:
        out.write(f"\x1b[{previous}F\x1b[J")
    out.write("\n".join(lines) + "\n")
    out.flush()
    return len(lines)


def pretty(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, sort_keys=False)
    except (TypeError, ValueError):
        return repr(value)


def summary(report: dict[str, Any]) -> str:
    """Wall time, time per step, and warm hits against cold starts per pool."""
    lines = [f"\n{report['workflow']} {report['status']} in {seconds(report['wall_s'])}"]
    steps = report["steps"]
    width = max(len(s["name"]) for s in steps)
    for s in steps:
        items = f"{s['done']} items" if s["items"] is not None else ""
        where = f"pool {s['pool']}" if s["pool"] else s["mode"]
        lines.append(f"  {s['name']:<{width}}  {seconds(s['seconds']):>9}  {items:>11}  {where}")
    pools = report["pools"]
    if pools:
        lines.append("  pools (warm hits / cold starts, agents started)")
        pw = max(len(n) for n in pools)
        for name, p in pools.items():
            lines.append(
                f"    {name:<{pw}}  {p['warm_hits']} / {p['cold_starts']}, "
                f"{p['agents_started']} agents; wait p50 {seconds(p['wait_p50_s'])}, "
                f"p99 {seconds(p['wait_p99_s'])}"
            )
            e = p["last_event"]
            if e:
                lines.append(
                    f"    {'':<{pw}}  last change: {e['from_size']} -> {e['to_size']} agents, "
                    f"{e['kind']} {e['agent_id']} ({e['reason']}), {seconds(e['age_s'])} ago"
                )
    return "\n".join(lines)
