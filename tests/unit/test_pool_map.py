"""AgentPool.map: items in order, in chunks of one call each, the first error raised."""

from __future__ import annotations

import pytest

from shoal import AgentPool, FakeBackend
from shoal.clock import run_virtual
from shoal.errors import ConfigError


def _double(x: int) -> int:
    return 2 * x


def _fail_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError("seven")
    return x


@pytest.mark.parametrize("chunksize", [None, 1, 3, 100])
def test_map_returns_every_result_in_input_order(chunksize: int | None) -> None:
    backend = FakeBackend()

    async def main() -> list[int]:
        async with AgentPool("m", min_size=2, max_size=2, backend=backend) as pool:
            return await pool.map(_double, range(25), chunksize=chunksize)

    assert run_virtual(main()) == [2 * x for x in range(25)]
    calls = sum(backend.calls_by_agent.values())
    # by default about four chunks per agent: 25 items on 2 agents go 4 at a time
    assert calls == {None: 7, 1: 25, 3: 9, 100: 1}[chunksize]


def test_map_raises_the_first_error_of_fn() -> None:
    async def main() -> None:
        async with AgentPool("m", min_size=1, max_size=1, backend=FakeBackend()) as pool:
            await pool.map(_fail_on_seven, range(10), chunksize=4)

    with pytest.raises(ValueError, match="seven"):
        run_virtual(main())


def test_map_of_nothing_is_empty_and_a_bad_chunksize_is_refused() -> None:
    async def main() -> list[int]:
        async with AgentPool("m", min_size=1, max_size=1, backend=FakeBackend()) as pool:
            with pytest.raises(ConfigError, match="chunksize"):
                await pool.map(_double, [1], chunksize=0)
            return await pool.map(_double, [])

    assert run_virtual(main()) == []
