"""A predictor around any policy: capacity ready before the load the forecast expects.

:class:`PredictivePolicy` is itself a pure policy. Every ``bin_s`` seconds it folds the arrivals
of the bin just closed into a :class:`~shoal.scaling.predict.Forecaster`, then asks it for the
highest arrival rate it expects between now and one cold start plus one interval ahead — the
soonest an agent started at the next decision could be ready. The forecast is made once per
bin (and again only if the horizon crosses a bin edge) and reused by the decisions in between.
Its size is the larger of the point forecast sized as the target policy sizes demand (over
``target_utilization``, at most demand + β√demand) and the upper bound (the point plus the
margin of its recent errors) at one agent per call — the error margin is not stacked on the
queueing headroom. The decision is ``max(reactive, forecast)``: a forecast only ever *adds*
capacity. The guards wrap the whole (:func:`~shoal.scaling.guards.build_policy`), so bounds, the
cost cap and the rate limits bind forecast capacity too.

The forecast acts only when it is worth believing: when the rise it expects stands clear of the
noise of its own recent errors and its recent error is below the naive forecast's (MASE < 1).
On a load without a pattern it is silent, and costs nothing.

When the forecast is trustworthy the reactive policy runs with less headroom (square-root
staffing with β = ``lean_beta`` instead of its own, and demand smoothed over
``lean_smoothing_s`` so that the stabilisation window's maximum of a noisy demand estimate does
not turn noise back into headroom), since capacity for a coming rise no longer
has to sit idle in advance: the headroom follows the forecast's confidence. Trustworthy means
either a recent MASE of at most ``lean_mase``, or recent errors at the floor that counting
noise sets: a bin of Poisson arrivals at rate λ varies by √(λ / bin_s) per second, and when
the mean absolute error is no larger than that (times ``floor_k``), nothing the forecast misses is
more than chance; the remaining headroom covers the chance (the queueing of a stationary load).

``forecast_only`` computes and logs everything (in the reason, and the MASE in the state) but
decides as the reactive policy alone would.

The horizon's cold start is ``cold_start`` when given; otherwise it is measured from the pool's
own counters (Little's law: agents starting on average over agents started per second), 2 s
until the first few starts are seen.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

from shoal.pool.metrics import PoolMetrics
from shoal.scaling.policy import Decision, Policy, TargetUtilizationPolicy
from shoal.scaling.predict import Forecast, Forecaster, ForecastState

DEFAULT_COLD_START_S = 2.0


@dataclass(frozen=True)
class PredictState:
    inner: Any
    forecast: ForecastState
    bin_start: float | None = None  # when the open bin began
    bin_total: int = 0  # requests_total when it began
    last_time: float | None = None
    starting_s: float = 0.0  # agents starting, integrated over time (for the cold start)
    started0: int = -1  # agents_started at the first decision
    last: Forecast | None = None
    last_key: tuple[int, int] = (-1, 0)  # (bins seen, bins ahead) the last forecast was made for
    added: int = 0  # agents the forecast added at the last decision
    head: str = ""  # the reason's account of the last forecast, for ...
    head_key: tuple[int, int, int] = (-1, 0, 0)  # ... (bins, bins ahead, horizon in whole s)


@dataclass(frozen=True)
class PredictivePolicy:
    """``inner``'s decision, raised to what the forecast of the arrival rate needs."""

    inner: Policy[Any]
    forecaster: Forecaster
    interval: float = 1.0
    target_utilization: float = 0.7
    queueing_headroom: float | None = None
    cold_start: float | None = None
    forecast_only: bool = False
    lean_mase: float = 0.8
    lean_beta: float = 1.5
    floor_k: float = 1.0
    lean_smoothing_s: float = 60.0
    noise_z: float = 2.0
    min_rise: float = 0.25
    calm_bins: int = 30

    @property
    def name(self) -> str:
        return self.inner.name

    def initial_state(self) -> PredictState:
        return PredictState(self.inner.initial_state(), self.forecaster.initial_state())

    def cold_start_s(self, state: PredictState, snapshot: PoolMetrics) -> float:
        """The given cold start, or the one the pool's counters show (Little's law)."""
        return self._cold(state.starting_s, state.started0, snapshot)

    def _cold(self, starting_s: float, started0: int, snapshot: PoolMetrics) -> float:
        if self.cold_start is not None:
            return self.cold_start
        done = snapshot.agents_started - started0
        if started0 >= 0 and done >= 3 and starting_s > 0:
            return starting_s / done
        return DEFAULT_COLD_START_S

    @functools.cached_property
    def _lean_inner(self) -> Policy[Any] | None:
        """The reactive policy with the lean headroom, made once (None: it has none to lean)."""
        inner = self.inner
        if self.forecast_only or not isinstance(inner, TargetUtilizationPolicy):
            return None
        beta = inner.queueing_headroom
        if beta is None or beta <= self.lean_beta:
            return None
        return dataclasses.replace(
            inner, queueing_headroom=self.lean_beta, smoothing_s=self.lean_smoothing_s
        )

    def at_noise_floor(self, fstate: ForecastState) -> bool:
        """Whether the forecast's recent errors are no larger than Poisson counting noise."""
        if len(fstate.residuals) < 30 or fstate.level <= 0:
            return False
        noise = math.sqrt(fstate.level / self.forecaster.bin_s)
        return fstate.spread <= self.floor_k * noise

    def lean(self, forecast: Forecast, fstate: ForecastState) -> bool:
        """Whether the reactive policy may run with the lean headroom: the forecast is good
        (recent MASE at most ``lean_mase``, and no rise has surprised it for ``calm_bins``
        bins: a burst it cannot time) or its errors are counting noise, and it expects no rise
        (the lean headroom, and its smoothing, which lags a rise, are for a load that stays
        where it is)."""
        if forecast.peak > fstate.level + self.noise_z * fstate.spread:
            return False
        good = (
            forecast.recent_mase is not None
            and forecast.recent_mase <= self.lean_mase
            and fstate.bins - fstate.surprised > self.calm_bins
        )
        return good or self.at_noise_floor(fstate)

    def decide(
        self, snapshot: PoolMetrics, state: PredictState, now: float
    ) -> Decision[PredictState]:
        fc = self.forecaster
        fstate = state.forecast
        bin_start, bin_total = state.bin_start, state.bin_total
        total = snapshot.requests_total
        if bin_start is None:
            bin_start, bin_total = now, total
        elif now - bin_start >= fc.bin_s - 1e-9:
            elapsed = now - bin_start
            closed = max(1, int(elapsed / fc.bin_s + 1e-9))
            rate = (total - bin_total) / elapsed
            for _ in range(min(closed, 64)):  # a long gap (a paused loop) is one flat stretch
                fstate = fc.update(fstate, rate)
            bin_start, bin_total = now, total
        starting_s = state.starting_s
        if state.last_time is not None and now > state.last_time:
            starting_s += snapshot.starting * (now - state.last_time)
        started0 = snapshot.agents_started if state.started0 < 0 else state.started0

        cold = self._cold(starting_s, started0, snapshot)
        reach = now + cold + self.interval - bin_start
        ahead = max(1, int(reach / fc.bin_s) + 1)
        # The forecast changes only when a bin closes (or the horizon moves past a bin edge):
        # made once, then reused by every decision until then. (States are built whole, not
        # with dataclasses.replace: this runs at every decision, most of them between bins.)
        key = (fstate.bins, ahead)
        if not fstate.bins:
            forecast = None
        elif key == state.last_key and state.last is not None:
            forecast = state.last
        else:
            forecast = fc.forecast(fstate, ahead)
        inner: Policy[Any] = self.inner
        if forecast is not None and self.lean(forecast, fstate):
            inner = self._lean_inner or inner
        raw = inner.decide(snapshot, state.inner, now)
        if forecast is None:
            kept = PredictState(
                raw.state,
                fstate,
                bin_start,
                bin_total,
                now,
                starting_s,
                started0,
                state.last,
                state.last_key,
                state.added,
                state.head,
                state.head_key,
            )
            return Decision(raw.desired, kept, raw.reason, raw.shed)

        need, why = self._need(forecast, fstate, snapshot)
        added = max(0, need - raw.desired) if why is None else 0
        horizon = cold + self.interval
        head_key = (key[0], key[1], round(horizon))
        head = state.head
        if head_key != state.head_key or not head:
            head = (
                f"forecast {forecast.rate:.2f}/s (up to {forecast.upper:.2f}) within "
                f"{horizon:.0f} s by {forecast.model}"
                + (f", period {forecast.period_s:g} s" if forecast.period_s else "")
                + (f", MASE {forecast.recent_mase:.2f}" if forecast.recent_mase is not None else "")
            )
        next_state = PredictState(
            raw.state,
            fstate,
            bin_start,
            bin_total,
            now,
            starting_s,
            started0,
            forecast,
            key,
            added,
            head,
            head_key,
        )
        if why is not None or added == 0:
            reason = f"{raw.reason}; {head}: {why or f'needs {need}, no more'}"
            return Decision(raw.desired, next_state, reason, raw.shed)
        if self.forecast_only:
            reason = f"{raw.reason}; {head}: would add {added} (forecast only)"
            return Decision(raw.desired, next_state, reason, raw.shed)
        return Decision(need, next_state, f"{raw.reason}; {head}: needs {need} (+{added})")

    def _need(
        self, forecast: Forecast, fstate: ForecastState, snapshot: PoolMetrics
    ) -> tuple[int, str | None]:
        """The size the forecast needs, or why it is not to be believed."""
        if forecast.recent_mase is None:
            return 0, "still learning"
        if forecast.recent_mase >= 1.0:
            return 0, "no better than naive"
        if fstate.bins - fstate.fell <= 1:
            # The load just fell far below the forecast, which was chosen by scores that have
            # not seen the fall yet (a trend fitted to the level before it expects that level
            # back): the next bin's scores tell which member to follow.
            return 0, "the load just fell"
        now_rate = fstate.level
        spread = fstate.spread
        # A rise the reactive headroom absorbs, or one inside the forecast's own noise, is not
        # worth capacity in advance.
        if forecast.peak <= now_rate * (1 + self.min_rise) or (
            forecast.peak <= now_rate + self.noise_z * spread
        ):
            return 0, "no rise beyond its noise"
        exec_s = snapshot.avg_execution_time / max(1, snapshot.max_concurrency)
        # The point forecast gets the reactive policy's queueing headroom; the upper bound (the
        # point plus the margin of its recent errors) is itself the allowance for being wrong,
        # and is covered one agent per expected call: the two are not stacked.
        demand = forecast.peak * exec_s
        if demand <= 0:
            return 0, "no demand"
        need = demand / self.target_utilization
        beta = self.queueing_headroom
        if beta is not None:
            need = min(need, demand + beta * math.sqrt(demand))
        need = max(need, forecast.upper * exec_s)
        return math.ceil(need - 1e-9), None


def find_predict_state(state: Any) -> PredictState | None:
    """The predictor's state inside a policy's (wrapped) state, if it has one."""
    for _ in range(8):
        if isinstance(state, PredictState):
            return state
        state = getattr(state, "inner", None)
        if state is None:
            return None
    return None
