"""The one registry of scaling policies: every name a ``scaling_policy`` or ``shoal simulate``
may pick, how each is built, which guards wrap it and which keys it acts on.

Configuration validation, :func:`~shoal.scaling.guards.build_policy`, the simulator and the
README's table of keys all read this; a new policy is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from shoal.scaling.config import ScalingPolicyConfig
    from shoal.scaling.policy import Policy

#: Which guards wrap a policy: ``all`` (see :mod:`shoal.scaling.guards`); ``no-window``, all
#: but the scale-down stabilisation window, for a policy whose own delay (``idle_time``) already
#: stabilises scale-down; ``bounds``, only the cost cap and the bounds, for a policy that
#: brings its own windows.
Guards = Literal["all", "no-window", "bounds"]

#: Keys every policy accepts: the bounds, the choice of policy, and ``prefer_spot``, noted as
#: not implemented yet (the pool records a note).
COMMON_KEYS: frozenset[str] = frozenset(
    {
        "mode",
        "policy",
        "min_instances",
        "max_instances",
        "prefer_spot",
        "spot_fraction",
        "on_demand_base",
    }
)
#: The predictor's keys: shoal's own policies take them (see :mod:`shoal.scaling.predictive`).
PREDICTOR_KEYS = frozenset({"predictor", "forecast_only", "cold_start", "state_file"})
#: The keys the guards read (``all``); ``cooldown_period`` also sets how long on-demand agents
#: the policy does not want are kept (a third of it).
_GUARD_KEYS = frozenset(
    {
        "cooldown_period",
        "scale_up_rate",
        "scale_down_rate",
        "burst_capacity",
        "idle_terminate",
        "queue_depth",
        "cost_threshold",
        "interval",
    }
)
_THRESHOLD_KEYS = frozenset({"scale_up_threshold", "scale_down_threshold", "sla", "idle_time"})


@dataclass(frozen=True)
class PolicyEntry:
    """One policy a name picks.

    ``baseline`` marks the field's autoscalers (and ``fixed``): ``shoal simulate`` runs them
    as their own systems do, starting agents for waiting callers only if ``on_demand``; shoal's
    own policies always run with on-demand starts, as a shoal pool does.
    """

    name: str
    build: Callable[[ScalingPolicyConfig], Policy[Any]]
    guards: Guards
    keys: frozenset[str]  # the scaling_policy keys it acts on, beyond COMMON_KEYS
    baseline: bool = False
    on_demand: bool = True
    summary: str = ""


def _target(config: ScalingPolicyConfig) -> Policy[Any]:
    from shoal.scaling.guards import target_policy

    return target_policy(config)


def _rule(config: ScalingPolicyConfig) -> Policy[Any]:
    from shoal.scaling.policy import RulePolicy

    return RulePolicy(
        scale_up_threshold=config.scale_up_threshold,
        scale_down_threshold=config.scale_down_threshold,
        queue_depth=config.queue_depth,
        sla=config.sla,
        idle_time=config.rule_idle_time,
        step_up=config.scale_up_rate or 1,
        step_down=config.scale_down_rate or 1,
    )


def _fixed(config: ScalingPolicyConfig) -> Policy[Any]:
    from shoal.scaling.policy import FixedPolicy

    return FixedPolicy(config.min_instances)


def _baseline(name: str) -> Callable[[ScalingPolicyConfig], Policy[Any]]:
    def build(config: ScalingPolicyConfig) -> Policy[Any]:
        from shoal.scaling import baselines

        made: Policy[Any] = getattr(baselines, f"{name}_from_config")(config)
        return made

    return build


_BOUNDS = frozenset({"cost_threshold", "interval"})

#: Every policy by name, in the order tables list them.
POLICIES: dict[str, PolicyEntry] = {
    e.name: e
    for e in (
        PolicyEntry(
            "target",
            _target,
            "all",
            _GUARD_KEYS | _THRESHOLD_KEYS | PREDICTOR_KEYS | {"target_utilization"},
            summary="target tracking (every mode but fixed)",
        ),
        PolicyEntry(
            "rule",
            _rule,
            "no-window",
            _GUARD_KEYS | _THRESHOLD_KEYS | PREDICTOR_KEYS,
            summary="the seed's threshold rules, one step per decision",
        ),
        PolicyEntry("fixed", _fixed, "bounds", frozenset({"cost_threshold"}), True, False),
        PolicyEntry(
            "hpa",
            _baseline("hpa"),
            "bounds",
            _BOUNDS | {"target_utilization", "cooldown_period"},
            True,
            False,
        ),
        PolicyEntry(
            "hpa-inflight",
            _baseline("hpa"),
            "bounds",
            _BOUNDS | {"target_utilization", "cooldown_period"},
            True,
            False,
            summary="HPA on calls in flight per pod (a custom metric) instead of CPU",
        ),
        PolicyEntry(
            "kpa",
            _baseline("kpa"),
            "bounds",
            _BOUNDS | {"target_utilization", "idle_terminate"},
            True,
            False,
        ),
        PolicyEntry(
            "rayserve", _baseline("rayserve"), "bounds", _BOUNDS | {"cooldown_period"}, True, False
        ),
        PolicyEntry(
            "keepalive", _baseline("keepalive"), "bounds", _BOUNDS | {"idle_terminate"}, True, True
        ),
    )
}

#: The names, as ``scaling_policy={"policy": ...}`` accepts them.
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)
#: The field's autoscalers and ``fixed``, which ``shoal simulate`` compares shoal against.
BASELINES: tuple[str, ...] = tuple(n for n, e in POLICIES.items() if e.baseline)


def entry(name: str) -> PolicyEntry:
    """The policy called ``name`` (a ``KeyError`` for an unknown one; configs validate first)."""
    return POLICIES[name]
