"""A replica's health state, as the coordinator's registry keeps it and every view shows it.

``starting -> ready <-> unhealthy -> failed``; ``failed -> starting`` when the coordinator
restarts the replica; ``ready`` or ``unhealthy -> draining`` when it is taken out of routing on
purpose (runtime/registry.py has the whole machine). The values are the strings the status
API, ``/metrics``, the page and the gRPC ``ReplicaStatus.state`` carry, so a ``ReplicaState``
compares equal to its string.
"""

from __future__ import annotations

from enum import StrEnum


class ReplicaState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"    # finishing its streams before a restart or removal on purpose; gets no new ones
    FAILED = "failed"


def state_label(state: ReplicaState, crash_loop: bool) -> str:
    """The state as shown to people: a replica failed too often in a row is "failed (crash loop)"."""
    return f"{state} (crash loop)" if crash_loop else str(state)
