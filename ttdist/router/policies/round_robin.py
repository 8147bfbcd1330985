"""round_robin: each request goes to the next ready replica in replica-id order.

Algorithm: a counter advances by one per request; the replica at
``counter % len(ready replicas)`` (sorted by id) is chosen. When a replica leaves or joins
the ready set the rotation continues over the new set. No parameters.
"""

from __future__ import annotations

from ttdist.router.policies.base import Policy, ReplicaView, RequestInfo
from ttdist.router.policies.candidates import Candidates


class RoundRobin(Policy):
    name = "round_robin"

    def __init__(self) -> None:
        self._counter = 0

    def select(self, replicas: Candidates, request: RequestInfo) -> ReplicaView:
        chosen = replicas[self._counter % len(replicas)]
        self._counter += 1
        return chosen
