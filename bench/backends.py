"""Warm call round trip and cold start on each backend: local processes, Ray actors, containers.

Run ``.venv/bin/python bench/backends.py [--rounds N]``. For each backend, in alternating rounds:
the cold start of one agent (``AgentPool(min_size=1).start()``: a process spawned, an actor
created, or a container run, then warmed up with no setup) and the round trip of 2,000 warm
no-op calls (p50/p99). Ray's one-off ``ray.init`` is reported apart. Backends that are not
available here (no Ray, no container engine) are skipped with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import _work

from shoal import AgentPool, ProcessBackend

CALLS = 2000


def backends() -> dict[str, Any]:
    found: dict[str, Any] = {"process": ProcessBackend}
    try:
        import ray

        from shoal.backends.ray import RayBackend, init_on_loopback

        t = time.perf_counter()
        init_on_loopback(ray, num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(f"ray.init: {time.perf_counter() - t:.2f} s (once, not counted in cold starts)")
        found["ray"] = lambda: RayBackend(num_cpus=0.1)
    except ImportError as exc:
        print(f"ray: skipped ({exc})")
    if os.path.exists("/run/podman/podman.sock"):
        from shoal.backends.container import ContainerBackend

        found["container"] = lambda: ContainerBackend(
            "shoal-agent:latest", base_url="unix:///run/podman/podman.sock"
        )
    else:
        print("container: skipped (no engine; run scripts/container-setup.sh)")
    return found


async def one_round(make: Any) -> tuple[float, list[float]]:
    pool = AgentPool("bench", min_size=1, max_size=1, backend=make())
    t = time.perf_counter()
    await pool.start()
    cold = time.perf_counter() - t
    try:
        for _ in range(200):
            await pool.run(_work.noop)
        samples = []
        for _ in range(CALLS):
            t = time.perf_counter()
            await pool.run(_work.noop)
            samples.append(time.perf_counter() - t)
    finally:
        await pool.aclose()
    return cold, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    found = backends()
    colds: dict[str, list[float]] = {n: [] for n in found}
    warm: dict[str, list[float]] = {n: [] for n in found}
    names = list(found)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            cold, samples = asyncio.run(one_round(found[name]))
            colds[name].append(cold)
            warm[name].extend(samples)
    print(
        f"\n{'backend':<10} {'cold start ms (median)':>22} {'warm p50 µs':>12} "
        f"{'warm p99 µs':>12} {'cold / warm':>12}"
    )
    for name in names:
        cold = statistics.median(colds[name])
        ordered = sorted(warm[name])
        p50 = ordered[len(ordered) // 2]
        p99 = ordered[int(len(ordered) * 0.99)]
        print(
            f"{name:<10} {cold * 1e3:>22.1f} {p50 * 1e6:>12.1f} {p99 * 1e6:>12.1f} "
            f"{cold / p50:>11,.0f}x"
        )
    if "ray" in found:
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
