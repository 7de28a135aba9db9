"""Forecasting the arrival rate: online, light, pure.

A :class:`Forecaster` turns arrival counts in fixed bins (``bin_s`` seconds) into a forecast of
the rate ``h`` bins ahead. Its memory is an immutable :class:`ForecastState`: :meth:`update`
returns a new one (the arrays in it are copied, never changed in place, so an old state stays
valid), which is what lets a predictor live inside a pure scaling policy.

Kinds (the ``predictor`` key):

- ``seasonal`` — finds the load's period online (autocorrelation of first differences, rechecked
  every so often) and forecasts the mean rate at the same phase over the last few periods; its
  upper bound is the highest rate at that phase (± one bin, for jitter) plus a margin.
- ``linear`` — a least-squares line through the recent bins, extended ``h`` bins ahead.
- ``ml-based`` — an ensemble of the naive forecast (the last bin's rate), EWMA, seasonal-naive,
  additive Holt-Winters, the linear trend, a ridge regression on lags and phase, damped Holt
  (level and trend: a smooth swing) and a burst member (how long and how high past bursts
  were: when the one under way ends); it follows whichever has the lowest recent error (MASE)
  and adds a margin from the recent residual quantiles. The naive member keeps it from doing
  worse than "what happens now goes on" for long on a load none of the others model.

The level (EWMA) and Holt start afresh at a jump no counting noise explains (more than
``_JUMP_Z`` Poisson standard deviations of a bin): a burst or a new regime is a new level, not
one to be caught up with over the next bins. A rise beyond the forecast by as much is recorded
(``surprised``): the predictive policy trusts a forecast that has not been surprised lately.

Every forecast is scored against what then arrived: MASE here is the forecast's mean absolute
error over that of the naive forecast at the same horizon (the rate ``h`` bins earlier), so below
1 means the forecast beats "what is happening now will go on".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

PredictorName = Literal["none", "seasonal", "linear", "ml-based"]
PREDICTORS: tuple[str, ...] = ("none", "seasonal", "linear", "ml-based")

_MODELS: dict[str, tuple[str, ...]] = {
    "seasonal": ("snaive",),
    "linear": ("linear",),
    "ml-based": ("naive", "ewma", "snaive", "hw", "linear", "ridge", "holt", "burst"),
}
_HISTORY = 8192  # bins kept (at 10 s: 22.7 h): two periods of up to ~11 h are found
_PERIODS_KEPT = 3  # periods the seasonal forecast looks back over
_RESIDUALS = 120  # bins of residuals the margin is drawn from
_ERR_ALPHA = 0.05  # smoothing of each model's error (about 20 bins)
_LAGS = 3
_HOLT_ALPHA, _HOLT_BETA, _HOLT_PHI = 0.5, 0.2, 0.9
_JUMP_Z = 5.0  # a change of more than this many Poisson standard deviations of a bin is a jump
_BURST_MAX = 30  # bins: a rise that lasts longer is a new level, not a burst
_BURSTS_KEPT = 8
_Bursts = tuple[float, int, float, float, tuple[float, ...], tuple[float, ...]]
_BETWEEN = ("ewma", "holt", "hw", "snaive")  # what the burst member follows between bursts


@dataclass(frozen=True)
class Forecast:
    """What the forecaster expects ``h`` bins ahead: a point rate and an upper bound (per
    second), the model it chose, the period it sees (seconds), and how good it has been."""

    rate: float
    upper: float
    model: str
    peak: float  # the highest rate expected, before the margin (seasonal: over the phase)
    period_s: float | None
    mase: float | None  # over the whole history: error / naive error at the same horizon
    recent_mase: float | None  # the chosen model's recent MASE


def _quantile(values: tuple[float, ...], q: float) -> float:
    """The ``q`` quantile with linear interpolation (numpy's default), without numpy's overhead
    for a hundred values."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _empty() -> np.ndarray:
    return np.zeros(0)


@dataclass(frozen=True, eq=False)
class ForecastState:
    """The forecaster's memory; every field is replaced, never mutated."""

    history: np.ndarray = field(default_factory=_empty)  # rates per bin, oldest first
    bins: int = 0  # bins seen in all
    period: int = 0  # bins; 0 when none is seen
    checked_at: int = 0  # when the period was last looked for
    level: float = 0.0  # EWMA and Holt-Winters level
    trend: float = 0.0  # Holt-Winters trend
    season: np.ndarray = field(default_factory=_empty)  # Holt-Winters seasonal terms, by phase
    hw_level: float = 0.0
    holt_level: float = 0.0  # damped Holt (level and trend, no season)
    holt_trend: float = 0.0
    burst_base: float = 0.0  # the rate before the burst under way began
    burst_len: int = 0  # bins of the burst under way (0: none)
    burst_peak: float = 0.0  # its highest rate above the base so far
    burst_sum: float = 0.0  # its rate above the base, summed over its bins
    burst_lengths: tuple[float, ...] = ()  # the last bursts' lengths in bins at full height
    burst_heights: tuple[float, ...] = ()  # and their heights above their base
    errors: tuple[float, ...] = ()  # per model: smoothed absolute error
    naive_error: float = 0.0  # smoothed |y - y[-h]|
    pending: tuple[tuple[float, ...], ...] = ()  # forecasts made for the next h bins, oldest first
    chosen_pending: tuple[float, ...] = ()  # the chosen forecast for each pending bin
    residuals: tuple[float, ...] = ()  # recent (actual - chosen forecast)
    surprised: int = -(10**9)  # the last bin that rose beyond the forecast by more than noise
    fell: int = -(10**9)  # the last bin that fell below it by more than noise
    margin: float = 0.0  # the residuals' margin_q quantile, at least 0 (once 10 are seen)
    spread: float = 0.0  # the residuals' mean absolute value: the forecast's recent noise
    abs_err_sum: float = 0.0
    naive_sum: float = 0.0
    ridge_a: np.ndarray = field(default_factory=_empty)
    ridge_b: np.ndarray = field(default_factory=_empty)
    features: tuple[np.ndarray, ...] = ()  # ridge features made h bins ago, oldest first


@dataclass(frozen=True)
class Forecaster:
    """An online forecaster of the arrival rate, ``h`` bins of ``bin_s`` seconds ahead."""

    kind: str = "ml-based"
    bin_s: float = 10.0
    horizon: int = 1  # bins ahead
    min_period_bins: int = 3
    max_period_bins: int = _HISTORY // 2
    recheck_bins: int = 60  # how often the period is looked for again
    trend_bins: int = 30  # bins the linear trend is fitted over
    ewma_alpha: float = 0.3
    margin_q: float = 0.9

    @property
    def models(self) -> tuple[str, ...]:
        return _MODELS[self.kind]

    def initial_state(self) -> ForecastState:
        n = len(self.models)
        k = 2 + _LAGS
        return ForecastState(
            errors=(0.0,) * n, ridge_a=np.eye(k) * 1.0, ridge_b=np.zeros(k), features=()
        )

    # -- one bin -------------------------------------------------------------------------------

    def update(self, state: ForecastState, rate: float) -> ForecastState:
        """Fold the rate of the bin just closed into the state: score the forecasts made for
        it, update every model, look for the period again when due."""
        if len(state.errors) != len(self.models):
            # Learnt by another ensemble (a state file of an earlier version): the history and
            # the levels carry over, the members' scores start afresh.
            n = len(self.models)
            state = replace(state, errors=(0.0,) * n, pending=(), chosen_pending=())
        h = self.horizon
        hist = state.history
        errors, naive_error = state.errors, state.naive_error
        abs_sum, naive_sum = state.abs_err_sum, state.naive_sum
        residuals = state.residuals
        pending, chosen_pending = state.pending, state.chosen_pending
        surprised, fell = state.surprised, state.fell
        if len(pending) >= h:  # the forecasts made h bins ago were for this bin
            made, pending = pending[0], pending[1:]
            chosen, chosen_pending = chosen_pending[0], chosen_pending[1:]
            a = _ERR_ALPHA
            errors = tuple(e + a * (abs(rate - f) - e) for e, f in zip(errors, made, strict=True))
            if len(hist) >= h:
                naive = abs(rate - float(hist[-h]))
                naive_error += a * (naive - naive_error)
                naive_sum += naive
                abs_sum += abs(rate - chosen)
            residuals = (*residuals[-(_RESIDUALS - 1) :], rate - chosen)
            if rate - chosen > self._jump(max(chosen, 0.0)):
                surprised = state.bins  # a rise the forecast did not see, beyond noise
            elif chosen - rate > self._jump(chosen):
                fell = state.bins
        margin, spread = state.margin, state.spread
        if residuals is not state.residuals:
            margin = _quantile(residuals, self.margin_q) if len(residuals) >= 10 else 0.0
            spread = sum(abs(r) for r in residuals) / len(residuals)
        hist = np.append(hist[-(_HISTORY - 1) :], rate)
        bins = state.bins + 1
        period, checked = state.period, state.checked_at
        if bins - checked >= self.recheck_bins or (period == 0 and bins - checked >= 10):
            period, checked = self._period(hist), bins
        level = state.level + self.ewma_alpha * (rate - state.level)
        if state.bins == 0 or abs(rate - state.level) > self._jump(max(state.level, rate)):
            level = rate  # a jump: the old level is gone, not to be caught up with slowly
        hw_level, trend, season = self._holt_winters(state, hist, rate, period)
        holt_level, holt_trend = self._holt(state, rate)
        b_base, b_len, b_peak, b_sum, b_lengths, b_heights = self._bursts(state, rate)
        ridge_a, ridge_b, features = state.ridge_a, state.ridge_b, state.features
        if "ridge" in self.models and len(features) >= h:
            x, features = features[0], features[1:]
            lam = 0.99  # forget old bins, so the fit follows a changing load
            ridge_a = lam * ridge_a + np.outer(x, x) + (1 - lam) * np.eye(len(x))
            ridge_b = lam * ridge_b + x * rate
        new = replace(
            state,
            history=hist,
            bins=bins,
            period=period,
            checked_at=checked,
            level=level,
            trend=trend,
            season=season,
            hw_level=hw_level,
            holt_level=holt_level,
            holt_trend=holt_trend,
            burst_base=b_base,
            burst_len=b_len,
            burst_peak=b_peak,
            burst_sum=b_sum,
            burst_lengths=b_lengths,
            burst_heights=b_heights,
            errors=errors,
            naive_error=naive_error,
            residuals=residuals,
            surprised=surprised,
            fell=fell,
            margin=max(0.0, margin),
            spread=spread,
            abs_err_sum=abs_sum,
            naive_sum=naive_sum,
            ridge_a=ridge_a,
            ridge_b=ridge_b,
        )
        # Make (and remember, to score later) the forecasts for h bins ahead.
        each = self._each(new, h)
        pick = self._pick(new)
        x = self._features(new, h)
        if "ridge" in self.models:
            features = (*features, x)
        return replace(
            new,
            pending=(*pending, each),
            chosen_pending=(*chosen_pending, each[pick]),
            features=features,
        )

    def forecast(self, state: ForecastState, ahead: int | None = None) -> Forecast:
        """The forecast for the next ``ahead`` bins (the highest of them), with its margin.

        Only the chosen model is asked, and the margin was drawn when the bin closed, so this
        costs a few model evaluations, not an ensemble's."""
        n = len(state.history)
        period_s = state.period * self.bin_s if state.period else None
        mase = state.abs_err_sum / state.naive_sum if state.naive_sum > 0 else None
        if n == 0:
            return Forecast(0.0, 0.0, "none", 0.0, period_s, mase, None)
        ahead = self.horizon if ahead is None else ahead
        pick = self._pick(state)
        model = self.models[pick]
        point = max(self._one(model, state, k) for k in range(1, ahead + 1))
        upper = point
        if model == "snaive" and state.period:
            upper = max(self._seasonal_max(state, k) for k in range(1, ahead + 1))
        margin = state.margin
        recent = None
        if state.naive_error > 0 and state.bins > self.horizon + 10:
            recent = state.errors[pick] / state.naive_error
        return Forecast(
            max(0.0, point),
            max(0.0, upper + margin),
            model,
            max(0.0, upper),
            period_s,
            mase,
            recent,
        )

    # -- models --------------------------------------------------------------------------------

    def _pick(self, state: ForecastState) -> int:
        if len(self.models) == 1 or state.bins <= self.horizon + 10:
            # Before any score, the steadiest: the EWMA (or the only model).
            return self.models.index("ewma") if "ewma" in self.models else 0
        errors = list(state.errors)
        for i, m in enumerate(self.models):
            if m in ("snaive", "hw") and not state.period:
                errors[i] = math.inf
        return int(np.argmin(errors))

    def _each(self, state: ForecastState, k: int) -> tuple[float, ...]:
        return tuple(self._one(m, state, k) for m in self.models)

    def _one(self, model: str, state: ForecastState, k: int) -> float:
        hist = state.history
        if model == "naive":
            return float(hist[-1])
        if model == "ewma":
            return state.level
        if model == "snaive":
            return self._seasonal_mean(state, k)
        if model == "hw":
            if not state.period or len(state.season) != state.period:
                return state.level
            phase = (state.bins - 1 + k) % state.period
            return state.hw_level + k * state.trend + float(state.season[phase])
        if model == "holt":
            damped = sum(_HOLT_PHI**i for i in range(1, k + 1))
            return state.holt_level + damped * state.holt_trend
        if model == "burst":
            return self._burst(state, k)
        if model == "linear":
            return self._linear(hist, k)
        if model == "ridge":
            x = self._features(state, k)
            try:
                w = np.linalg.solve(state.ridge_a, state.ridge_b)
            except np.linalg.LinAlgError:
                return state.level
            return float(x @ w)
        raise ValueError(model)

    def _features(self, state: ForecastState, k: int) -> np.ndarray:
        hist = state.history
        lags = [float(hist[-1 - i]) if len(hist) > i else 0.0 for i in range(_LAGS)]
        phase = self._seasonal_mean(state, k) if state.period else state.level
        return np.array([1.0, *lags, phase])

    def _seasonal_mean(self, state: ForecastState, k: int) -> float:
        vals = self._at_phase(state, k, 0)
        return sum(vals) / len(vals) if vals else state.level

    def _seasonal_max(self, state: ForecastState, k: int) -> float:
        vals = self._at_phase(state, k, 1)
        return max(vals) if vals else state.level

    def _at_phase(self, state: ForecastState, k: int, spread: int) -> list[float]:
        """The rates at the phase of bin ``now + k`` over the last periods (± ``spread`` bins)."""
        p, hist = state.period, state.history
        n = len(hist)
        out: list[float] = []
        if not p:
            return out
        for j in range(1, _PERIODS_KEPT + 1):
            i = n - 1 + k - j * p
            for d in range(-spread, spread + 1):
                if 0 <= i + d < n:
                    out.append(float(hist[i + d]))
        return out

    def _linear(self, hist: np.ndarray, k: int) -> float:
        m = min(len(hist), self.trend_bins)
        if m < 3:
            return float(hist[-1]) if m else 0.0
        y = hist[-m:]
        x = np.arange(m, dtype=float)
        xm, ym = (m - 1) / 2, float(y.mean())
        slope = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
        return ym + slope * (m - 1 - xm + k)

    def _holt(self, state: ForecastState, rate: float) -> tuple[float, float]:
        """Damped Holt: a level and a trend that follow a smooth swing with little lag, started
        afresh at a jump no counting noise explains (a burst, a regime change), so that it does
        not spend the next bins catching up with a level that is gone."""
        if state.bins == 0:
            return rate, 0.0
        a, b, phi = _HOLT_ALPHA, _HOLT_BETA, _HOLT_PHI
        level, trend = state.holt_level, state.holt_trend
        guess = level + phi * trend
        if abs(rate - guess) > self._jump(max(guess, rate)):
            return rate, 0.0
        new = a * rate + (1 - a) * guess
        return new, b * (new - level) + (1 - b) * phi * trend

    def _jump(self, base: float) -> float:
        """The rise above ``base`` that counting noise does not explain."""
        return _JUMP_Z * math.sqrt(max(base, 1.0 / self.bin_s) / self.bin_s)

    def _bursts(self, state: ForecastState, rate: float) -> _Bursts:
        """Follow bursts: rises above the level before them that no noise explains. How long
        past bursts lasted (their excess over the base, in bins at full height: a burst that
        covers part of its first and last bins counts those parts) and how high they rose tell
        the burst member when the one under way ends."""
        base, n, peak, total = state.burst_base, state.burst_len, state.burst_peak, state.burst_sum
        lengths, heights = state.burst_lengths, state.burst_heights
        if n == 0:
            guess = state.holt_level + _HOLT_PHI * state.holt_trend
            if state.bins and rate > guess + self._jump(guess):
                return guess, 1, rate - guess, rate - guess, lengths, heights
            return base, 0, peak, total, lengths, heights
        if rate > base + self._jump(base):
            if n + 1 > _BURST_MAX:  # not a burst: a new level
                return base, 0, peak, total, lengths, heights
            return base, n + 1, max(peak, rate - base), total + rate - base, lengths, heights
        kept = _BURSTS_KEPT - 1
        length = total / peak if peak > 0 else float(n)
        return base, 0, peak, total, (*lengths[-kept:], length), (*heights[-kept:], peak)

    def _between(self, state: ForecastState) -> str:
        """The member the burst member follows between bursts: whichever of the level (flat
        stretches), Holt (swings) and the seasonal members (bursts at a steady period: they
        see the next one coming) has erred least."""
        best, name = math.inf, "holt"
        for i, m in enumerate(self.models):
            usable = m in _BETWEEN and (state.period > 0 or m not in ("snaive", "hw"))
            if usable and state.errors and state.errors[i] < best:
                best, name = state.errors[i], m
        return name

    def _burst(self, state: ForecastState, k: int) -> float:
        """Between bursts, see :meth:`_between`; inside one, its height for as long as the
        usual burst length says is left of it, then the level it rose from (a bin the burst
        covers in part, in part).

        A burst's start at a jittered time is seen by no member, but its end is: the naive
        forecast expects the burst to go on for one more bin after every one of them."""
        n, lengths = state.burst_len, state.burst_lengths
        if n == 0 or not lengths:
            return self._one(self._between(state), state, k)
        height = state.burst_peak
        if n == 1:  # its first bin may have caught only its start
            height = max(height, _quantile(state.burst_heights, 0.5))
        left = _quantile(lengths, 0.5) - state.burst_sum / height - (k - 1)
        return state.burst_base + height * min(1.0, max(0.0, left))

    def _holt_winters(
        self, state: ForecastState, hist: np.ndarray, rate: float, period: int
    ) -> tuple[float, float, np.ndarray]:
        if "hw" not in self.models or not period or len(hist) < 2 * period:
            return state.level, 0.0, np.zeros(0)
        if len(state.season) != period:  # a new period: start from the last two periods
            last = hist[-2 * period :]
            mean = float(last.mean())
            season = (last[:period] + last[period:]) / 2 - mean
            # season is indexed by absolute phase: bin b has phase b % period
            start = (state.bins + 1 - 2 * period) % period
            season = np.roll(season, start)
            return mean, 0.0, season
        a, b, g = 0.2, 0.02, 0.2
        phase = state.bins % period  # the phase of the bin just closed
        s = float(state.season[phase])
        level = a * (rate - s) + (1 - a) * (state.hw_level + state.trend)
        trend = 0.9 * (b * (level - state.hw_level) + (1 - b) * state.trend)
        season = state.season.copy()
        season[phase] = g * (rate - level) + (1 - g) * s
        return level, trend, season

    def _period(self, hist: np.ndarray) -> int:
        """The strongest period in the history, 0 when none is clear.

        Looked for in the autocorrelation of the first differences (differencing removes
        trends, so a ramp does not look periodic; sharp bursts stand out) and of the series less
        its least-squares line (a smooth swing, whose differences drown in noise); the clearer
        of the two wins.
        """
        n = len(hist)
        if n < 2 * self.min_period_bins + 2:
            return 0
        x = np.arange(n, dtype=float)
        slope, icpt = np.polyfit(x, hist, 1)
        best = (0.0, 0)
        for series in (np.diff(hist), hist - (slope * x + icpt)):
            found = self._acf_peak(series)
            if found[0] > best[0]:
                best = found
        return best[1] if best[0] >= 0.3 else 0

    def _acf_peak(self, d: np.ndarray) -> tuple[float, int]:
        d = d - d.mean()
        var = float((d * d).sum())
        top = min(self.max_period_bins, 2 * len(d) // 3)  # a period seen about twice
        if var <= 0 or top <= self.min_period_bins + 1:
            return 0.0, 0
        size = 1 << (2 * len(d) - 1).bit_length()
        f = np.fft.rfft(d, size)
        acf = np.fft.irfft(f * np.conj(f), size)[: len(d)] / var
        # Past the first lag where the series no longer resembles itself (a smooth swing
        # correlates with itself over short lags), the highest peak; the first local maximum
        # close to it wins, since a multiple of the period correlates about as well.
        below = np.nonzero(acf[: top + 1] < 0)[0]
        lo = max(self.min_period_bins, int(below[0]) if len(below) else top)
        seg = acf[lo : top + 1]
        if len(seg) < 3:
            return 0.0, 0
        best = float(seg.max())
        for i in range(1, len(seg) - 1):
            if seg[i] >= seg[i - 1] and seg[i] >= seg[i + 1] and seg[i] >= 0.85 * best:
                return float(seg[i]), i + lo
        return 0.0, 0  # the best is at the edge: not a period seen twice
