"""The seed's ``PoolManager``: pools registered by name, looked up, and closed together."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from shoal.errors import ConfigError
from shoal.pool.metrics import PoolMetrics
from shoal.pool.pool import AgentPool


class PoolManager:
    """Holds the pools of one process by name. ``async with`` closes them all on exit."""

    def __init__(self) -> None:
        self._pools: dict[str, AgentPool] = {}

    def register_pool(self, pool: AgentPool) -> AgentPool:
        """Add ``pool`` (the seed's ``RegisterPool``); its name must be new here."""
        if pool.name in self._pools and self._pools[pool.name] is not pool:
            raise ConfigError(
                f"a pool named {pool.name!r} is already registered; pool names must be unique"
            )
        self._pools[pool.name] = pool
        return pool

    def unregister_pool(self, name: str) -> AgentPool:
        """Forget a pool (it is not closed) and return it."""
        return self._pools.pop(self._known(name))

    def get(self, name: str) -> AgentPool:
        """The pool named ``name``; a ``KeyError`` lists the names there are."""
        return self._pools[self._known(name)]

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        return name in self._pools

    def __iter__(self) -> Iterator[AgentPool]:
        return iter(list(self._pools.values()))

    def __len__(self) -> int:
        return len(self._pools)

    @property
    def names(self) -> list[str]:
        return list(self._pools)

    def snapshot(self) -> dict[str, PoolMetrics]:
        """Every pool's metrics, by name."""
        return {name: pool.snapshot() for name, pool in self._pools.items()}

    async def start_all(self) -> None:
        """Start every pool that is not started yet, concurrently."""
        await asyncio.gather(*(p.start() for p in self._pools.values() if not p.started))

    async def aclose(self) -> None:
        """Close every pool concurrently."""
        await asyncio.gather(*(p.aclose() for p in self._pools.values()))

    async def __aenter__(self) -> PoolManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _known(self, name: str) -> str:
        if name not in self._pools:
            known = ", ".join(repr(n) for n in self._pools) or "none"
            raise KeyError(f"no pool named {name!r}; registered pools: {known}")
        return name

    def __repr__(self) -> str:
        return f"<PoolManager {len(self._pools)} pools: {', '.join(self._pools)}>"
