"""PoolManager registers pools by name, looks them up and closes them together."""

from __future__ import annotations

import pytest

from shoal import AgentPool, ConfigError, FakeBackend, PoolManager


async def test_register_lookup_and_close_all() -> None:
    backend = FakeBackend()
    async with PoolManager() as manager:
        a = manager.register_pool(AgentPool("mapreduce-workers", min_size=2, backend=backend))
        b = manager.register_pool(AgentPool("api-processors", min_size=1, backend=backend))
        await manager.start_all()
        assert manager["mapreduce-workers"] is a and manager.get("api-processors") is b
        assert manager.names == ["mapreduce-workers", "api-processors"]
        assert {n: m.size for n, m in manager.snapshot().items()} == {
            "mapreduce-workers": 2,
            "api-processors": 1,
        }
        with pytest.raises(KeyError, match="registered pools: 'mapreduce-workers'"):
            manager.get("nope")
        with pytest.raises(ConfigError, match="already registered"):
            manager.register_pool(AgentPool("api-processors", backend=backend))
    assert a.closed and b.closed and backend.alive == []
