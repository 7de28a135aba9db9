"""Preemption sources: where a pool hears that its spot capacity is being taken back.

Each implements :class:`~shoal.pool.placement.PreemptionSource`: :class:`AwsSpotSource` reads
the EC2 instance metadata spot ``instance-action`` (IMDSv2), :class:`GcpPreemptionSource` the
Compute Engine ``preempted`` flag (plain polls or ``wait_for_change`` long polls), and
:class:`SimulatedPreemptions` draws them for the simulator from a rate or a trace. The notice
formats are the providers' own; the simulated market is not a provider's.
"""

from shoal.spot.aws import AWS_METADATA_URL, AwsSpotSource
from shoal.spot.gcp import GCP_METADATA_URL, GCP_NOTICE_S, GcpPreemptionSource
from shoal.spot.simulated import SimulatedPreemptions

__all__ = [
    "AWS_METADATA_URL",
    "GCP_METADATA_URL",
    "GCP_NOTICE_S",
    "AwsSpotSource",
    "GcpPreemptionSource",
    "SimulatedPreemptions",
]
