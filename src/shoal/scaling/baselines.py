"""The field's autoscalers, as pure shoal policies: Kubernetes HPA, Knative KPA, Ray Serve, and
FaaS keep-alive. (``fixed``, the fifth baseline of ``shoal simulate``, is shoal's
:class:`~shoal.scaling.policy.FixedPolicy`.)

Each follows its system's published algorithm with that system's defaults, which each class's
docstring lists with where they come from. They implement the
:class:`~shoal.scaling.policy.Policy` protocol — ``decide(snapshot, state, now)``, immutable
state, no clock — so they run anywhere a shoal policy does: ``scaling_policy={"policy":
"hpa"}`` builds one with bounds as its only guard, since each brings its own windows and delays.

How the pool's view maps onto theirs: an agent serves one call at a time, so a pod's CPU
utilization is whether its agent is busy; a request's "concurrency" (Knative) or "ongoing
requests" (Ray Serve) counts it from arrival to completion, queued or running (busy + queued);
"ready" pods are warm agents (idle + busy), the current replica count is the pool's target.

``on_demand`` says whether the system starts an instance the moment a request finds none free
(FaaS platforms do) or changes capacity only when its autoscaler says so (the others); the
simulator sets the pool's ``on_demand`` from it.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.pool.metrics import PoolMetrics
from shoal.scaling.policy import Decision

if TYPE_CHECKING:
    from shoal.scaling.config import ScalingPolicyConfig

Samples = tuple[tuple[float, float], ...]


def _record(samples: Samples, now: float, value: float, span: float) -> Samples:
    """``samples`` plus ``(now, value)``, without those older than ``span`` seconds."""
    start = bisect.bisect_right(samples, now - span, key=lambda s: s[0])
    return (*samples[start:], (now, value))


def _mean(samples: Samples, now: float, span: float) -> float:
    start = bisect.bisect_right(samples, now - span, key=lambda s: s[0])
    window = samples[start:]
    return sum(v for _, v in window) / len(window) if window else 0.0


def _in_flight(snapshot: PoolMetrics) -> float:
    """Calls running or queued (an agent serving several at once counts each)."""
    return float(max(snapshot.busy, snapshot.in_flight) + snapshot.queue_depth)


# -- Kubernetes HPA -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HPAState:
    last_sync: float | None = None
    # (time, metric per ready pod) over the metric lag plus one sync period
    samples: Samples = ()
    recommendations: Samples = ()  # (time, replicas) over the scale-down stabilization window
    ready: int = -1  # ready pods at the last decision
    became_ready: Samples = ()  # (time, pods that became ready then) over one metric window


@dataclass(frozen=True)
class HPAPolicy:
    """Kubernetes' Horizontal Pod Autoscaler on CPU utilization, with its default behavior.

    Every ``sync_period_s`` the controller takes the mean utilization of the ready pods and
    recommends ``ceil(ready * utilization / target)``, unless ``|utilization / target - 1|`` is
    within ``tolerance``; when scaling up, pods not yet ready count as idle (and a recommendation
    that then flips direction or falls within tolerance keeps the current count). Scale-down is
    stabilized: the highest recommendation of the last ``downscale_stabilization_s`` wins.
    Scale-up is limited per period to the larger of +``scale_up_pods`` and +100%.

    Defaults and sources (Kubernetes docs, "Horizontal Pod Autoscaling" and the autoscaling/v2
    API reference; kube-controller-manager flags):

    - ``target_utilization`` 0.8 — ``kubectl autoscale``'s CPU target when none is given (the
      API itself has no default);
    - ``tolerance`` 0.1 — ``--horizontal-pod-autoscaler-tolerance``;
    - ``sync_period_s`` 15 — ``--horizontal-pod-autoscaler-sync-period``; utilization is
      averaged over the samples since the last sync, as metrics-server's window does;
    - ``downscale_stabilization_s`` 300 and scale-down by up to 100% per 15 s — the default
      ``behavior.scaleDown``;
    - ``scale_up_pods`` 4 and ``scale_up_percent`` 100 per 15 s, ``selectPolicy: Max``, no
      up-stabilization — the default ``behavior.scaleUp``.

    Utilization saturates at 100% however long the queue, so HPA grows at most x1.25 per sync at
    the default target when the pool is overloaded: that is how HPA on CPU behaves.

    Metric delays: HPA reads what metrics-server last scraped, so the sync at time t sees the
    samples of ``(t - metric_lag_s - sync_period_s, t - metric_lag_s]`` (``metric_lag_s`` 15,
    metrics-server's default resolution); and a pod that became ready less than one metric
    window (``metric_window_s``, 15 s) ago has no usable sample yet, so it is set aside as not
    ready (HPA's ``--horizontal-pod-autoscaler-initial-readiness-delay`` logic).

    ``metric="inflight"`` (the ``hpa-inflight`` policy) is HPA on a custom per-pod metric,
    calls in flight (running and queued) per pod, with an ``AverageValue`` target of
    ``target_utilization`` x the agent's concurrency: it does not saturate, so a queue counts.
    """

    target_utilization: float = 0.8
    tolerance: float = 0.1
    sync_period_s: float = 15.0
    downscale_stabilization_s: float = 300.0
    scale_up_pods: int = 4
    scale_up_percent: float = 100.0
    metric_lag_s: float = 15.0
    metric_window_s: float = 15.0
    metric: str = "cpu"  # or "inflight"
    name: str = "hpa"
    on_demand: bool = False

    def initial_state(self) -> HPAState:
        return HPAState()

    def decide(self, snapshot: PoolMetrics, state: HPAState, now: float) -> Decision[HPAState]:
        current = snapshot.target_size
        ready = snapshot.idle + snapshot.busy
        span = self.metric_lag_s + self.sync_period_s
        samples = state.samples
        if ready:
            samples = _record(samples, now, self._metric(snapshot, ready), span)
        fresh = state.became_ready
        if state.ready >= 0 and ready > state.ready:
            fresh = _record(fresh, now, ready - state.ready, self.metric_window_s)
        young = sum(int(n) for t, n in fresh if t > now - self.metric_window_s)
        keep = HPAState(state.last_sync, samples, state.recommendations, ready, fresh)
        if state.last_sync is not None and now - state.last_sync < self.sync_period_s:
            return Decision(current, keep, "between syncs")
        seen = now - self.metric_lag_s
        lo = bisect.bisect_right(samples, seen - self.sync_period_s, key=lambda x: x[0])
        hi = bisect.bisect_right(samples, seen, key=lambda x: x[0])
        window = samples[lo:hi]
        measured = ready - young
        synced = dataclasses.replace(keep, last_sync=now)
        if not window or measured <= 0:
            return Decision(current, synced, "no ready pods with metrics to measure")
        util = sum(v for _, v in window) / len(window)
        target = self.target_utilization * (
            max(1, snapshot.max_concurrency) if self.metric == "inflight" else 1
        )
        ratio = util / target
        what = "in flight per pod" if self.metric == "inflight" else "utilization"
        basis = (
            f"{what} {util:.2f} ({self.metric_lag_s:g} s old) vs target {target:.2f}"
            if self.metric == "inflight"
            else f"utilization {util:.0%} ({self.metric_lag_s:g} s old) vs target "
            f"{self.target_utilization:.0%}"
        )
        unready = snapshot.starting + young
        if abs(ratio - 1) <= self.tolerance:
            rec, why = current, f"{basis}: within tolerance"
        elif ratio > 1 and unready:
            # Pods not yet ready (or without a sample yet) are assumed idle, which damps a
            # scale-up already under way.
            pods = measured + unready
            damped = util * measured / (target * pods)
            if abs(damped - 1) <= self.tolerance or damped < 1:
                rec, why = current, f"{basis}; {unready} pod(s) not ready: hold"
            else:
                rec, why = math.ceil(damped * pods), f"{basis} over {pods} pods"
        else:
            rec, why = math.ceil(ratio * measured), f"{basis} over {measured} ready pods"

        history = _record(state.recommendations, now, rec, self.downscale_stabilization_s)
        desired = rec
        if rec < current:
            highest = int(max(n for _, n in history))
            desired = min(current, max(rec, highest))
            if desired != rec:
                why += (
                    f"; stabilized at {desired} (highest in {self.downscale_stabilization_s:g} s)"
                )
        limit = max(
            current + self.scale_up_pods, math.ceil(current * (1 + self.scale_up_percent / 100))
        )
        if desired > limit:
            desired = limit
            why += f"; scale-up limited to {limit}"
        synced = dataclasses.replace(synced, recommendations=history)
        return Decision(desired, synced, f"{why}: {desired}")

    def _metric(self, snapshot: PoolMetrics, ready: int) -> float:
        """This instant's per-pod metric: busy share (CPU), or calls in flight per pod."""
        if self.metric == "inflight":
            return _in_flight(snapshot) / ready
        return snapshot.busy / ready


# -- Knative KPA ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KPAState:
    samples: Samples = ()  # (time, concurrency) over the stable window
    last_tick: float | None = None
    panic_since: float | None = None  # Knative's panicTime: the last tick over the threshold
    max_panic_pods: int = 0
    zero_since: float | None = None  # since when zero has been the decision
    desired: int = -1  # the last decision, held between ticks


@dataclass(frozen=True)
class KPAPolicy:
    """Knative's Pod Autoscaler (KPA) on concurrency, with its stable and panic windows.

    Every ``tick_s`` it averages the observed concurrency (requests in flight, queued ones
    included) over the ``stable_window_s`` and over the panic window (``panic_window_pct`` of
    it), and wants ``ceil(average / (target * target_utilization))`` pods from each. When the
    panic window wants ``panic_threshold`` * the ready pods or more it panics: it follows the
    larger of the two and never scales down, until the threshold has not been crossed for a
    stable window. Each tick may grow by x``max_scale_up_rate`` and shrink to
    1/``max_scale_down_rate`` of the ready pods. Zero is reached only after the decision has been
    zero for ``scale_to_zero_grace_s`` (and only if the pool's bounds allow zero).

    Defaults and sources (Knative Serving's ``config-autoscaler`` ConfigMap and the KPA docs;
    the algorithm is ``pkg/autoscaler/scaling/autoscaler.go``):

    - ``target`` 1 in-flight request per pod: a shoal agent serves one call at a time, as a
      Knative container with ``containerConcurrency: 1`` (Knative's own soft default,
      ``container-concurrency-target-default``, is 100 for multi-request containers);
    - ``target_utilization`` 0.7 — ``container-concurrency-target-percentage`` 70, so the pods
      aim at 0.7 requests each;
    - ``stable_window_s`` 60 — ``stable-window``; ``panic_window_pct`` 10 — 6 s;
    - ``panic_threshold`` 2.0 — ``panic-threshold-percentage`` 200;
    - ``max_scale_up_rate`` 1000, ``max_scale_down_rate`` 2;
    - ``scale_to_zero_grace_s`` 30 — ``scale-to-zero-grace-period``;
    - ``tick_s`` 2 — the autoscaler's tick interval.
    """

    target: float = 1.0
    target_utilization: float = 0.7
    stable_window_s: float = 60.0
    panic_window_pct: float = 10.0
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_to_zero_grace_s: float = 30.0
    tick_s: float = 2.0
    name: str = "kpa"
    on_demand: bool = False

    def initial_state(self) -> KPAState:
        return KPAState()

    def decide(self, snapshot: PoolMetrics, state: KPAState, now: float) -> Decision[KPAState]:
        current = snapshot.target_size
        samples = _record(state.samples, now, _in_flight(snapshot), self.stable_window_s)
        if state.last_tick is not None and now - state.last_tick < self.tick_s:
            held = state.desired if state.desired >= 0 else current
            return Decision(
                held,
                KPAState(
                    samples,
                    state.last_tick,
                    state.panic_since,
                    state.max_panic_pods,
                    state.zero_since,
                    state.desired,
                ),
                "between ticks",
            )
        ready_pods = snapshot.idle + snapshot.busy
        ready = max(1, ready_pods)
        target = self.target * self.target_utilization
        stable = _mean(samples, now, self.stable_window_s)
        panic = _mean(samples, now, self.stable_window_s * self.panic_window_pct / 100)
        up_limit = math.ceil(self.max_scale_up_rate * ready)
        down_limit = math.floor(ready / self.max_scale_down_rate)
        stable_pods = min(max(math.ceil(stable / target - 1e-9), down_limit), up_limit)
        panic_want = math.ceil(panic / target - 1e-9)
        panic_pods = min(max(panic_want, down_limit), up_limit)
        over = panic_want / ready >= self.panic_threshold

        panic_since, max_panic = state.panic_since, state.max_panic_pods
        if over:
            panic_since = now
        elif panic_since is not None and panic_since + self.stable_window_s < now:
            panic_since, max_panic = None, 0
        basis = f"concurrency {stable:.2f} (60 s), {panic:.2f} (6 s), target {target:g}/pod"
        if panic_since is not None:
            max_panic = max(max_panic, stable_pods, panic_pods)
            desired, why = max_panic, f"{basis}: panic mode, {max_panic} pods"
        else:
            desired, why = stable_pods, f"{basis}: {stable_pods} pods"

        zero_since = state.zero_since
        if desired == 0:
            zero_since = now if zero_since is None else zero_since
            if now - zero_since < self.scale_to_zero_grace_s:
                desired = min(current, 1)
                why += f"; zero after {self.scale_to_zero_grace_s:g} s grace"
        else:
            zero_since = None
        next_state = KPAState(samples, now, panic_since, max_panic, zero_since, desired)
        return Decision(desired, next_state, why)


# -- Ray Serve ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayServeState:
    samples: Samples = ()  # (time, ongoing requests) over the look-back period, as pushed
    streak: int = 0  # +1 while decisions say up, -1 while they say down, 0 otherwise
    streak_since: float = 0.0
    pushed: float | None = None  # when the replicas last pushed their metrics


@dataclass(frozen=True)
class RayServePolicy:
    """Ray Serve's default autoscaling policy (``replica_queue_length_autoscaling_policy``).

    Wants ``ceil(ongoing / target_ongoing_requests)`` replicas, ``ongoing`` being the requests
    queued or running averaged over ``look_back_period_s``, moved toward by the up/down
    scaling factors. A change is applied only once every decision for ``upscale_delay_s`` (or
    ``downscale_delay_s``) has pointed the same way; a decision the other way, or none, resets
    the count. From zero running replicas, any request scales to one at once (the cold-start
    fast path). Scale-down stops at one replica except from one to zero.

    Defaults and sources (``ray.serve.config.AutoscalingConfig``, Ray 2.32+, and
    ``ray/serve/autoscaling_policy.py``):

    - ``target_ongoing_requests``: Ray's default is 2 (1 before Ray 2.32) for replicas that take
      several requests at once; a shoal agent takes ``max_concurrency`` (one by default), so
      here it is that — ``target_ongoing_requests = max_ongoing_requests``, as one would deploy
      a one-call replica — unless given;
    - ``upscale_delay_s`` 30, ``downscale_delay_s`` 600;
    - ``upscaling_factor`` / ``downscaling_factor`` 1.0 (``smoothing_factor``);
    - ``look_back_period_s`` 30;
    - ``metrics_interval_s`` 10: replicas push their ongoing requests that often, so the
      controller averages the pushed samples only, and its view lags by up to that much.
    """

    target_ongoing_requests: float | None = None
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    upscaling_factor: float = 1.0
    downscaling_factor: float = 1.0
    look_back_period_s: float = 30.0
    metrics_interval_s: float = 10.0
    name: str = "rayserve"
    on_demand: bool = False

    def initial_state(self) -> RayServeState:
        return RayServeState()

    def decide(
        self, snapshot: PoolMetrics, state: RayServeState, now: float
    ) -> Decision[RayServeState]:
        current = snapshot.target_size
        ongoing = _in_flight(snapshot)
        samples, pushed = state.samples, state.pushed
        if pushed is None or now - pushed >= self.metrics_interval_s - 1e-9:
            samples, pushed = _record(samples, now, ongoing, self.look_back_period_s), now
        running = snapshot.idle + snapshot.busy
        if running == 0:
            if ongoing > 0:
                up = max(math.ceil(self.upscaling_factor), current)
                return Decision(
                    up,
                    RayServeState(samples, pushed=pushed),
                    f"{ongoing:.0f} request(s) and no replica: {up}",
                )
            idle = RayServeState(samples, pushed=pushed)
            return Decision(current, idle, "no replica, no request")
        avg = _mean(samples, now, self.look_back_period_s)
        per = self.target_ongoing_requests or max(1, snapshot.max_concurrency)
        want = avg / per
        factor = self.upscaling_factor if want > running else self.downscaling_factor
        desired = math.ceil(running + factor * (want - running) - 1e-9)
        if math.ceil(want - 1e-9) < running and desired == running:
            desired -= 1  # a small factor must not leave the scale-down stuck
        basis = f"{avg:.2f} ongoing (30 s, pushed every {self.metrics_interval_s:g} s) / {per:g}"
        if desired > current:
            streak, since = (1, state.streak_since) if state.streak > 0 else (1, now)
            if now - since >= self.upscale_delay_s:
                return Decision(
                    desired, RayServeState(samples, pushed=pushed), f"{basis}: up to {desired}"
                )
            return Decision(
                current,
                RayServeState(samples, streak, since, pushed),
                f"{basis}: wants {desired}, up for {now - since:.0f}/{self.upscale_delay_s:g} s",
            )
        if desired < current:
            streak, since = (-1, state.streak_since) if state.streak < 0 else (-1, now)
            if current > 1:
                desired = max(1, desired)
            if now - since >= self.downscale_delay_s:
                return Decision(
                    desired, RayServeState(samples, pushed=pushed), f"{basis}: down to {desired}"
                )
            return Decision(
                current,
                RayServeState(samples, streak, since, pushed),
                f"{basis}: wants {desired}, down for {now - since:.0f}/"
                f"{self.downscale_delay_s:g} s",
            )
        return Decision(current, RayServeState(samples, pushed=pushed), f"{basis}: steady")


# -- FaaS keep-alive ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeepAliveState:
    peaks: Samples = ()  # (time, in flight), decreasing in-flight: the window's running maximum


@dataclass(frozen=True)
class KeepAlivePolicy:
    """FaaS keep-alive: one instance per concurrent request, each kept ``keep_alive_s`` after
    its last use.

    Modelled as ``desired = the most requests in flight at once over the last keep_alive_s``:
    an instance that served the peak stays until the peak is that old. A request that finds no
    free instance starts one at once (``on_demand``), as a FaaS platform does.

    Defaults and sources: ``keep_alive_s`` 600 — AWS Lambda's keep-alive of about 10 minutes
    (measured in "Serverless in the Wild", Shahrad et al., USENIX ATC 2020, and in "Peeking
    Behind the Curtains of Serverless Platforms", Wang et al., USENIX ATC 2018). Azure
    Functions' Consumption plan keeps an idle instance about 20 minutes: ``keepalive:1200`` in
    ``shoal simulate`` (``idle_terminate: 1200``).
    """

    keep_alive_s: float = 600.0
    name: str = "keepalive"
    on_demand: bool = True

    def initial_state(self) -> KeepAliveState:
        return KeepAliveState()

    def decide(
        self, snapshot: PoolMetrics, state: KeepAliveState, now: float
    ) -> Decision[KeepAliveState]:
        value = _in_flight(snapshot)
        peaks = state.peaks
        start = bisect.bisect_right(peaks, now - self.keep_alive_s, key=lambda s: s[0])
        end = len(peaks)
        while end > start and peaks[end - 1][1] <= value:
            end -= 1  # a later, higher sample outlives and outweighs these
        peaks = (*peaks[start:end], (now, value))
        desired = int(peaks[0][1])
        return Decision(
            desired,
            KeepAliveState(peaks),
            f"{desired} in flight at most over the last {self.keep_alive_s:g} s",
        )


# -- from a scaling_policy ------------------------------------------------------------------------
# Each baseline with its defaults, and the ``scaling_policy`` keys a user gave explicitly mapped
# onto its own knobs. Which names pick them is :mod:`shoal.scaling.registry`'s business.


def _given(config: ScalingPolicyConfig) -> Mapping[str, Any]:
    return {k: getattr(config, k) for k in config.model_fields_set}


def hpa_from_config(config: ScalingPolicyConfig) -> HPAPolicy:
    """``target_utilization``; ``cooldown_period`` is HPA's scale-down stabilization."""
    given, hpa = _given(config), HPAPolicy()
    if config.policy_name == "hpa-inflight":
        hpa = dataclasses.replace(hpa, metric="inflight", name="hpa-inflight")
    if "target_utilization" in given:
        hpa = dataclasses.replace(hpa, target_utilization=given["target_utilization"])
    if "cooldown_period" in given:
        hpa = dataclasses.replace(hpa, downscale_stabilization_s=given["cooldown_period"])
    return hpa


def kpa_from_config(config: ScalingPolicyConfig) -> KPAPolicy:
    """``target_utilization``; ``idle_terminate`` is KPA's scale-to-zero grace."""
    given, kpa = _given(config), KPAPolicy()
    if "target_utilization" in given:
        kpa = dataclasses.replace(kpa, target_utilization=given["target_utilization"])
    if "idle_terminate" in given:
        kpa = dataclasses.replace(kpa, scale_to_zero_grace_s=given["idle_terminate"])
    return kpa


def rayserve_from_config(config: ScalingPolicyConfig) -> RayServePolicy:
    """``cooldown_period`` is Ray Serve's downscale delay."""
    given, ray = _given(config), RayServePolicy()
    if "cooldown_period" in given:
        ray = dataclasses.replace(ray, downscale_delay_s=given["cooldown_period"])
    return ray


def keepalive_from_config(config: ScalingPolicyConfig) -> KeepAlivePolicy:
    """``idle_terminate`` is the keep-alive."""
    given, keep = _given(config), KeepAlivePolicy()
    if "idle_terminate" in given:
        keep = dataclasses.replace(keep, keep_alive_s=given["idle_terminate"])
    return keep
