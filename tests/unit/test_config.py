"""Configuration is validated at the edge with messages that name the key and the fix."""

from __future__ import annotations

import pytest

from shoal import AgentPool, ConfigError, FakeBackend, PoolConfig


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_size": 5, "max_size": 2}, "min_size=5 is greater than max_size=2"),
        ({"min_size": -1}, "min_size=-1"),
        ({"max_size": 0}, "max_size=0"),
        ({"idle_timeout": 0}, "idle_timeout=0"),
        ({"idle_timeout": "soon"}, "idle_timeout='soon'"),
        ({"min_size": "2"}, "min_size='2'"),
        ({"assignment": "random"}, "assignment='random'"),
        ({"setup": 3}, "setup=3"),
        ({"max_queue": -1}, "max_queue=-1"),
    ],
)
def test_bad_values_name_the_key(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="pool 'p'") as info:
        AgentPool("p", backend=FakeBackend(), **options)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_unknown_key_in_pool_config_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError) as info:
        AgentPool.from_config("p", {"min_size": 1, "max_sise": 3}, backend=FakeBackend())
    text = str(info.value)
    assert "unknown key 'max_sise'" in text and "did you mean 'max_size'" in text


def test_seed_pool_config_keys_are_accepted() -> None:
    pool = AgentPool.from_config(
        "mapreduce-workers",
        {"min_size": 2, "max_size": 10, "idle_timeout": 300},
        backend=FakeBackend(),
    )
    assert (pool.min_size, pool.max_size, pool.config.idle_timeout) == (2, 10, 300.0)


def test_config_is_frozen() -> None:
    config = PoolConfig(name="p")
    with pytest.raises(ValueError, match="frozen"):
        config.min_size = 3  # type: ignore[misc]


def test_pool_config_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        AgentPool.from_config("p", [("min_size", 1)])  # type: ignore[arg-type]
