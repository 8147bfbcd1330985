"""What happened in the cluster, as the coordinator and the routers record it and the page shows it.

The coordinator's registry appends an ``Event`` at every replica state change and for its own
steps (weights, restarts, scaling decisions with their reasons); each router reports its own (migrations) with its routing-table
requests. The dashboard shows the last ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EventKind(StrEnum):
    REPLICA_STARTED = "replica_started"
    REPLICA_RESTARTED = "replica_restarted"
    REPLICA_REREGISTERED = "replica_reregistered"     # outlived a coordinator restart and heartbeat the new one
    REPLICA_RECOVERED = "replica_recovered"           # unhealthy, then heartbeats resumed
    REPLICA_UNHEALTHY = "replica_unhealthy"
    REPLICA_FAILED = "replica_failed"
    REPLICA_CRASH_LOOP = "replica_crash_loop"
    REPLICA_CANNOT_START = "replica_cannot_start"      # a start failure retrying cannot fix
    REPLICA_RESTARTING = "replica_restarting"
    REPLICA_DRAINING = "replica_draining"
    REPLICA_DRAINED = "replica_drained"
    WEIGHTS_CONVERTING = "weights_converting"
    WEIGHTS_READY = "weights_ready"
    COORDINATOR_RESTARTED = "coordinator_restarted"
    REQUEST_MIGRATED = "request_migrated"
    ROUTER_REFRESH_FAILED = "router_refresh_failed"
    SCALED_UP = "scaled_up"                           # the autoscaler added replicas (the message says why)
    SCALED_DOWN = "scaled_down"                       # the autoscaler drains replicas away (the message says why)
    COLD_START = "cold_start"                         # a replica it added serves: where the time went
    RESOURCE_REQUEST_FAILED = "resource_request_failed"   # Ray's autoscaler could not be asked for chips


@dataclass
class Event:
    time: float                     # unix seconds
    kind: str                       # an EventKind (a kind this version does not know stays a plain string)
    replica_id: str
    message: str
    model: str = ""                 # the served model it is about, where no replica says (scaling decisions)
