"""cache_aware: send a request where the longest prefix of its prompt is already cached.

Algorithm (after SGLang's cache-aware router):
1. Imbalance guard: if the busiest and the idlest ready replica differ by more than
   ``balance_abs`` requests *and* the busiest carries more than ``balance_rel`` times the
   idlest's load, route by least load (cache affinity must not pile work on one replica).
2. Otherwise score each replica by how many leading page hashes of the prompt
   (``RequestInfo.block_hashes``, chained, so a hit on hash i implies hits on 0..i) it holds:
   the hashes from its last heartbeat plus the hashes of prompts this policy recently sent it
   (heartbeats lag; without this a burst of same-prefix requests would scatter).
3. The longest match wins; ties go to the lower load, then the lower replica id. With no
   match at all, least load decides.
Parameters: ``balance_abs`` (default 8), ``balance_rel`` (default 1.5), ``remembered``
(default 16384 hashes remembered per replica, oldest forgotten first), ``weights`` as in
least_load.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from ttdist.router.policies.base import LoadWeights, Policy, ReplicaView, RequestInfo


class CacheAware(Policy):
    name = "cache_aware"

    def __init__(
        self,
        balance_abs: float = 8.0,
        balance_rel: float = 1.5,
        remembered: int = 16384,
        weights: LoadWeights | None = None,
    ) -> None:
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.remembered = remembered
        self.weights = weights or LoadWeights()
        self._sent: dict[str, OrderedDict[int, None]] = {}

    def select(self, replicas: Sequence[ReplicaView], request: RequestInfo) -> ReplicaView:
        loads = {r.replica_id: self.weights.load(r) for r in replicas}
        least = min(replicas, key=lambda r: (loads[r.replica_id], r.replica_id))
        if self._imbalanced(loads.values()) or not request.block_hashes:
            chosen = least
        else:   # only a replica holding the first page can match at all: score just those
            first, sent = request.block_hashes[0], self._sent
            held = [r for r in replicas if first in r.prefix_hashes or first in sent.get(r.replica_id, ())]
            chosen = max(held, key=lambda r: (self._match(r, request), -loads[r.replica_id])) if held else least
        self._remember(chosen.replica_id, request)
        return chosen


    def match_length(self, replica: ReplicaView, request: RequestInfo) -> int:
        """Leading prompt pages ``replica`` is believed to hold."""
        return self._match(replica, request)

    def _imbalanced(self, loads) -> bool:
        values = list(loads)
        high, low = max(values), min(values)
        return high - low > self.balance_abs and high > self.balance_rel * low

    def _match(self, replica: ReplicaView, request: RequestInfo) -> int:
        sent = self._sent.get(replica.replica_id, {})
        n = 0
        for h in request.block_hashes:
            if h not in replica.prefix_hashes and h not in sent:
                break
            n += 1
        return n

    def _remember(self, replica_id: str, request: RequestInfo) -> None:
        sent = self._sent.setdefault(replica_id, OrderedDict())
        for h in request.block_hashes:
            sent[h] = None
            sent.move_to_end(h)
        while len(sent) > self.remembered:
            sent.popitem(last=False)
