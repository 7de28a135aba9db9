"""Scaling: validated policies, and (to come) the pure decisions and the loop that applies them."""

from shoal.scaling.config import ScalingPolicyConfig, parse_scaling_policy

__all__ = ["ScalingPolicyConfig", "parse_scaling_policy"]
