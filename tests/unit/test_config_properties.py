"""Property-based tests over the configuration models: any input either validates into a
consistent object or fails with a ConfigError that names the offending key."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import AgentPool, ConfigError, FakeBackend
from shoal.config import PoolConfig
from shoal.scaling import parse_scaling_policy
from shoal.scaling.config import ScalingPolicyConfig

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=50),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
)
POOL_KEYS = sorted(set(PoolConfig.model_fields) - {"name", "setup"})
POLICY_KEYS = [*sorted(ScalingPolicyConfig.model_fields), "min", "max"]
keys = st.one_of(st.sampled_from(POOL_KEYS), st.text(min_size=1, max_size=10))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=4))
def test_pool_config_validates_or_names_the_key(options: dict[str, Any]) -> None:
    try:
        pool = AgentPool.from_config("p", options, backend=FakeBackend())
    except ConfigError as exc:
        text = str(exc)
        assert text.startswith("pool 'p' pool_config:")
        assert any(repr(k) in text or f"{k}=" in text for k in options) or "min_size" in text
    else:
        cfg = pool.config
        assert 0 <= cfg.min_size <= cfg.max_size
        assert cfg.idle_timeout > 0


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(POLICY_KEYS), st.text(max_size=10)), values, max_size=4
    )
)
def test_scaling_policy_validates_or_names_the_key(policy: dict[str, Any]) -> None:
    try:
        cfg = parse_scaling_policy("workflow 'w' scaling_policy", policy)
    except ConfigError as exc:
        text = str(exc)
        assert text.startswith("workflow 'w' scaling_policy:")
        named = [k for k in policy if repr(k) in text or f"{k}=" in text]
        named += [
            k for k in ("min_instances", "max_instances", "scale_down_threshold") if k in text
        ]
        assert named, text
    else:
        assert 0 <= cfg.min_instances <= cfg.max_instances
        assert cfg.scale_down_threshold < cfg.scale_up_threshold
        assert 0 < cfg.target_utilization <= 1
