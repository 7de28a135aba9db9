"""``make demo``: the data pipeline on warm agents, then the same step on cold ones.

1. The seed's three-stage pipeline over 200 sensors, pools starting cold.
2. The same run again on the same runtime: every agent is warm now.
3. The parallel step with ``execution_mode="dedicated"`` — a fresh agent started for each item
   and stopped after it — over 40 sensors, to show what a warm agent saves per item.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from data_pipeline import DataPipeline, make_batch, summarise_sensor

from shoal import Context, Runtime, step, workflow
from shoal.cli import run_with_progress


@workflow(name="data_pipeline_dedicated")
class DedicatedPipeline:
    def setup(self) -> None:
        import numpy

        self.np = numpy

    @step(execution_mode="inline")
    async def fetch_data_list(self, ctx: Context, request: dict[str, Any]) -> list[dict[str, Any]]:
        return make_batch(self.np, request)

    @step(parallel=True, execution_mode="dedicated", max_parallel=2)
    async def process_item(self, ctx: Context, item: dict[str, Any]) -> dict[str, Any]:
        return summarise_sensor(self.np, item)


async def main() -> None:
    live = sys.stdout.isatty()
    per_item: dict[str, float] = {}
    async with Runtime() as rt:
        for title, target, n in [
            ("1. data pipeline, 200 sensors — pools start cold", DataPipeline, 200),
            ("2. the same again — every agent is warm now", DataPipeline, 200),
            (
                "3. process_item on dedicated agents (one fresh agent per item), 40 sensors",
                DedicatedPipeline,
                40,
            ),
        ]:
            print(f"\n{title}")
            handle, result, error = await run_with_progress(rt, target, {"n": n}, live=live)
            if error is not None:
                raise error
            step_s = handle.progress.step("process_item").seconds or 0.0
            per_item[title[:2]] = step_s / n
            print(
                f"   wall {handle.wall_s:.2f} s; process_item {step_s:.2f} s "
                f"= {step_s / n * 1e3:.1f} ms per item"
            )
            if isinstance(result, dict) and "sensors" in result:
                print(f"   report: {result}")
    warm, dedicated = per_item["2."], per_item["3."]
    print(
        f"\nper item: {warm * 1e3:.1f} ms on warm pooled agents vs {dedicated * 1e3:.1f} ms on "
        f"dedicated ones — warm agents are {dedicated / warm:.0f}x faster for this step."
    )


if __name__ == "__main__":
    asyncio.run(main())
