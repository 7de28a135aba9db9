"""``shoal simulate``: replay a workload on the production pool and autoscaler in virtual time.

``simulate(workload, "auto")`` runs one policy; :mod:`shoal.sim.workload` (also ``workloads``)
makes workloads from trace files and seeded generators; :mod:`shoal.scaling.baselines` holds the
field's autoscalers (Kubernetes HPA, Knative KPA, Ray Serve, FaaS keep-alive) as shoal policies.

    from shoal.sim import simulate, workloads
    w = workloads.generate("flash", rate=20, duration=1800, seed=1)
    for name in ("auto", "hpa", "kpa"):
        print(simulate(w, name, cold_start=2.0, max_size=200).summary())
"""

from shoal.scaling.baselines import HPAPolicy, KeepAlivePolicy, KPAPolicy, RayServePolicy
from shoal.scaling.registry import BASELINES
from shoal.sim import workload as workloads
from shoal.sim.backend import SimAgent, SimBackend, serve
from shoal.sim.placements import (
    Outage,
    PlacementOptions,
    RegionEntry,
    load_regions,
    parse_regions,
    placement_options,
)
from shoal.sim.run import POLICIES, SHOAL_POLICIES, SUMMARY_KEYS, Series, SimResult, simulate
from shoal.sim.workload import (
    Distribution,
    Exponential,
    Fixed,
    LogNormal,
    TraceError,
    Workload,
    generate,
    load_trace,
)

__all__ = [
    "BASELINES",
    "POLICIES",
    "SHOAL_POLICIES",
    "SUMMARY_KEYS",
    "Distribution",
    "Exponential",
    "Fixed",
    "HPAPolicy",
    "KPAPolicy",
    "KeepAlivePolicy",
    "LogNormal",
    "Outage",
    "PlacementOptions",
    "RayServePolicy",
    "RegionEntry",
    "Series",
    "SimAgent",
    "SimBackend",
    "SimResult",
    "TraceError",
    "Workload",
    "generate",
    "load_regions",
    "load_trace",
    "parse_regions",
    "placement_options",
    "serve",
    "simulate",
    "workloads",
]
