"""``mode: auto`` forecasts with ``predictor: ml-based`` by default, so a scale-to-zero auto
pool keeps warm by default. On the real autoscaler and pool (fake backend, virtual time): a
pool that never sees a call never starts an agent (no forecast from nothing), one that saw a
few calls gives its agents back within the keep-warm's fallback keep-alive rather than holding
them forever, and ``predictor: none`` really turns the forecast and the keep-warm off."""

from __future__ import annotations

import asyncio

import pytest

from shoal import AgentPool, FakeBackend
from shoal.errors import ConfigError
from shoal.scaling import AutoScaler, build_policy, parse_scaling_policy
from shoal.scaling.keepwarm import KeepWarm
from shoal.scaling.predictive import PredictivePolicy

HOUR = 3600.0


def scale_to_zero(backend: FakeBackend) -> AgentPool:
    return AgentPool("api", backend=backend, min_size=0, max_size=10, idle_timeout=3 * HOUR)


async def test_an_auto_pool_with_no_traffic_starts_nothing() -> None:
    backend = FakeBackend(start_time=2.0)
    async with scale_to_zero(backend) as p, AutoScaler(p, {"mode": "auto", "min": 0}) as s:
        assert s.config is not None and s.config.predictor_name == "ml-based"
        sizes = []
        for _ in range(24):
            await asyncio.sleep(HOUR / 4)
            sizes.append((p.target_size, p.snapshot().size))
    assert set(sizes) == {(0, 0)}, sizes
    assert not backend.agents, "an agent was started for a pool nobody called"


async def test_an_auto_pool_gives_its_agents_back_after_the_traffic_stops() -> None:
    backend = FakeBackend(start_time=2.0)
    async with scale_to_zero(backend) as p, AutoScaler(p, {"mode": "auto", "min": 0}):
        await asyncio.gather(*(p.run(asyncio.sleep, 1.0, i) for i in range(20)))
        assert p.snapshot().size >= 1
        await asyncio.sleep(2 * HOUR)  # far beyond any keep-alive the keep-warm falls back to
        m = p.snapshot()
        assert (p.target_size, m.size, m.starting) == (0, 0, 0), m


def test_predictor_none_turns_the_forecast_and_keep_warm_off() -> None:
    chain = build_policy(parse_scaling_policy("t", {"mode": "auto", "min": 0})).inner
    assert isinstance(chain, KeepWarm) and isinstance(chain.inner, PredictivePolicy)
    off = build_policy(parse_scaling_policy("t", {"mode": "auto", "min": 0, "predictor": "none"}))
    layers, policy = [], off.inner
    while policy is not None:
        layers.append(type(policy).__name__)
        policy = getattr(policy, "inner", None)
    assert not {"KeepWarm", "PredictivePolicy"} & set(layers), layers
    with pytest.raises(ConfigError, match="state_file") as err:
        parse_scaling_policy("t", {"mode": "auto", "predictor": "none", "state_file": "x.json"})
    assert "drop state_file" in str(err.value)
