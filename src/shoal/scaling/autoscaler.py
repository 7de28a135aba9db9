"""The control loop: every ``interval``, snapshot the pool, ask the guarded policy, resize.

How the autoscaler and the pool share the work (neither fights the other):

- The autoscaler owns the pool's *target* — how many agents to keep warm ahead of demand. The
  pool starts agents up to the target and keeps it there (replacing dead ones).
- The pool still starts an agent at once for a caller who would otherwise wait, up to
  ``max_size``: on-demand agents can only add to the target, never lower it.
- The idle reaper only retires agents *above* the target, after ``idle_timeout``; the autoscaler
  lowering the target retires idle agents at once, least recently used first. Agents started on
  demand that the policy has not wanted for a third of ``cooldown_period`` (while some sit idle)
  are let go then, without waiting for ``idle_timeout`` (the :class:`ShedSurplus` guard). No
  one ever retires a busy agent.

So the autoscaler's worth shows as cold starts avoided (agents warm before callers arrive) and
agent-seconds saved (targets lowered when demand falls), and every change lands in
``pool.events`` with its reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from shoal.errors import ConfigError
from shoal.pool.metrics import PoolMetrics
from shoal.pool.pool import AgentPool
from shoal.scaling import learned
from shoal.scaling.config import ScalingPolicyConfig, parse_scaling_policy
from shoal.scaling.guards import ShedSurplus, build_policy
from shoal.scaling.policy import Decision, FunctionPolicy, Policy
from shoal.scaling.predict import Forecast
from shoal.scaling.predictive import find_predict_state

log = logging.getLogger("shoal.scaling")

PolicyLike = (
    ScalingPolicyConfig
    | Mapping[str, Any]
    | Policy[Any]
    | Callable[[PoolMetrics, Any, float], Decision[Any]]
)


class AutoScaler:
    """Resizes ``pool`` every ``interval`` seconds as ``policy`` decides.

    ``policy`` is a seed-style ``scaling_policy`` dict (or its validated config), any object with
    ``initial_state()`` and a pure ``decide(snapshot, state, now)``, or a plain function with
    that signature. Configs get the guards of :mod:`shoal.scaling.guards`; a policy object is used
    as it is (wrap it in :class:`~shoal.scaling.guards.GuardedPolicy` for guards).
    """

    def __init__(self, pool: AgentPool, policy: PolicyLike, *, interval: float | None = None):
        self.pool = pool
        self.config: ScalingPolicyConfig | None = None
        if isinstance(policy, Mapping):
            policy = parse_scaling_policy(f"pool {pool.name!r} scaling_policy", policy)
        if isinstance(policy, ScalingPolicyConfig):
            self.config = policy
            # The cheapest placement's price: no more agents than that buys, whatever the mix.
            guarded = build_policy(policy, price_per_hour=pool.unit_price)
            self.cost_cap = guarded.cost_cap
            inner: Policy[Any] = guarded
            interval = interval if interval is not None else policy.interval
        elif hasattr(policy, "decide") and hasattr(policy, "initial_state"):
            inner = policy  # type: ignore[assignment]
            self.cost_cap = getattr(policy, "cost_cap", None)
        elif callable(policy):
            inner = FunctionPolicy(policy)
            self.cost_cap = None
        else:
            raise ConfigError(f"pool {pool.name!r}: {policy!r} is not a scaling policy")
        self.interval = interval if interval is not None else 1.0
        if self.interval <= 0:
            raise ConfigError(f"pool {pool.name!r}: interval={self.interval} must be > 0")
        # How long idle agents above the policy's size are kept: a third of the stabilisation
        # window for a configured policy — twice the time its smoothed demand takes to count a
        # shortfall (a sixth of the window), so a real one raises the target before they go. A
        # policy object leaves them to the pool's idle_timeout.
        hold = self.config.cooldown_period / 3 if self.config is not None else None
        self.policy: Policy[Any] = ShedSurplus(
            inner, hold if hold is not None else pool.config.idle_timeout
        )
        self.state: Any = self.policy.initial_state()
        self.decisions = 0
        # The pending step of the control loop (a timer or a ready callback); None when stopped.
        self._handle: asyncio.Handle | None = None
        self._start = 0.0
        self._k = 0

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """Begin evaluating every ``interval`` on the running loop."""
        if self.running:
            return
        config = self.config
        if config is not None:
            has_spot = any(p.spot for p in self.pool.placements)
            for note in config.unimplemented():
                if not (has_spot and "prefer_spot" in note):
                    log.warning("pool %r: %s", self.pool.name, note)
                    self.pool.note(note)
            if config.prefer_spot and has_spot:
                prefer, fraction, base = config.spot_keys()
                self.pool.set_spot(prefer, spot_fraction=fraction, on_demand_base=base)
            if config.cost_threshold is not None:
                # A hard ceiling on the spend rate, for agents started on demand too.
                self.pool.set_cost_ceiling(config.cost_threshold)
        state_file = config.state_file if config is not None else None
        if state_file is not None:
            self.state = learned.load(state_file, self.state)  # what the last run learnt
        cap = self.cost_cap
        if cap is not None:
            # No more agents than the ceiling buys at the cheapest placement.
            threshold = self.config.cost_threshold if self.config else None
            self.pool.set_ceiling(cap, f"cost_threshold {threshold} $/h")
        loop = asyncio.get_running_loop()
        self._handle = loop.call_soon(self._first, loop)

    async def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            if self.config is not None and self.config.state_file is not None:
                learned.save(self.config.state_file, self.state)

    async def __aenter__(self) -> AutoScaler:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def evaluate(self, now: float | None = None) -> Decision[Any]:
        """Take one decision and apply it (the loop calls this; tests and the simulator may)."""
        pool = self.pool
        snapshot = pool.snapshot()
        now = snapshot.time if now is None else now
        decision = self.policy.decide(snapshot, self.state, now)
        self.state = decision.state
        self.decisions += 1
        desired = min(max(decision.desired, pool.min_size), pool.max_size)
        if (desired != pool.target_size or decision.shed) and not pool.closed:
            pool.set_target(desired, f"autoscaler: {decision.reason}", snapshot)
        return decision

    @property
    def forecast(self) -> Forecast | None:
        """The predictor's latest forecast (rate, model, period, MASE); None without one."""
        found = find_predict_state(self.state)
        return found.last if found is not None else None

    @property
    def forecast_mase(self) -> float | None:
        """How good the pool's forecast has been: its mean absolute error over the naive
        forecast's at the same horizon (below 1 beats "now goes on"); None without a predictor
        or before it has been scored."""
        fc = self.forecast
        return fc.mase if fc is not None else None

    # Decide at fixed times, start + k x interval: sleeping one interval after each decision
    # let the time a decision takes (and the loop's latency) accumulate, so decisions drifted
    # later and later against the load (0.2-0.4 s by t = 240 s, measured on real pools).
    #
    # The loop is a chain of callbacks, not a task: a timer at each decision time that hands
    # the step to the ready queue (as a sleeping task's wake-up would, so a decision still sees
    # everything else due at the same instant first), and the step, which decides and sets the
    # next timer. A simulation takes a decision every simulated second for days; a task's
    # sleep (a future, its timer, the task's wake-up) cost more than the decision itself.

    def _first(self, loop: asyncio.AbstractEventLoop) -> None:
        self._start, self._k = loop.time(), 0
        self._next(loop)

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        self._k += 1
        k, start, interval = self._k, self._start, self.interval
        now = loop.time()
        if start + k * interval < now:  # more than an interval behind: skip, not rush
            self._k = k = int((now - start) / interval) + 1
        delay = start + k * interval - now
        if delay > 0:
            self._handle = loop.call_at(now + delay, self._due, loop)
        else:
            self._handle = loop.call_soon(self._step, loop)

    def _due(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = loop.call_soon(self._step, loop)

    def _step(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.pool.closed:
            self._handle = None
            return
        try:
            self.evaluate()
        except Exception:  # a policy bug must not silently stop scaling for good
            log.exception("pool %r: the scaling policy failed; keeping the size", self.pool.name)
        if self._handle is not None:  # (evaluate may have stopped the loop)
            self._next(loop)
