"""The seed's auto-scaled sequential workflow: every request is one run holding one instance.

Each request is parsed, checked and "computed" (a few milliseconds of hashing standing in for a
model call); runs queue for instances. The seed's scaling policy drives the instance pool: it
grows at once under a burst and shrinks back to one instance a minute (``cooldown_period``)
after the burst ends. ``python examples/api_processor.py [N]`` feeds it a burst of N
submissions and prints every change of size with its reason (it takes about 90 s);
``shoal run examples/api_processor.py --input '{"user": "ada", "n": 3}'`` runs one request.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import sys
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


async def main(requests: int = 60) -> None:
    """Feed a burst of submissions, then watch the instance pool grow and shrink back."""
    async with Runtime() as rt:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        handles = [
            await rt.submit(APIProcessor, {"user": f"u{i}", "n": 2}) for i in range(requests)
        ]
        pool = rt.pool("api_processor")
        needed = min(requests, pool.max_size)
        enough_at = None
        seen = 0
        while pool.size > 1 or pool.target_size > 1 or not all(h.done for h in handles):
            m = pool.metrics
            if enough_at is None and m.size - m.starting >= needed:
                enough_at = loop.time() - t0
            for e in list(pool.events)[seen:]:
                print(
                    f"  t={e.time - t0:6.2f}s  {e.kind:<6} {e.from_size:>2} -> {e.to_size:<2} "
                    f"{e.agent_id:<18} {e.reason[:110]}"
                )
            seen = len(pool.events)
            await asyncio.sleep(0.05)
        results = [await h.result() for h in handles]
        scale = [e for e in pool.events if e.kind == "scale"]
        signs = [1 if e.to_size > e.from_size else -1 for e in scale]
        reversals = sum(1 for a, b in itertools.pairwise(signs) if a != b)
        peak = max([e.to_size for e in pool.events] or [1])
        print(f"\n{len(results)} requests; first result: {results[0]}")
        print(f"burst to {needed} warm instances: {enough_at:.2f} s")
        print(
            f"peak size {peak}; back to {pool.size} after {loop.time() - t0:.0f} s; "
            f"{len(scale)} scaling decisions, {reversals} direction reversals"
        )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 60))
