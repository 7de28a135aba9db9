"""Workflows the serve tests put behind ``shoal serve``."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from shoal import Context, step, workflow


@workflow(
    name="echo",
    scaling_policy={
        "mode": "aggressive",
        "min_instances": 1,
        "max_instances": 6,
        "cooldown_period": 30,
        "interval": 0.25,
    },
)
class Echo:
    """Returns its input after ``delay`` seconds; refuses an input with ``"bad": true``."""

    @step()
    async def check(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("bad"):
            raise ValueError("this request is bad on purpose")
        return request

    @step()
    async def reply(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(float(request.get("delay", 0)))
        return {"echo": request.get("value"), "run": ctx.run_id}


@workflow(name="gated", pool_config={"min_size": 1, "max_size": 1, "max_queue": 2})
class Gated:
    """Holds its agent until the file named by ``gate`` exists: runs pile up deterministically."""

    @step()
    async def wait_for_gate(self, ctx: Context, request: dict[str, Any]) -> str:
        # The gate is another process's file: polling it is the only way to see it appear.
        while not os.path.exists(request["gate"]):  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(0.01)
        return str(request.get("value"))


@workflow(name="odd", pool_config={"min_size": 0, "max_size": 1})
class Odd:
    """Returns what JSON cannot hold as it is: keys that are not strings, a set."""

    @step()
    async def make(self, ctx: Context, request: dict[str, Any]) -> Any:
        if request.get("kind") == "keys":
            return {(1, 2): "pair", "nan": float("nan")}
        return {"set": {3}}
