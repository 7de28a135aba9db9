"""shoal's Prometheus collectors in a program that embeds a runtime, without ``shoal serve``."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shoal import Runtime
from shoal.serve import register, start_metrics_server
from tests.serve.apps import Echo


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


@pytest.mark.real_time
async def test_register_with_your_own_registry(no_leaked_children: None) -> None:
    registry = CollectorRegistry()
    async with Runtime() as rt:
        register(rt, registry)
        for i in range(3):
            await rt.run(Echo, {"value": i})
        samples = _samples(generate_latest(registry).decode())
    assert samples[("shoal_runs_total", (("status", "succeeded"), ("workflow", "echo")))] == 3
    assert samples[("shoal_calls_total", (("outcome", "ok"), ("pool", "echo")))] >= 3
    assert samples[("shoal_pool_target", (("pool", "echo"),))] >= 1
    assert samples[("shoal_scaling_events_total", (("kind", "start"), ("pool", "echo")))] >= 1
    # Spend at the default price ($0.10 per agent-hour): every agent counts while it lives.
    per_hour = samples[("shoal_pool_cost_dollars_per_hour", (("pool", "echo"),))]
    assert per_hour > 0 and per_hour == pytest.approx(round(per_hour / 0.10) * 0.10)
    assert samples[("shoal_pool_cost_dollars_total", (("pool", "echo"),))] > 0
    assert samples[("shoal_pool_preemptions_total", (("pool", "echo"),))] == 0
    assert samples[("shoal_pool_requeued_calls_total", (("pool", "echo"),))] == 0


@pytest.mark.real_time
async def test_metrics_server_on_its_own_port(no_leaked_children: None) -> None:
    async with Runtime() as rt:
        await rt.run(Echo, {"value": 1})
        server, port = start_metrics_server(rt, port=0)
        try:
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=60)
        finally:
            await asyncio.to_thread(server.shutdown)
            server.server_close()
    assert r.status_code == 200
    assert _samples(r.text)[("shoal_pool_agents", (("pool", "echo"), ("state", "idle")))] >= 1
