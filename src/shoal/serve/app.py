"""The HTTP API of ``shoal serve``: a Starlette app over one :class:`~shoal.serve.service.Service`.

Routes: ``POST /runs/{workflow}`` (``?wait=true`` answers with the result), ``GET``/``DELETE
/runs/{id}``, ``GET /runs``, ``GET /pools``, ``GET /events`` (Server-Sent Events), ``GET
/metrics`` (Prometheus), ``GET /healthz``, ``GET /readyz``, ``GET /`` (the dashboard).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
from collections.abc import AsyncIterator, Callable, Iterable
from importlib import resources
from typing import Any

from shoal.errors import (
    AgentLost,
    BackendError,
    CallTimeout,
    PoolAtCapacity,
    PoolBroken,
    PoolClosed,
    RemoteTraceback,
    RunStopped,
    SerializationError,
    StepFailed,
)
from shoal.runtime import Runtime
from shoal.serve.service import Rejected, RunRecord, Service

try:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response, StreamingResponse
    from starlette.routing import Route
    from starlette.types import ASGIApp, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise BackendError("shoal serve needs the 'serve' extra: pip install 'shoal[serve]'") from exc

_KEEPALIVE_S = 15.0
MAX_BODY = 16 * 1024 * 1024  # bytes of a run's input; past it POST /runs answers 413
_YES = ("1", "true", "yes")
_NO = ("", "0", "false", "no")
ROUTES = (
    "POST /runs/{workflow}, GET /runs, GET|DELETE /runs/{id}, GET /pools, GET /events, "
    "GET /metrics, GET /healthz, GET /readyz, GET /"
)


def create_app(
    targets: Iterable[Any],
    *,
    backend: Any = "process",
    token: str | None = None,
    max_queue: int = 100,
    tick_s: float = 0.25,
    runtime_factory: Callable[[], Runtime] | None = None,
) -> Starlette:
    """An ASGI app serving the ``@workflow``/``@mapreduce`` objects in ``targets``.

    The app owns one :class:`Runtime` (``runtime_factory()`` or ``Runtime(backend)``), opened at
    startup and closed at shutdown; its service is ``app.state.service`` once started. With
    ``token`` every route but ``/healthz`` needs ``Authorization: Bearer <token>`` (or
    ``?token=``, for the dashboard and ``EventSource``, which cannot set headers).
    """
    targets = list(targets)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        rt = runtime_factory() if runtime_factory is not None else Runtime(backend)
        async with rt:
            service = Service(rt, targets, max_queue=max_queue, tick_s=tick_s)
            app.state.service = service
            service.start()
            try:
                yield
            finally:
                await service.aclose()

    routes = [
        Route("/", dashboard),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/runs", list_runs),
        Route("/runs/{workflow}", post_run, methods=["POST"]),
        Route("/runs/{run_id}", get_run, methods=["GET"]),
        Route("/runs/{run_id}", delete_run, methods=["DELETE"]),
        Route("/pools", pools),
        Route("/events", events),
        Route("/metrics", metrics),
    ]
    handlers = {HTTPException: http_problem, Exception: internal_problem}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    if token:
        app.add_middleware(BearerAuth, token=token)
    return app


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def dumps(data: Any) -> str:
    """``data`` as strict JSON. What JSON cannot hold as it is (a step's result may hold
    anything) is written as text: NaN and the infinities (which Python's JSON also reads) as
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; keys that are not strings by their ``repr``;
    other objects by their ``repr``."""
    try:
        return json.dumps(data, default=repr, allow_nan=False, separators=(",", ":"))
    except (ValueError, TypeError):
        return json.dumps(_jsonable(data), default=repr, allow_nan=False, separators=(",", ":"))


def _jsonable(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return "NaN" if math.isnan(data) else "Infinity" if data > 0 else "-Infinity"
    if isinstance(data, dict):
        return {_key(k): _jsonable(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_jsonable(v) for v in data]
    return data


def _key(key: Any) -> Any:
    if isinstance(key, float) and not math.isfinite(key):
        return _jsonable(key)
    return key if isinstance(key, str | int | float | bool | None) else repr(key)


def reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    try:
        text = dumps(data)
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. nested past the encoder's depth
        status = 500
        text = dumps({"error": f"this answer cannot be written as JSON: {exc}"})
    return Response(text, status, headers, media_type="application/json")


def problem(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return reply({"error": message}, status, headers)


async def http_problem(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 (no such route, wrong method) as one-line JSON errors."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return problem(404, f"no route {where}; this server has: {ROUTES}")
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        return problem(
            405, f"{where}: wrong method; {request.url.path} takes {allow}", {"Allow": allow}
        )
    return problem(exc.status_code, f"{where}: {exc.detail}", dict(exc.headers or {}))


async def internal_problem(request: Request, exc: Exception) -> Response:
    """Any other error still answers one line of JSON (the traceback goes to the server log)."""
    return problem(500, f"internal error on {request.method} {request.url.path}: {exc!r}")


# -- routes ---------------------------------------------------------------------------------


async def dashboard(request: Request) -> Response:
    page = resources.files("shoal.serve").joinpath("dashboard.html").read_text()
    return HTMLResponse(page)


async def healthz(request: Request) -> Response:
    return reply({"status": "ok"})


async def readyz(request: Request) -> Response:
    service = _service(request)
    if service.ready():
        return reply({"ready": True})
    why = (
        "shutting down"
        if service.draining
        else f"warm-up failed: {service.warm_error}"
        if service.warm_error is not None
        else "pools are warming up"
    )
    return reply({"ready": False, "why": why}, 503)


async def list_runs(request: Request) -> Response:
    return reply({"runs": _service(request).recent_runs()})


async def post_run(request: Request) -> Response:
    service = _service(request)
    name = request.path_params["workflow"]
    try:
        workflow = service.resolve(name)
    except KeyError:
        known = ", ".join(sorted(service.targets)) or "none"
        return problem(404, f"no workflow named {name!r}; this server runs: {known}")
    wait = request.query_params.get("wait", "").lower()
    if wait not in _YES + _NO:
        return problem(400, f"wait={wait!r} is not a flag; use wait=true or wait=false")
    body = await _read_body(request)
    if body is None:
        return problem(
            413, f"the request body is over {MAX_BODY // 2**20} MiB; send a smaller input"
        )
    payload: Any = None
    if body.strip():
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:
            return problem(400, f"the request body is not valid JSON: {_json_error(exc)}")
    try:
        record = await service.submit(workflow, payload)
    except Rejected as exc:
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(exc.retry_after))
        return problem(exc.status, str(exc), headers)
    if wait not in _YES:
        return reply({"id": record.handle.run_id, "status": record.status}, 202)
    await record.done.wait()
    return run_reply(service, record)


async def _read_body(request: Request) -> bytes | None:
    """The body, or None when it is over :data:`MAX_BODY` (then read to its end but not kept,
    so the client, still sending, reads the answer instead of a reset connection)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_BODY:
            chunks.append(chunk)
    return b"".join(chunks) if size <= MAX_BODY else None


def _json_error(exc: BaseException) -> str:
    fix = "; send the run's input as one JSON document (Content-Type: application/json)"
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}{fix}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8{fix}"
    if isinstance(exc, RecursionError):
        return "nested too deeply to parse; flatten the input"
    if "digits" in str(exc):
        return "a number has too many digits to parse; send it as a string"
    return f"{exc}{fix}"


async def get_run(request: Request) -> Response:
    service = _service(request)
    record = service.runs.get(request.path_params["run_id"])
    if record is None:
        return problem(404, f"no run {request.path_params['run_id']!r} (it may have expired)")
    body = service.run_summary(record)
    _add_outcome(body, record)
    return reply(body)


async def delete_run(request: Request) -> Response:
    service = _service(request)
    run_id = request.path_params["run_id"]
    if run_id not in service.runs:
        return problem(404, f"no run {run_id!r}")
    record = service.runs[run_id]
    # The runtime's end comes a turn or two before the service's record of it: either one
    # means there is nothing left to cancel.
    if record.done.is_set() or record.handle.done:
        return problem(409, f"run {run_id} already ended: {record.handle.status}")
    service.cancel(run_id, f"cancelled by DELETE /runs/{run_id}")
    await record.done.wait()
    if record.handle.status != "cancelled":  # it ended its own way before the cancel landed
        return problem(409, f"run {run_id} ended before it could be cancelled: {record.status}")
    return reply(service.run_summary(record))


async def pools(request: Request) -> Response:
    service = _service(request)
    flag = request.query_params.get("history", "").lower()
    if flag not in _YES + _NO:
        return problem(400, f"history={flag!r} is not a flag; use history=true or history=false")
    history = flag in _YES
    return reply(
        {
            "ready": service.ready(),
            "pools": [service.pool_view(p, history) for p in service.rt.pools],
            "runs": service.recent_runs()[:50],
        }
    )


async def metrics(request: Request) -> Response:
    data = generate_latest(_service(request).metrics.registry)
    return Response(data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def events(request: Request) -> Response:
    service = _service(request)

    async def stream() -> AsyncIterator[str]:
        async with service.subscribe() as queue:
            yield "retry: 2000\n\n"
            yield _sse("hello", {"workflows": sorted(service.targets)})
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), _KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if message is None:  # the server is stopping, or we fell too far behind
                    return
                yield _sse(str(message.get("type", "message")), message)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {dumps(data)}\n\n"


# -- runs as HTTP ---------------------------------------------------------------------------


def run_reply(service: Service, record: RunRecord) -> Response:
    body = service.run_summary(record)
    _add_outcome(body, record)
    if record.error is None and record.handle.status == "succeeded":
        return reply(body)
    if record.stopped_server and record.handle.status == "cancelled":
        return reply(body, 503, {"Retry-After": "5"})  # the server stopped: retry elsewhere
    return reply(body, error_status(record.error))


def _add_outcome(body: dict[str, Any], record: RunRecord) -> None:
    if not record.done.is_set():
        return  # not settled yet: the result or error is not stored
    if record.handle.status == "succeeded":
        body["result"] = record.result
    elif record.error is not None:
        body["error"] = error_view(record.error)
        if record.cancelled_by is not None and record.handle.status == "cancelled":
            body["error"]["message"] = record.cancelled_by


def error_status(error: BaseException | None) -> int:
    """The HTTP status that fits a run's error.

    422 when the step's own code rejected its input (``ValueError``, ``TypeError``,
    ``KeyError``) or the input could not be shipped; 500 for other exceptions of the step's code;
    502 when an agent was lost, 504 when a call timed out; 429 and 503 when a pool was full or
    broken; 409 for a cancelled or stopped run.
    """
    if error is None or isinstance(error, asyncio.CancelledError | RunStopped):
        return 409
    cause = error.__cause__ if isinstance(error, StepFailed) else error
    if isinstance(cause, CallTimeout):
        return 504
    if isinstance(cause, AgentLost):
        return 502
    if isinstance(cause, PoolAtCapacity):
        return 429
    if isinstance(cause, PoolBroken | PoolClosed):
        return 503
    if isinstance(cause, SerializationError | ValueError | TypeError | KeyError):
        return 422
    return 500


def error_view(error: BaseException) -> dict[str, Any]:
    cause = error.__cause__ if isinstance(error, StepFailed) else None
    tb = None
    link: BaseException | None = error
    while link is not None:
        if isinstance(link, RemoteTraceback):
            tb = link.tb
            break
        link = link.__cause__
    return {
        "type": type(error).__name__,
        "message": str(error) or type(error).__name__,
        "step": getattr(error, "step", None),
        "item_index": getattr(error, "item_index", None),
        "cause": None if cause is None else {"type": type(cause).__name__, "message": str(cause)},
        "traceback": tb,
    }


# -- auth -----------------------------------------------------------------------------------


class BearerAuth:
    """Every route but ``/healthz`` needs the token, as a bearer header or ``?token=``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = ""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        else:
            given = request.query_params.get("token", "")
        if hmac.compare_digest(given.encode(), self.token):
            await self.app(scope, receive, send)
            return
        why = "a wrong token" if given else "no token"
        response = problem(
            401,
            f"this server needs a bearer token ({why} given): send 'Authorization: Bearer "
            "<token>' or add ?token=<token>",
            {"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)
