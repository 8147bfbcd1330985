"""Where one request may still go, and when it must stop trying.

A request that fails on a replica avoids that replica's *incarnation* (address + pid) for the
rest of its life, not its id: a replica restarted under the same id is a new process and is
eligible again. Engine errors (INTERNAL or UNKNOWN from a replica: its engine failed on this
request, or failed while running it) are counted per request: one that met an engine error on
``max_engine_errors`` replicas ends with INTERNAL naming them, so no single request walks
through the fleet. Other failures (connection lost, replica stopped) move the request, up to
``max_migrations`` times. A replica that answers RESOURCE_EXHAUSTED before any token is
skipped for this request; when every ready replica did, the request gets RESOURCE_EXHAUSTED.

``wait_for_replica`` is what the router does when no replica can take a request: it waits
(the routing table refreshes meanwhile) until one can or the wait's end passes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc

from ttdist.router.policies import NoReplicaError, ReplicaView
from ttdist.runtime.request_checks import RequestError
from ttdist.runtime.routing_table import ReplicaEntry, RoutingTable

ENGINE_ERROR_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
Incarnation = tuple[str, int]


def incarnation(entry: ReplicaEntry) -> Incarnation:
    return entry.address, entry.pid


@dataclass
class Attempts:
    """One request's history across replicas."""

    max_migrations: int
    max_engine_errors: int = 2
    failed_on: set[Incarnation] = field(default_factory=set)
    overloaded_on: set[Incarnation] = field(default_factory=set)
    tried: list[str] = field(default_factory=list)        # replica ids, in the order the request went there
    engine_errors: list[str] = field(default_factory=list)
    failures: int = 0

    def avoid(self, table: RoutingTable) -> frozenset[str]:
        """Ids of the replicas whose current incarnation this request must not go to."""
        skip = self.failed_on | self.overloaded_on
        return frozenset(e.replica_id for e in table.replicas if incarnation(e) in skip)

    def all_overloaded(self, table: RoutingTable, ready: Callable[[ReplicaEntry], bool]) -> bool:
        """Every ready replica this request has not failed on answered RESOURCE_EXHAUSTED."""
        left = [e for e in table.replicas if ready(e) and incarnation(e) not in self.failed_on]
        return bool(left) and all(incarnation(e) in self.overloaded_on for e in left)

    def overloaded(self, entry: ReplicaEntry) -> None:
        self.overloaded_on.add(incarnation(entry))

    def failed(self, entry: ReplicaEntry, code: grpc.StatusCode | None, message: str) -> RequestError | None:
        """Record a failure on ``entry``: the error to end the request with, or None to move it."""
        self.failed_on.add(incarnation(entry))
        self.failures += 1
        if code in ENGINE_ERROR_CODES:
            self.engine_errors.append(f"{entry.replica_id}: {message}")
            if len(self.engine_errors) >= self.max_engine_errors:
                return RequestError(
                    grpc.StatusCode.INTERNAL, "",
                    f"the engine failed on this request on {len(self.engine_errors)} replicas; not retried "
                    f"further ({' | '.join(self.engine_errors)})",
                )
        if self.failures > self.max_migrations:
            return RequestError(grpc.StatusCode.UNAVAILABLE, "", f"gave up after {self.failures} replica failures")
        return None


async def wait_for_replica(pick: Callable[[], ReplicaView], until: float, poll_s: float) -> ReplicaView:
    """``pick()`` as soon as it finds a replica; ``NoReplicaError`` once ``until`` (monotonic) passes."""
    while True:
        try:
            return pick()
        except NoReplicaError:
            left = until - time.monotonic()
            if left <= 0:
                raise
            await asyncio.sleep(min(poll_s, left))
