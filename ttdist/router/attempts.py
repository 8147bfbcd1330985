"""Where one request may still go, and when it must stop trying.

A request that fails on a replica avoids that replica's *incarnation* (address + pid) for the
rest of its life, not its id: a replica restarted under the same id is a new process and is
eligible again. A replica that answers RESOURCE_EXHAUSTED before any token is skipped for this
request; when every ready replica did, the request gets RESOURCE_EXHAUSTED.

Only failures that implicate the request count against it (``Failure.implicates``):

- its own error: the engine failed on this request (INTERNAL or UNKNOWN from the replica for
  this request alone), or the replica ended it in another way of its own; one that met an
  engine error on ``max_engine_errors`` replicas ends with INTERNAL naming them, so no single
  request walks through the fleet;
- being the ONE stream a replica died with (its stream to the router broke, or its engine
  failed as a whole, with no other stream there): a request that was alone on
  ``max_lone_deaths`` replicas that died ends with INTERNAL and is not sent to a third (the
  poison rule: a request that kills replicas stops after two).

A replica death that takes several streams at once (a lost host, a SIGKILL, a restart, an
engine that failed under a full batch) implicates none of them, and a replica that could not be
reached (UNAVAILABLE before its stream was up) neither: the request moves, waiting for a ready
replica within its deadline, however often that happens; ``max_moves`` only bounds a request
without a deadline. More than ``max_migrations`` implicating failures end it with UNAVAILABLE.

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


@dataclass(frozen=True)
class Failure:
    """One failure of a request on a replica: the replica's status code (None: the stream
    ended without one), its words, and how many streams it took at once (0: this request's own)."""

    code: grpc.StatusCode | None
    message: str
    died_with: int = 0

    @property
    def own_engine_error(self) -> bool:
        return self.died_with == 0 and self.code in ENGINE_ERROR_CODES

    @property
    def lone_death(self) -> bool:
        return self.died_with == 1

    @property
    def implicates(self) -> bool:
        """The failure counts against the request: its own, or a replica that died with it alone."""
        if self.died_with == 0:
            return self.code != grpc.StatusCode.UNAVAILABLE   # unreachable / stopped replica: not its fault
        return self.lone_death


@dataclass
class Attempts:
    """One request's history across replicas."""

    max_migrations: int
    max_engine_errors: int = 2
    max_lone_deaths: int = 2
    max_moves: int = 32
    failed_on: set[Incarnation] = field(default_factory=set)
    overloaded_on: set[Incarnation] = field(default_factory=set)
    tried: list[str] = field(default_factory=list)        # replica ids, in the order the request went there
    engine_errors: list[str] = field(default_factory=list)
    lone_deaths: list[str] = field(default_factory=list)
    failures: int = 0          # the ones that implicate this request
    moves: int = 0             # every failure, implicating or not

    def avoid(self, table: RoutingTable) -> frozenset[str]:
        """Ids of the replicas whose current incarnation this request must not go to."""
        skip = self.failed_on | self.overloaded_on
        if not skip:
            return frozenset()
        return frozenset(e.replica_id for e in table.replicas if incarnation(e) in skip)

    def all_overloaded(self, table: RoutingTable, ready: Callable[[ReplicaEntry], bool]) -> bool:
        """Every ready replica this request has not failed on answered RESOURCE_EXHAUSTED."""
        left = [e for e in table.replicas if ready(e) and incarnation(e) not in self.failed_on]
        return bool(left) and all(incarnation(e) in self.overloaded_on for e in left)

    def overloaded(self, entry: ReplicaEntry) -> None:
        self.overloaded_on.add(incarnation(entry))

    def failed(self, entry: ReplicaEntry, failure: Failure, deadline: float | None = None) -> RequestError | None:
        """Record ``failure`` on ``entry``: the error to end the request with, or None to move it.
        ``deadline`` (monotonic, None: none) lifts the ``max_moves`` bound: the deadline bounds it."""
        self.failed_on.add(incarnation(entry))
        self.moves += 1
        where = f"{entry.replica_id}: {failure.message}"
        for counts, found, limit, what in (
            (failure.own_engine_error, self.engine_errors, self.max_engine_errors,
             "the engine failed on this request on {n} replicas; not retried further"),
            (failure.lone_death, self.lone_deaths, self.max_lone_deaths,
             "this request was the only stream on {n} replicas that failed; not sent to another"),
        ):
            if counts:
                found.append(where)
                if len(found) >= limit:
                    return RequestError(grpc.StatusCode.INTERNAL, "",
                                        f"{what.format(n=len(found))} ({' | '.join(found)})")
        if failure.implicates:
            self.failures += 1
            if self.failures > self.max_migrations:
                return RequestError(grpc.StatusCode.UNAVAILABLE, "",
                                    f"gave up after {self.failures} replica failures that implicate this request")
        if deadline is None and self.moves > self.max_moves:
            return RequestError(grpc.StatusCode.UNAVAILABLE, "",
                                f"gave up after {self.moves} replica failures (the request has no deadline)")
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
