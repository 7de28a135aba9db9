"""The seed's ``scaling_policy`` dictionary, validated into a frozen object.

Every key of the seed keeps its name; ``min``/``max`` are accepted as short forms of
``min_instances``/``max_instances``. ``mode`` picks a preset that fills the keys the user did not
give (see :data:`PRESETS`); keys given explicitly always win.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shoal.config import default_max_size, validate
from shoal.errors import ConfigError
from shoal.pool.placement import DEFAULT_PRICE_PER_HOUR as _DEFAULT_PRICE
from shoal.scaling.registry import COMMON_KEYS, POLICIES, POLICY_NAMES

Mode = Literal["auto", "aggressive", "reactive", "conservative", "fixed"]
Predictor = Literal["none", "seasonal", "linear", "ml-based"]

#: The price of one agent-hour, in $, that ``cost_threshold`` divides when the pool has no
#: ``price_per_hour`` of its own: about one vCPU-hour on demand at the large clouds, so
#: ``cost_threshold: 100`` buys 1,000 agents. (Defined beside the placements that price agents.)
DEFAULT_PRICE_PER_HOUR = _DEFAULT_PRICE
#: ``idle_time`` of the ``rule`` policy when none is given (the seed's "idle_time > 5min").
RULE_IDLE_TIME = 300.0

#: What each mode fills in. ``auto`` is the base: target tracking at 70% utilization, checked
#: every second, growing as fast as demand needs and shrinking only to the highest size
#: recommended over the last ``cooldown_period`` (60 s).
PRESETS: dict[str, dict[str, Any]] = {
    "auto": {},
    # The seed's "High-Volume API Processing": add 5 at a time, remove 1; keep more headroom.
    "aggressive": {
        "scale_up_rate": 5,
        "scale_down_rate": 1,
        "target_utilization": 0.6,
        "cooldown_period": 30.0,
    },
    # The seed's "Bursty Batch Processing": may scale to zero, bursts jump, idle goes fast.
    "reactive": {
        "min_instances": 0,
        "burst_capacity": 20,
        "idle_terminate": 120.0,
        "cooldown_period": 30.0,
    },
    # The seed's "Cost-Optimized Pipeline": small steps, long cooldowns, run hotter.
    "conservative": {
        "scale_up_rate": 1,
        "scale_down_rate": 1,
        "cooldown_period": 300.0,
        "target_utilization": 0.8,
        "scale_up_threshold": 0.9,
        "interval": 15.0,
    },
    # A fixed pool of min_instances agents: no autoscaling.
    "fixed": {"policy": "fixed"},
}

_SHORT = {"min": "min_instances", "max": "max_instances"}


class ScalingPolicyConfig(BaseModel):
    """How a pool of instances or agents may grow and shrink. Durations are float seconds.

    The seed's keys: ``mode``, ``min_instances``, ``max_instances``, ``target_utilization``,
    ``scale_up_threshold``, ``scale_down_threshold``, ``cooldown_period``, ``scale_up_rate``,
    ``scale_down_rate``, ``predictor``, ``burst_capacity``, ``idle_terminate``,
    ``cost_threshold``, ``prefer_spot``; and its metric rules: ``queue_depth`` (callers waiting
    that count as a burst), ``sla`` (a response-time bound, seconds) and ``idle_time`` (how long
    the seed's rule waits at low utilization before scaling down). shoal adds ``policy`` (which
    policy decides), ``interval`` (how often it is asked), and for the ``predictor``:
    ``forecast_only`` (log what the forecast would do, change nothing), ``cold_start`` (the
    agents' start time the forecast must look ahead by; measured by the pool when not given) and
    ``state_file`` (where the autoscaler keeps what the predictor learnt across restarts; see
    :mod:`shoal.scaling.learned`). ``mode: auto`` forecasts with ``predictor: ml-based``
    unless told otherwise (``predictor: none`` turns it off); the other modes have none.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = "auto"
    policy: str | None = None
    min_instances: int = Field(default=1, ge=0, strict=True)
    max_instances: int = Field(default_factory=default_max_size, ge=1, strict=True)
    target_utilization: float = Field(default=0.7, gt=0, le=1)
    scale_up_threshold: float = Field(default=0.8, gt=0, le=1)
    scale_down_threshold: float = Field(default=0.3, ge=0, lt=1)
    cooldown_period: float = Field(default=60.0, ge=0)
    scale_up_rate: int | None = Field(default=None, ge=1, strict=True)
    scale_down_rate: int | None = Field(default=None, ge=1, strict=True)
    predictor: Predictor | None = None
    forecast_only: bool = Field(default=False, strict=True)
    cold_start: float | None = Field(default=None, gt=0)
    state_file: str | None = Field(default=None, min_length=1)
    burst_capacity: int | None = Field(default=None, ge=0, strict=True)
    idle_terminate: float | None = Field(default=None, gt=0)
    cost_threshold: float | None = Field(default=None, gt=0)
    prefer_spot: bool = Field(default=False, strict=True)
    # With prefer_spot: about this fraction of the agents above on_demand_base run on spot,
    # and the first on_demand_base (default: min_instances) on demand.
    spot_fraction: float = Field(default=0.8, ge=0, le=1)
    on_demand_base: int | None = Field(default=None, ge=0, strict=True)
    queue_depth: int = Field(default=5, ge=1, strict=True)
    sla: float | None = Field(default=None, gt=0)
    idle_time: float | None = Field(default=None, ge=0)
    interval: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances={self.min_instances} is greater than "
                f"max_instances={self.max_instances}; make max_instances at least min_instances"
            )
        if self.scale_down_threshold >= self.scale_up_threshold:
            raise ValueError(
                f"scale_down_threshold={self.scale_down_threshold} must be below "
                f"scale_up_threshold={self.scale_up_threshold}, or the pool would flap"
            )
        if self.state_file is not None and self.predictor_name == "none":
            raise ValueError(
                f"state_file={self.state_file!r} keeps what a predictor learns, but no predictor "
                "is set; add a predictor (e.g. 'ml-based') or drop state_file"
            )
        if self.policy is not None and self.policy not in POLICY_NAMES:
            raise ValueError(
                f"policy={self.policy!r} is not a known policy; known: {', '.join(POLICY_NAMES)}"
            )
        return self

    @property
    def policy_name(self) -> str:
        return self.policy or ("fixed" if self.mode == "fixed" else "target")

    @property
    def predictor_name(self) -> str:
        """The predictor in use. When the key is absent: ``ml-based`` under ``mode: auto``
        with its own policy (the default), ``none`` under every other mode or policy."""
        if self.predictor is not None:
            return self.predictor
        return "ml-based" if self.mode == "auto" and self.policy is None else "none"

    @property
    def rule_idle_time(self) -> float:
        """How long the ``rule`` policy waits at low utilization before each scale-down."""
        return RULE_IDLE_TIME if self.idle_time is None else self.idle_time

    def given(self, key: str) -> bool:
        """Whether ``key`` was set by the user or by the mode's preset (not a plain default)."""
        return key in self.model_fields_set

    def unimplemented(self) -> list[str]:
        """Keys that are accepted and validated but do not change behaviour yet."""
        notes = []
        if self.prefer_spot:
            notes.append(
                "prefer_spot=True has no effect on this pool (no spot placement; see "
                "pool_config placements)"
            )
        return notes

    def spot_keys(self) -> tuple[bool, float, int]:
        """``prefer_spot``, ``spot_fraction`` and ``on_demand_base`` (``min_instances`` when
        not given), as :meth:`AgentPool.set_spot` takes them."""
        base = self.min_instances if self.on_demand_base is None else self.on_demand_base
        return self.prefer_spot, self.spot_fraction, base


def parse_scaling_policy(where: str, policy: Mapping[str, Any]) -> ScalingPolicyConfig:
    """Validate a seed-style ``scaling_policy`` dict (short ``min``/``max`` allowed)."""
    if not isinstance(policy, Mapping):
        raise ConfigError(f"{where}: expected a mapping of options, got {type(policy).__name__}")
    options = dict(policy)
    for short, long in _SHORT.items():
        if short in options:
            if long in options:
                raise ConfigError(
                    f"{where}: both {short!r} and {long!r} are given; use one of them"
                )
            options[long] = options.pop(short)
    mode = options.get("mode", "auto")
    preset = PRESETS.get(mode, {}) if isinstance(mode, str) else {}
    if mode == "fixed" and options.get("policy", "fixed") != "fixed":
        raise ConfigError(
            f"{where}: mode 'fixed' keeps a fixed size, so it takes no policy "
            f"(got policy={options['policy']!r}); drop 'policy' or pick another mode"
        )
    given = set(options)
    fixed = mode == "fixed" or options.get("policy") == "fixed"
    size = options.get("min_instances", 1)
    if fixed and "max_instances" not in options and isinstance(size, int) and size >= 1:
        options["max_instances"] = size  # a fixed pool has one size
    config = validate(ScalingPolicyConfig, where, {**preset, **options})
    _check_keys_act(where, config, given)
    if config.policy_name == "fixed":
        config = _fixed_size(where, config, "max_instances" in given)
    return config


def _check_keys_act(where: str, config: ScalingPolicyConfig, given: Iterable[str]) -> None:
    """Reject a key the chosen policy would ignore, rather than let it do nothing silently."""
    acts = POLICIES[config.policy_name].keys | COMMON_KEYS
    idle = sorted(k for k in given if k not in acts)
    if idle:
        label = (
            "mode 'fixed'" if config.policy_name == "fixed" else (f"policy {config.policy_name!r}")
        )
        raise ConfigError(
            f"{where}: {', '.join(idle)} {'does' if len(idle) == 1 else 'do'} nothing under "
            f"{label}, which acts only on {', '.join(sorted(acts - {'mode', 'policy'}))}; "
            "remove it or pick a policy that uses it"
        )


def _fixed_size(where: str, config: ScalingPolicyConfig, max_given: bool) -> ScalingPolicyConfig:
    """A fixed pool has one size, ``min_instances``: ``max_instances`` may only repeat it."""
    size = config.min_instances
    if max_given and config.max_instances != size:
        raise ConfigError(
            f"{where}: a fixed pool has one size, but min_instances={size} and "
            f"max_instances={config.max_instances}; give one size (e.g. "
            f"{{'mode': 'fixed', 'min_instances': {config.max_instances}}}) or use mode "
            "'auto' to scale between them"
        )
    if size < 1:
        raise ConfigError(
            f"{where}: a fixed pool of {size} agents could never serve a call; "
            "give min_instances >= 1"
        )
    return config.model_copy(update={"max_instances": size})
