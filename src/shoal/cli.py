"""The ``shoal`` command: ``shoal run FILE[:NAME] --input JSON`` and ``shoal simulate ...``.

On a terminal ``run`` draws live progress — a bar per step and, per pool, its agents by state
and its queue — then prints the result, the wall time, the time per step and warm hits against
cold starts. ``--json`` prints one JSON object and nothing else: agents' output goes to stderr
then (each line prefixed with its agent's id, as on stdout otherwise). The first SIGINT or
SIGTERM takes no new work and gives the calls in flight ``--grace`` seconds; a second one
cancels them; every agent is stopped and the exit status is 128 + the signal.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from shoal import _render
from shoal.errors import BackendError, RemoteTraceback, RunStopped, ShoalError, StepFailed
from shoal.runtime import RunHandle, Runtime
from shoal.sim import cli as sim_cli
from shoal.workflow.spec import spec_of

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad command-line input; the message says what was wrong and how to fix it."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "run":
            return _run_command(args)
        if args.command == "simulate":
            return sim_cli.run(args)
        if args.command == "serve":
            return _serve_command(args)
    except (UsageError, BackendError) as exc:
        print(f"shoal {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ShoalError as exc:  # a definition or configuration the run cannot start with
        print(f"shoal {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    raise AssertionError(args.command)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal", description="Warm, reusable agents in auto-scaling pools."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run a workflow or mapreduce from a Python file",
        description="Run a @workflow class or @mapreduce function defined in a Python file.",
    )
    run.add_argument(
        "target", metavar="FILE[:NAME]", help="the file, and the name if it has several"
    )
    run.add_argument(
        "--input",
        default=None,
        metavar="JSON|@FILE",
        help="the run's input as JSON, or @path to a JSON file (default: none)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    run.add_argument(
        "--backend",
        default="process",
        choices=("process", "ray", "container"),
        help="where agents run (default: process, local worker processes)",
    )
    run.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="S",
        help="on SIGINT/SIGTERM, how long calls in flight may finish (default: 10)",
    )
    sim_cli.add_parser(sub)
    _add_serve_parser(sub)
    return parser


# -- shoal serve ----------------------------------------------------------------------------------


def _add_serve_parser(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve workflows over HTTP, with Prometheus metrics and a live dashboard",
        description="Serve the workflows of Python files over HTTP (needs shoal[serve]).",
    )
    serve.add_argument(
        "targets", nargs="+", metavar="FILE[:NAME]", help="files, and names (default: every one)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any)")
    serve.add_argument(
        "--backend", default="process", choices=("process", "ray", "container"), help="agents"
    )
    serve.add_argument(
        "--token",
        default=os.environ.get("SHOAL_TOKEN"),
        help="require this bearer token on every route but /healthz (default: $SHOAL_TOKEN)",
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        default=100,
        metavar="N",
        help="runs of one workflow allowed to wait before 429 (default: 100, or the pool's)",
    )
    serve.add_argument(
        "--grace", type=float, default=10.0, metavar="S", help="on SIGTERM, time for runs in flight"
    )


def _serve_command(args: argparse.Namespace) -> int:
    from shoal.serve import serve  # the 'serve' extra, imported only when asked for

    targets: list[Any] = []
    for spec in args.targets:
        if ":" in spec:
            targets.append(load_target(spec))
            continue
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"no such file: {spec}")
        found = _targets(_import_file(path))
        if not found:
            raise UsageError(f"{spec} defines no workflow or mapreduce; decorate one first")
        targets.extend(found)
    return serve(
        targets,
        host=args.host,
        port=args.port,
        backend=args.backend,
        token=args.token or None,
        max_queue=args.max_queue,
        grace=args.grace,
    )


# -- shoal run ------------------------------------------------------------------------------------


def _run_command(args: argparse.Namespace) -> int:
    if not args.json:
        return _run(args, None)
    # One JSON object on stdout and nothing else: whatever else would be printed there while
    # the run is under way (agents' output, the workflow file's prints, Ray's logs) goes to
    # stderr. At the descriptor level, so that child processes get it too.
    report: list[str] = []
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        code = _run(args, report)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    for text in report:
        print(text)
    return code


def _run(args: argparse.Namespace, json_report: list[str] | None) -> int:
    target = load_target(args.target)
    payload = parse_input(args.input)
    live = not args.json and sys.stdout.isatty()
    stopper = _GracefulStop(args.grace)
    try:
        outcome = asyncio.run(_execute(target, payload, args.backend, live, stopper))
    except KeyboardInterrupt:  # a Ctrl-C before the run was under way
        print(
            "\nshoal run: interrupted before the run started; nothing is running", file=sys.stderr
        )
        if args.json:
            print(json.dumps({"status": "interrupted", "signal": "SIGINT", "started": False}))
        return EXIT_INTERRUPTED
    handle, result, error, pools = outcome
    if stopper.signal is not None and handle.status != "succeeded":
        name = signal.Signals(stopper.signal).name
        how = "stopped at once" if stopper.forced else "let in-flight calls finish"
        print(
            f"\nshoal run: {name}: took no new work, {how}, and stopped every agent "
            f"(run {handle.status})",
            file=sys.stderr,
        )
        if args.json:  # --json promises one object, interrupted or not
            report = _report(handle, result, error, pools)
            report.update(status="interrupted", signal=name, run_status=handle.status)
            print(json.dumps(report, default=repr))
        return 128 + stopper.signal
    report = _report(handle, result, error, pools)
    if json_report is not None:
        json_report.append(json.dumps(report, default=repr))
    else:
        _print_summary(report, error, sys.stdout)
    return EXIT_ERROR if error is not None else 0


class _GracefulStop:
    """SIGINT/SIGTERM while a run is under way: the first stops taking new work and gives the
    calls in flight ``grace`` seconds; after that, or at a second signal, the run is cancelled
    (its running calls' agents are killed). Either way every agent is stopped on the way out."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.signal: int | None = None
        self.forced = False
        self._handle: RunHandle | None = None

    def install(self, handle: RunHandle) -> None:
        self._handle = handle
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def uninstall(self) -> None:
        if self._handle is None:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        handle = self._handle
        assert handle is not None
        if self.signal is None:
            self.signal = sig
            print(
                f"\nshoal run: {signal.Signals(sig).name}: taking no new work; waiting up to "
                f"{self.grace:g} s for calls in flight (signal again to stop now)",
                file=sys.stderr,
            )
            handle.stop()
            asyncio.get_running_loop().call_later(self.grace, self._force)
        elif self._handle is not None and self._handle.done:
            print("\nshoal run: already stopping: every agent is being stopped", file=sys.stderr)
        else:
            self._force()

    def _force(self) -> None:
        if self._handle is not None and not self._handle.done:
            self.forced = True
            self._handle.cancel()


async def _execute(
    target: Any, payload: Any, backend: str, live: bool, stopper: _GracefulStop
) -> tuple[RunHandle, Any, BaseException | None, dict[str, dict[str, Any]]]:
    # The signal handlers stay until every agent is stopped: a signal during shutdown must
    # not interrupt the closing half-way (and leave agents behind).
    try:
        async with Runtime(backend) as rt:
            handle = await rt.submit(target, payload)
            stopper.install(handle)
            result, error = await follow(rt, handle, live=live)
            pools = {p.name: _pool_report(p, rt.warmup_waits[p.name]) for p in rt.pools}
    finally:
        stopper.uninstall()
    return handle, result, error, pools


async def run_with_progress(
    rt: Runtime, target: Any, payload: Any, *, live: bool, out: TextIO | None = None
) -> tuple[RunHandle, Any, ShoalError | None]:
    """Run ``target`` on ``rt``, redrawing its progress on ``out`` (a terminal) while it runs."""
    handle = await rt.submit(target, payload)
    result, error = await follow(rt, handle, live=live, out=out)
    return handle, result, error


async def follow(
    rt: Runtime, handle: RunHandle, *, live: bool, out: TextIO | None = None
) -> tuple[Any, ShoalError | None]:
    """Wait for a run, drawing its progress on a terminal; returns (result, error)."""
    out = out or sys.stdout
    painter = asyncio.get_running_loop().create_task(_paint(rt, handle, out)) if live else None
    result, error = None, None
    try:
        result = await handle.result()
    except ShoalError as exc:
        error = exc
    except asyncio.CancelledError:
        if not handle.done or asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise  # we were cancelled ourselves
        error = RunStopped(f"run {handle.run_id} was cancelled")
    finally:
        if painter is not None:
            painter.cancel()
            await asyncio.gather(painter, return_exceptions=True)
    return result, error


async def _paint(rt: Runtime, handle: RunHandle, out: TextIO) -> None:
    drawn = 0
    try:
        while True:
            drawn = _render.redraw(out, _render.frame(rt, handle), drawn)
            await asyncio.sleep(0.1)
    finally:
        _render.redraw(out, _render.frame(rt, handle), drawn)


def load_target(spec: str) -> Any:
    """Import ``FILE[:NAME]`` and return the workflow or mapreduce it names (or its only one)."""
    path_text, _, name = spec.partition(":")
    if not path_text.endswith(".py") and ":" not in spec and "/" not in spec:
        raise UsageError(f"{spec!r} is not a Python file; give a path such as pipeline.py[:Name]")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"no such file: {path_text}")
    module = _import_file(path)
    if name:
        target = getattr(module, name, None)
        if target is None:
            raise UsageError(f"{path_text} has no attribute {name!r}; {_found(module)}")
        try:
            spec_of(target)
        except ShoalError as exc:
            raise UsageError(str(exc)) from None
        return target
    found = _targets(module)
    if len(found) != 1:
        raise UsageError(
            f"{path_text} defines {len(found)} workflows or mapreduces; "
            + ("name one as FILE:NAME — " + _found(module) if found else "decorate one first")
        )
    return found[0]


def _import_file(path: Path) -> ModuleType:
    # Imported under its own name with its folder on sys.path, so agents (which share this
    # sys.path) import the same module by reference.
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ShoalError as exc:  # a bad definition: its message says what and how to fix it
        sys.modules.pop(name, None)
        raise UsageError(f"{path}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        sys.modules.pop(name, None)
        tb = "".join(traceback.format_exception(exc)[1:])
        raise UsageError(f"{path} failed to import: {type(exc).__name__}: {exc}\n{tb}") from None
    return module


def _targets(module: ModuleType) -> list[Any]:
    found = []
    for value in vars(module).values():
        if getattr(value, "__module__", None) != module.__name__:
            continue
        try:
            spec_of(value)
        except ShoalError:
            continue
        found.append(value)
    return found


def _found(module: ModuleType) -> str:
    names = [getattr(t, "__name__", repr(t)) for t in _targets(module)]
    return "it defines: " + (", ".join(names) if names else "no workflow or mapreduce")


def parse_input(text: str | None) -> Any:
    """The run's input from ``--input``: JSON text, or ``@path`` to a JSON file."""
    if text is None:
        return None
    source = "--input"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read the input file {path}: {exc.strerror}") from None
        source = str(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def _pool_report(pool: Any, warmup_waits: int = 0) -> dict[str, Any]:
    """One pool's line of the summary. Calls that waited for the pool's first warm-up (the
    runtime starts a pool before a run's first call reaches it) count as cold starts too."""
    m = pool.metrics
    last = None
    scale = [e for e in pool.events if e.kind == "scale"]
    if scale or pool.events:
        e = scale[-1] if scale else pool.events[-1]
        last = {
            "kind": e.kind,
            "agent_id": e.agent_id,
            "from_size": e.from_size,
            "to_size": e.to_size,
            "reason": e.reason,
            "age_s": m.time - e.time,
        }
    return {
        "size": m.size,
        "idle": m.idle,
        "busy": m.busy,
        "starting": m.starting,
        "requests": m.requests_total,
        "warm_hits": m.warm_hits - min(warmup_waits, m.warm_hits),
        "cold_starts": m.cold_starts + min(warmup_waits, m.warm_hits),
        "agents_started": m.agents_started,
        "wait_p50_s": m.wait_p50,
        "wait_p99_s": m.wait_p99,
        "last_event": last,
    }


def _report(
    handle: RunHandle,
    result: Any,
    error: BaseException | None,
    pools: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    steps = [
        {
            "name": s.name,
            "status": s.status,
            "mode": s.mode,
            "pool": s.pool,
            "items": s.total,
            "done": s.done,
            "seconds": s.seconds,
        }
        for s in handle.progress.steps
    ]
    report: dict[str, Any] = {
        "workflow": handle.workflow,
        "run_id": handle.run_id,
        "status": handle.status,
        "result": result,
        "wall_s": handle.wall_s,
        "steps": steps,
        "pools": pools,
    }
    if error is not None:
        report["error"] = {
            "type": type(error).__name__,
            "message": str(error),
            "step": getattr(error, "step", None),
            "item_index": getattr(error, "item_index", None),
            "traceback": _remote_traceback(error),
        }
    return report


def _remote_traceback(error: BaseException) -> str | None:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, RemoteTraceback):
            return cause.tb
        cause = cause.__cause__
    return None


def _print_summary(report: dict[str, Any], error: BaseException | None, out: TextIO) -> None:
    if error is not None:
        print(f"\nerror: {error}", file=sys.stderr)
        tb = report["error"]["traceback"]
        if tb:
            print("in the agent:\n" + tb.rstrip(), file=sys.stderr)
        cause = error.__cause__
        # The step's message already quotes its cause's type and text; say it once.
        if (
            isinstance(error, StepFailed)
            and cause is not None
            and not tb
            and (str(cause) not in str(error))
        ):
            print(f"caused by: {type(cause).__name__}: {cause}", file=sys.stderr)
    else:
        print("\nresult:", file=out)
        print(_render.pretty(report["result"]), file=out)
    print(_render.summary(report), file=out)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
