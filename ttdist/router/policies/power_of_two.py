"""power_of_two: sample two ready replicas at random, take the less loaded one.

Algorithm (Mitzenmacher's "power of two choices"): draw two distinct replicas uniformly
from a seeded generator; the one with the lower load (as in least_load) wins, a tie goes
to the first drawn. With one ready replica it is chosen. Parameters: ``seed`` (default 0)
makes the sequence reproducible; ``weights`` as in least_load.
"""

from __future__ import annotations

import random

from ttdist.router.policies.base import LoadWeights, Policy, ReplicaView, RequestInfo
from ttdist.router.policies.candidates import Candidates


class PowerOfTwo(Policy):
    name = "power_of_two"

    def __init__(self, seed: int = 0, weights: LoadWeights | None = None) -> None:
        self._rng = random.Random(seed)
        self.weights = weights or LoadWeights()

    def select(self, replicas: Candidates, request: RequestInfo) -> ReplicaView:
        if len(replicas) == 1:
            return replicas[0]
        i, j = self._rng.sample(range(len(replicas)), 2)   # the draws of sampling the list itself
        first, second = replicas[i], replicas[j]
        if self.weights.load(second) < self.weights.load(first):
            return second
        return first
