"""Scaling: pure policies, guards written once around any policy, and the loop applying them."""

from shoal.scaling.autoscaler import AutoScaler
from shoal.scaling.config import PRESETS, ScalingPolicyConfig, parse_scaling_policy
from shoal.scaling.guards import GuardedPolicy, GuardState, build_policy
from shoal.scaling.policy import (
    Decision,
    FixedPolicy,
    FunctionPolicy,
    Policy,
    RulePolicy,
    TargetUtilizationPolicy,
)

__all__ = [
    "PRESETS",
    "AutoScaler",
    "Decision",
    "FixedPolicy",
    "FunctionPolicy",
    "GuardState",
    "GuardedPolicy",
    "Policy",
    "RulePolicy",
    "ScalingPolicyConfig",
    "TargetUtilizationPolicy",
    "build_policy",
    "parse_scaling_policy",
]
