"""The seed's three-stage data pipeline, doing real work on warm agents.

1. ``fetch_data_list`` (auto-scaled, 1-5 agents) builds the batch: one record per sensor, with a
   seed for its readings.
2. ``process_item`` (parallel, a pool of 10 agents, at most 100 in flight) simulates each sensor's
   day of readings with numpy — loaded once per agent in ``setup`` — and summarises it.
3. ``aggregate`` (one call) combines the summaries into a report.

Run it with ``shoal run examples/data_pipeline.py --input '{"n": 200}'`` or ``python
examples/data_pipeline.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shoal import Context, Runtime, step, workflow


def make_batch(np: Any, request: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per sensor: its name, the seed of its readings and its drift."""
    n = int(request.get("n", 100))
    rng = np.random.default_rng(int(request.get("seed", 7)))
    seeds, drifts = rng.integers(0, 2**31, n), rng.normal(0, 0.01, n)
    return [
        {"sensor": f"s{i:04d}", "seed": int(s), "drift": float(d)}
        for i, (s, d) in enumerate(zip(seeds, drifts, strict=True))
    ]


def summarise_sensor(np: Any, item: dict[str, Any]) -> dict[str, Any]:
    """A day of one-per-second readings for one sensor, summarised."""
    rng = np.random.default_rng(item["seed"])
    readings = np.cumsum(rng.normal(item["drift"], 1.0, 86_400))
    hourly = readings.reshape(24, 3600).mean(axis=1)
    return {
        "sensor": item["sensor"],
        "mean": float(readings.mean()),
        "p99": float(np.percentile(readings, 99)),
        "peak_hour": int(hourly.argmax()),
    }


@workflow(name="data_pipeline")
class DataPipeline:
    def setup(self) -> None:
        # Runs once per agent as it warms up; every step on that agent reuses it.
        import numpy

        self.np = numpy

    @step(scaling_policy={"min": 1, "max": 5})
    async def fetch_data_list(self, ctx: Context, request: dict[str, Any]) -> list[dict[str, Any]]:
        return make_batch(self.np, request)

    @step(parallel=True, pool_size=10, max_parallel=100)
    async def process_item(self, ctx: Context, item: dict[str, Any]) -> dict[str, Any]:
        return summarise_sensor(self.np, item)

    @step()
    async def aggregate(self, ctx: Context, results: list[dict[str, Any]]) -> dict[str, Any]:
        means = self.np.array([r["mean"] for r in results])
        hottest = max(results, key=lambda r: r["p99"])
        return {
            "sensors": len(results),
            "mean_of_means": round(float(means.mean()), 3),
            "hottest_sensor": hottest["sensor"],
            "hottest_p99": round(hottest["p99"], 3),
            "busiest_peak_hour": int(self.np.bincount([r["peak_hour"] for r in results]).argmax()),
        }


async def main() -> None:
    async with Runtime() as rt:
        report = await rt.run(DataPipeline, {"n": 200})
        print(report)
        for pool in rt.pools:
            print(pool)


if __name__ == "__main__":
    asyncio.run(main())
