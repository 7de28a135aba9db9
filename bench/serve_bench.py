"""Open-loop HTTP load on ``shoal serve`` against Ray Serve and a FastAPI-style process pool.

The handler is ``examples/api_processor.py``'s request (validate, then ~20k rounds of SHA-256);
the three servers run it the same way behind one HTTP route that answers with the result:

- **shoal**: ``shoal serve examples/api_processor.py`` (auto-scaled instances, 1..20), ``POST
  /runs/api_processor?wait=true``;
- **ray-serve**: a Ray Serve deployment with autoscaling on (1..20 replicas) on a local Ray;
- **process-pool**: a Starlette app calling a ``ProcessPoolExecutor`` (one worker per CPU).

Arrivals follow a fixed schedule (open loop: a slow server does not slow the arrivals), at each
rate for ``--duration`` seconds; latency is measured from each request's scheduled time. Then a
burst of 10x the base rate checks admission control on shoal: every request gets a 200 or a
429 with ``Retry-After``, and the 200s carry distinct runs whose results match their inputs.

    python bench/serve_bench.py [--rates 5,10,20,40] [--duration 10] [--systems shoal,ray-serve]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SALT = hashlib.sha256(b"shoal").digest()


def work(request: dict[str, Any]) -> dict[str, Any]:
    """api_processor's two steps as one function, for the peers."""
    if not isinstance(request, dict) or "user" not in request:
        raise ValueError("a request needs a 'user'")
    user, n = str(request["user"]), int(request.get("n", 1))
    digest = SALT + user.encode()
    for _ in range(20_000 * n):
        digest = hashlib.sha256(digest).digest()
    return {"user": user, "token": digest.hex()[:16]}


# -- the peers, each run as its own process ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_process_pool(port: int) -> None:
    import concurrent.futures

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    pool = concurrent.futures.ProcessPoolExecutor(os.cpu_count() or 1)
    list(pool.map(work, [{"user": "warm"}] * (os.cpu_count() or 1)))  # warm every worker

    async def handle(request: Request) -> JSONResponse:
        body = await request.json()
        result = await asyncio.get_running_loop().run_in_executor(pool, work, body)
        return JSONResponse({"result": result})

    app = Starlette(routes=[Route("/run", handle, methods=["POST"])])
    print("ready", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=2048)


def serve_ray(port: int) -> None:
    import ray
    from ray import serve
    from starlette.requests import Request

    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    @serve.deployment(
        autoscaling_config={"min_replicas": 1, "max_replicas": 20, "target_ongoing_requests": 2},
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=5,
    )
    class Processor:
        async def __call__(self, request: Request) -> dict[str, Any]:
            return {"result": work(await request.json())}

    serve.run(Processor.bind(), route_prefix="/run")
    print("ready", flush=True)
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    while not stop:
        time.sleep(0.2)
    serve.shutdown()
    ray.shutdown()


@contextlib.contextmanager
def system(name: str, max_queue: int) -> Iterator[str]:
    """Start one server; yield the URL to POST a request to."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    port = _free_port()
    if name == "shoal":
        cmd = [sys.executable, "-m", "shoal.cli", "serve", "examples/api_processor.py"]
        cmd += ["--port", str(port), "--max-queue", str(max_queue), "--grace", "30"]
        url = f"http://127.0.0.1:{port}/runs/api_processor?wait=true"
        ready_url = f"http://127.0.0.1:{port}/readyz"
    else:
        mode = "--serve-ray" if name == "ray-serve" else "--serve-process-pool"
        cmd = [sys.executable, __file__, mode, str(port)]
        url = f"http://127.0.0.1:{port}/run"
        ready_url = None
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        if ready_url is None:
            for line in proc.stdout:
                if line.strip() == "ready":
                    break
            else:
                raise RuntimeError(f"{name} did not start")
        deadline = time.monotonic() + 300
        while True:  # the route must answer before the clock starts
            with contextlib.suppress(httpx.HTTPError):
                check = httpx.get(ready_url) if ready_url else httpx.post(url, json={"user": "x"})
                if check.status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} never became ready")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- the load ---------------------------------------------------------------------------------


async def open_loop(url: str, rate: float, duration: float, tag: str) -> dict[str, Any]:
    """Send ``rate`` requests/s for ``duration`` s on a fixed schedule; measure each one."""
    n = int(rate * duration)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    results: list[tuple[int, float, Any]] = []
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05

        async def one(i: int) -> None:
            at = t0 + i / rate
            await asyncio.sleep(max(0.0, at - loop.time()))
            body = {"user": f"{tag}-{i}", "n": 1}
            try:
                r = await client.post(url, json=body)
                status, payload = r.status_code, (r.json() if r.content else None)
                if status == 429:
                    payload = {"retry_after": r.headers.get("Retry-After")}
            except httpx.HTTPError as exc:
                status, payload = 0, repr(exc)
            results.append((status, loop.time() - at, (i, payload)))

        await asyncio.gather(*(one(i) for i in range(n)))
        wall = loop.time() - t0
    ok = sorted(lat for status, lat, _ in results if status == 200)
    return {
        "offered": rate,
        "sent": n,
        "ok": len(ok),
        "rejected": sum(1 for s, _, _ in results if s == 429),
        "errors": sum(1 for s, _, _ in results if s not in (200, 429)),
        "throughput": len(ok) / wall if wall > 0 else 0.0,
        "p50": _q(ok, 0.5),
        "p99": _q(ok, 0.99),
        "raw": results,
    }


def _q(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[max(0, min(len(values) - 1, int(q * len(values) + 0.5) - 1))]


def _check_burst(runs: dict[str, Any]) -> dict[str, Any]:
    """Every 200 is a distinct run whose result is its own request's; 429s carry Retry-After."""
    seen_runs: set[str] = set()
    wrong = duplicated = 0
    retry_after_missing = 0
    for status, _lat, (i, payload) in runs["raw"]:
        if status == 200:
            result = payload["result"]
            if (
                result["user"] != f"burst-{i}"
                or result["token"] != work({"user": f"burst-{i}"})["token"]
            ):
                wrong += 1
            if result["run"] in seen_runs:
                duplicated += 1
            seen_runs.add(result["run"])
        elif status == 429 and not payload.get("retry_after"):
            retry_after_missing += 1
    return {
        "wrong_results": wrong,
        "duplicated_runs": duplicated,
        "lost": runs["sent"] - runs["ok"] - runs["rejected"],
        "retry_after_missing": retry_after_missing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="5,10,20,40,80")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--systems", default="shoal,ray-serve,process-pool")
    parser.add_argument("--max-queue", type=int, default=50)
    parser.add_argument("--slo", type=float, default=2.0, help="p99 (s) a sustainable rate keeps")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "serve_bench.json"))
    parser.add_argument("--serve-ray", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-process-pool", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_ray:
        return serve_ray(args.serve_ray)
    if args.serve_process_pool:
        return serve_process_pool(args.serve_process_pool)

    rates = [float(r) for r in args.rates.split(",")]
    report: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f} at start",
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python bench/serve_bench.py " + " ".join(sys.argv[1:]),
        "systems": {},
    }
    for name in args.systems.split(","):
        rows = []
        print(f"== {name}", flush=True)
        with system(name, args.max_queue) as url:
            for rate in rates:
                row = asyncio.run(open_loop(url, rate, args.duration, f"{name}-{rate:g}"))
                row.pop("raw")
                rows.append(row)
                print(
                    f"  {rate:6g}/s  ok {row['ok']:5d}  429 {row['rejected']:4d}  err "
                    f"{row['errors']:4d}  thr {row['throughput']:7.1f}/s  p50 "
                    f"{row['p50'] * 1e3:8.1f} ms  p99 {row['p99'] * 1e3:8.1f} ms",
                    flush=True,
                )
            burst = None
            if name == "shoal":
                base = rates[0]
                burst_run = asyncio.run(open_loop(url, base * 10, 5.0, "burst"))
                burst = {
                    "rate": base * 10,
                    "sent": burst_run["sent"],
                    "ok": burst_run["ok"],
                    "rejected": burst_run["rejected"],
                    "errors": burst_run["errors"],
                    "p99": burst_run["p99"],
                    **_check_burst(burst_run),
                }
                print(f"  burst {burst}", flush=True)
        sustainable = [
            r["throughput"]
            for r in rows
            if r["ok"] >= 0.99 * r["sent"] and r["p99"] <= args.slo and r["errors"] == 0
        ]
        report["systems"][name] = {
            "rows": rows,
            "max_sustainable": max(sustainable, default=0.0),
            "burst": burst,
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(markdown(report, args.slo))


def markdown(report: dict[str, Any], slo: float) -> str:
    systems = report["systems"]
    names = list(systems)
    lines = [
        f"Machine: {report['machine']}; Python {report['python']}; {report['date']}.",
        f"Command: `{report['command']}`.",
        "",
        "| offered (req/s) | "
        + " | ".join(f"{n}: thr (req/s) / p50 / p99 (ms) / ok" for n in names)
        + " |",
        "|---|" + "---|" * len(names),
    ]
    rates = [r["offered"] for r in systems[names[0]]["rows"]]
    for i, rate in enumerate(rates):
        cells = []
        for n in names:
            r = systems[n]["rows"][i]
            cells.append(
                f"{r['throughput']:.1f} / {r['p50'] * 1e3:.0f} / {r['p99'] * 1e3:.0f} / "
                f"{r['ok']}/{r['sent']}" + (f" ({r['rejected']} 429)" if r["rejected"] else "")
            )
        lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Max sustainable throughput (ok >= 99%, p99 <= {slo:g} s): "
        + ", ".join(f"{n} {systems[n]['max_sustainable']:.1f} req/s" for n in names)
        + "."
    )
    b = systems.get("shoal", {}).get("burst")
    if b:
        lines.append(
            f"Burst on shoal at {b['rate']:g} req/s for 5 s: {b['ok']} ok, {b['rejected']} "
            f"429, {b['errors']} errors; lost {b['lost']}, duplicated runs "
            f"{b['duplicated_runs']}, wrong results {b['wrong_results']}, 429 without "
            f"Retry-After {b['retry_after_missing']}."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
