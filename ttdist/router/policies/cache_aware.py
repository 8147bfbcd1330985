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
How (not what) it computes: the replicas holding page 0 come from an index of page hashes to
holders (the router's ``PrefixIndex`` of the heartbeat sets, and one of its own for the hashes
it sent), then narrow page by page to those holding the next too; the last non-empty set holds
the longest match. A pick costs the prompt's pages and the holders, not a pass over every replica.
Parameters: ``balance_abs`` (default 8), ``balance_rel`` (default 1.5), ``remembered``
(default 16384 hashes remembered per replica, oldest forgotten first), ``weights`` as in
least_load.
"""

from __future__ import annotations

from collections import OrderedDict

from ttdist.router.policies.base import LoadWeights, Policy, ReplicaView, RequestInfo
from ttdist.router.policies.candidates import Candidates
from ttdist.router.policies.prefix_index import PrefixIndex


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
        self._sent_index = PrefixIndex()   # the same hashes, by hash: who was sent each

    def select(self, replicas: Candidates, request: RequestInfo) -> ReplicaView:
        if self._imbalanced(*replicas.load_range(self.weights)) or not request.block_hashes:
            chosen = replicas.least(self.weights)
        else:
            longest = self._longest(replicas, request.block_hashes)
            chosen = replicas.best(longest, self.weights) if longest else replicas.least(self.weights)
        self._remember(chosen.replica_id, request)
        return chosen

    def match_length(self, replica: ReplicaView, request: RequestInfo) -> int:
        """Leading prompt pages ``replica`` is believed to hold."""
        return self._match(replica, request)

    def _imbalanced(self, low: float, high: float) -> bool:
        return high - low > self.balance_abs and high > self.balance_rel * low

    def _longest(self, replicas: Candidates, hashes: tuple[int, ...]) -> set[str]:
        """The candidates believed to hold the most leading pages of ``hashes`` (empty: none holds page 0)."""
        alive = replicas.among(replicas.holders(hashes[0]))
        alive |= replicas.among(self._sent_index.holders(hashes[0]))
        for h in hashes[1:] if alive else ():
            narrower = alive.intersection(replicas.holders(h))
            narrower |= alive.intersection(self._sent_index.holders(h))
            if not narrower:
                break
            alive = narrower
        return alive

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
            if h not in sent:
                self._sent_index.add(replica_id, h)
            sent[h] = None
            sent.move_to_end(h)
        while len(sent) > self.remembered:
            self._sent_index.discard(replica_id, sent.popitem(last=False)[0])
