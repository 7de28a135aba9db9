"""The seed's ``scaling_policy`` dictionary, validated into a frozen object.

Every key of the seed keeps its name; ``min``/``max`` are accepted as short forms of
``min_instances``/``max_instances``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shoal.config import default_max_size, validate
from shoal.errors import ConfigError

Mode = Literal["auto", "aggressive", "reactive", "conservative", "fixed"]

_SHORT = {"min": "min_instances", "max": "max_instances"}


class ScalingPolicyConfig(BaseModel):
    """How a pool of instances or agents may grow and shrink. Durations are float seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = "auto"
    min_instances: int = Field(default=1, ge=0, strict=True)
    max_instances: int = Field(default_factory=default_max_size, ge=1, strict=True)
    target_utilization: float = Field(default=0.7, gt=0, le=1)
    scale_up_threshold: float = Field(default=0.8, gt=0, le=1)
    scale_down_threshold: float = Field(default=0.3, ge=0, lt=1)
    cooldown_period: float = Field(default=60.0, ge=0)
    scale_up_rate: int = Field(default=1, ge=1, strict=True)
    scale_down_rate: int = Field(default=1, ge=1, strict=True)
    predictor: str | None = None
    burst_capacity: int = Field(default=0, ge=0, strict=True)
    idle_terminate: float | None = Field(default=None, gt=0)
    cost_threshold: float | None = Field(default=None, gt=0)
    prefer_spot: bool = False
    queue_depth: int = Field(default=5, ge=0, strict=True)
    sla: float | None = Field(default=None, gt=0)
    idle_time: float = Field(default=300.0, ge=0)
    interval: float = Field(default=15.0, gt=0)

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
        return self


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
    return validate(ScalingPolicyConfig, where, options)
