"""The seed's auto-scaled sequential workflow: every request is one run holding one instance.

Each request is parsed, checked and "computed" (a few milliseconds of hashing standing in for a
model call); runs queue for instances, and the instance pool grows with the queue up to
``max_instances``. Run ``python examples/api_processor.py`` to feed it a burst of submissions and
watch the pool, or ``shoal run examples/api_processor.py --input '{"user": "ada", "n": 3}'``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from shoal import Context, Runtime, step, workflow


@workflow(
    name="api_processor",
    scaling_policy={
        "mode": "auto",
        "min_instances": 1,
        "max_instances": 20,
        "target_utilization": 0.7,
        "scale_up_threshold": 0.8,
        "scale_down_threshold": 0.3,
        "cooldown_period": 60,
    },
)
class APIProcessor:
    def setup(self) -> None:
        self.salt = hashlib.sha256(b"shoal").digest()  # per-instance state, built once

    @step(name="validate")
    async def validate(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(request, dict) or "user" not in request:
            raise ValueError(f"a request needs a 'user', got {json.dumps(request)}")
        return {"user": str(request["user"]), "n": int(request.get("n", 1))}

    @step(name="process_request")
    async def process(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        digest = self.salt + request["user"].encode()
        for _ in range(20_000 * request["n"]):  # a few ms of real CPU per unit of work
            digest = hashlib.sha256(digest).digest()
        return {"user": request["user"], "token": digest.hex()[:16], "run": ctx.run_id}


async def main() -> None:
    async with Runtime() as rt:
        t0 = time.perf_counter()
        handles = [await rt.submit(APIProcessor, {"user": f"u{i}", "n": 2}) for i in range(60)]
        while not all(h.done for h in handles):
            m = rt.pool("api_processor").metrics
            print(
                f"t={time.perf_counter() - t0:5.2f}s  instances {m.size:>2} "
                f"({m.busy} busy, {m.starting} starting)  queued runs {m.queue_depth:>2}"
            )
            await asyncio.sleep(0.1)
        results = [await h.result() for h in handles]
        print(f"{len(results)} requests in {time.perf_counter() - t0:.2f} s; first: {results[0]}")
        print(rt.pool("api_processor"))


if __name__ == "__main__":
    asyncio.run(main())
