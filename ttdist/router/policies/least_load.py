"""least_load: the replica with the least work queued.

Algorithm: load = running + waiting + pending prefill tokens / ``prefill_tokens_per_request``
(see ``LoadWeights``); the lowest load wins, ties go to the lowest replica id.
Parameter: ``prefill_tokens_per_request`` (default 512), how many prompt tokens awaiting
prefill count as one more request.
"""

from __future__ import annotations

from ttdist.router.policies.base import LoadWeights, Policy, ReplicaView, RequestInfo
from ttdist.router.policies.candidates import Candidates


class LeastLoad(Policy):
    name = "least_load"

    def __init__(self, weights: LoadWeights | None = None) -> None:
        self.weights = weights or LoadWeights()

    def select(self, replicas: Candidates, request: RequestInfo) -> ReplicaView:
        return replicas.least(self.weights)
