"""What the predictor learnt survives a restart: the state file of a pool's autoscaler."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest

from shoal import AgentPool, FakeBackend
from shoal.errors import ConfigError
from shoal.scaling import AutoScaler, build_policy, learned, parse_scaling_policy
from shoal.scaling.keepwarm import KeepWarmState
from shoal.scaling.predictive import find_predict_state


def bursty(i: int, rng: random.Random) -> float:
    return max(0.0, rng.gauss(400 if i % 30 >= 27 else 50, 10)) / 10


def test_export_and_restore_give_back_the_same_forecaster() -> None:
    cfg = parse_scaling_policy("t", {"predictor": "ml-based", "min": 0, "max": 50})
    policy = build_policy(cfg)
    inner = policy.inner.inner  # guards -> keep-warm -> predictor
    fc = inner.forecaster
    rng = random.Random(1)
    state = policy.initial_state()
    pstate = find_predict_state(state)
    assert pstate is not None
    fstate = pstate.forecast
    for i in range(400):
        fstate = fc.update(fstate, bursty(i, rng))
    kw = state.inner
    assert isinstance(kw, KeepWarmState)
    learnt = state.__class__(
        kw.__class__(pstate.__class__(pstate.inner, fstate), kw.gaps.add(240).add(250))
    )
    data = learned.export(learnt)
    assert data is not None
    back = learned.restore(policy.initial_state(), data)
    got = find_predict_state(back)
    assert got is not None
    assert got.forecast.period == fstate.period == 30
    assert np.array_equal(got.forecast.history, fstate.history)
    assert back.inner.gaps == learnt.inner.gaps
    # It goes on exactly as the original would have.
    a, b = fstate, got.forecast
    for i in range(400, 460):
        r = bursty(i, rng)
        a, b = fc.update(a, r), fc.update(b, r)
        assert fc.forecast(a, 2) == fc.forecast(b, 2)


def test_a_state_without_a_predictor_has_nothing_to_keep() -> None:
    policy = build_policy(parse_scaling_policy("t", {"max": 5, "predictor": "none"}))
    assert learned.export(policy.initial_state()) is None


def test_state_file_needs_a_predictor() -> None:
    with pytest.raises(ConfigError, match="no predictor is set"):
        parse_scaling_policy("t", {"state_file": "x.json", "predictor": "none"})
    with pytest.raises(ConfigError, match="no predictor is set"):
        parse_scaling_policy("t", {"state_file": "x.json", "mode": "aggressive"})
    parse_scaling_policy("t", {"state_file": "x.json"})  # auto's default predictor keeps it


def test_a_damaged_state_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "api.json"
    path.write_text('{"version": 1, "forecast": {"bogus": 1}}')
    policy = build_policy(parse_scaling_policy("t", {"predictor": "ml-based"}))
    with pytest.raises(ConfigError, match=r"api\.json.*delete it to start learning afresh"):
        learned.load(path, policy.initial_state())


async def drive(p: AgentPool, seconds: int) -> None:
    """5/s with 40/s for 30 s of every 300 s, each call 1 s."""
    loop = asyncio.get_running_loop()
    calls = []
    start = loop.time()
    while loop.time() - start < seconds:
        t = loop.time() - start
        rate = 40 if t % 300 >= 270 else 5
        calls.append(asyncio.ensure_future(p.run(asyncio.sleep, 1.0, "ok")))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*calls)


async def test_the_autoscaler_keeps_its_learning_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "api.json"
    cfg = {"predictor": "seasonal", "min": 1, "max": 60, "state_file": str(path)}
    backend = FakeBackend(start_time=2.0)
    async with AgentPool("api", backend=backend, min_size=1, max_size=60) as p:
        scaler = AutoScaler(p, cfg)
        async with scaler:
            await drive(p, 1200)
        first = find_predict_state(scaler.state)
        assert first is not None and first.forecast.period == 30  # 300 s in 10-s bins
        assert path.exists()
        again = AutoScaler(p, cfg)
        assert find_predict_state(again.state).forecast.bins == 0  # type: ignore[union-attr]
        async with again:
            await asyncio.sleep(1)
            got = find_predict_state(again.state)
            assert got is not None
            assert got.forecast.bins >= first.forecast.bins
            assert got.forecast.period == 30  # known at once, not after two more periods


def test_a_state_learnt_by_a_smaller_ensemble_goes_on_learning() -> None:
    """A state file saved before the ensemble gained members (six scores, no Holt or burst
    fields) loads, and the forecaster goes on from its history."""
    cfg = parse_scaling_policy("t", {"predictor": "ml-based", "max": 50})
    policy = build_policy(cfg)
    pstate = find_predict_state(policy.initial_state())
    assert pstate is not None
    fc = policy.inner.forecaster
    rng = random.Random(2)
    fstate = pstate.forecast
    for i in range(200):
        fstate = fc.update(fstate, bursty(i, rng))
    start = policy.initial_state()
    data = learned.export(
        dataclasses.replace(start, inner=dataclasses.replace(pstate, forecast=fstate))
    )
    assert data is not None
    old = data["forecast"]
    for name in [k for k in old if k.startswith(("holt_", "burst_")) or k in ("surprised", "fell")]:
        del old[name]
    old["errors"] = old["errors"][:6]
    old["pending"] = [p[:6] for p in old["pending"]]
    back = find_predict_state(learned.restore(policy.initial_state(), data))
    assert back is not None
    state = back.forecast
    for i in range(200, 260):
        state = fc.update(state, bursty(i, rng))
    got = fc.forecast(state, 2)
    assert got.period_s == 300.0 and got.mase is not None
