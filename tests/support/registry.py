"""The health registry as its tests start it: one replica ``r0`` starting, and a heartbeat."""

from __future__ import annotations

from ttdist.runtime.config import HealthConfig
from ttdist.runtime.registry import Heartbeat, Registry, ReplicaRecord

BEAT = Heartbeat(1, 0, 10, 12, 0.0, 5.0, 3, 4)


def registry() -> Registry:
    """A registry (unhealthy after 2 s, failed after 5 s, 30 s to start) holding replica r0, starting at 0."""
    reg = Registry(HealthConfig(unhealthy_after_s=2.0, failed_after_s=5.0, start_timeout_s=30.0))
    reg.add(ReplicaRecord("r0", 0, "1x1", "sim"), now=0.0)
    return reg
