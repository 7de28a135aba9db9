"""``shoal.__all__`` is honest: every name exists, and every public name is listed."""

from __future__ import annotations

import types

import shoal


def test_all_names_exist() -> None:
    missing = [name for name in shoal.__all__ if not hasattr(shoal, name)]
    assert missing == []


def test_every_public_attribute_is_in_all() -> None:
    public = {
        name
        for name, value in vars(shoal).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(shoal.__all__) == set()


def test_seed_names_are_kept() -> None:
    for name in ("AgentPool", "PooledAgent", "PoolMetrics", "PoolManager"):
        assert name in shoal.__all__
    fields = shoal.PoolMetrics.__dataclass_fields__
    for field in (
        "requests_total",
        "requests_active",
        "queue_depth",
        "avg_wait_time",
        "avg_execution_time",
        "utilization_rate",
    ):
        assert field in fields


def test_lazy_names_match_all() -> None:
    eager = ["__version__", "mapreduce", "step", "workflow"]
    assert sorted([*shoal._MODULE_OF, *eager]) == sorted(shoal.__all__)


def test_decorators_are_not_shadowed_by_their_subpackage() -> None:
    import shoal.workflow.runner

    assert callable(shoal.workflow) and callable(shoal.step) and callable(shoal.mapreduce)


def test_the_pool_subpackage_is_the_synchronous_pool_too() -> None:
    import shoal.pool.state  # importing submodules must not make shoal.pool uncallable

    assert callable(shoal.pool)
    from shoal.pool import AgentPool

    assert AgentPool is shoal.AgentPool
