"""cache_aware: send a request where the longest prefix of its prompt is already cached.

Algorithm (after SGLang's cache-aware router):
1. Imbalance guard: if the busiest and the idlest ready replica differ by more than
   ``balance_abs`` requests *and* the busiest carries more than ``balance_rel`` times the
   idlest's load, route by least load (cache affinity must not pile work on one replica).
2. Otherwise score each replica by the leading page hashes of the prompt
   (``RequestInfo.block_hashes``, chained, so a hit on hash i implies hits on 0..i) it can
   serve without prefill, the way its engine looks them up at admission:
   - device pages: the leading hashes its prefix cache holds (its last heartbeat's
     ``prefix_hashes`` plus the hashes of prompts this policy recently sent it: heartbeats
     lag; without this a burst of same-prefix requests would scatter), 1 each;
   - tier pages: the hashes right after those that its KV tiers could restore
     (``tier_prefix_hashes``: its host tier, and the node tier its host's replicas share),
     ``tier_weight`` each. A restored page skips its prefill but costs a host-to-chip copy
     (and a file read from the node tier) before the prompt's first chunk, so it counts for
     less: at the default 0.5 a device match wins at equal length, and a tier match must be
     more than twice as long as a device match to beat it.
   A node-tier page is in the tier set of every replica of that host: it scores them all
   alike (load decides among them) and lifts them over replicas on other hosts.
3. The highest score wins; ties go to the lower load, then the lower replica id. With no
   match at all, least load decides.
How (not what) it computes: the replicas holding page 0 come from indexes of page hashes to
holders (the router's ``PrefixIndex`` of the heartbeat sets, one of the tier sets, and one of its
own for the hashes it sent), then narrow page by page: a replica whose device run ends goes on
in its tier set, grouped by where its device run ended; each group narrows with one set
operation per page. A pick costs the prompt's pages and the holders, not a pass over every replica.
Parameters: ``balance_abs`` (default 8), ``balance_rel`` (default 1.5), ``remembered``
(default 16384 hashes remembered per replica, oldest forgotten first), ``tier_weight``
(default 0.5, in [0, 1]; 0 ignores the tiers), ``weights`` as in least_load.
"""

from __future__ import annotations

from collections import OrderedDict

from ttdist.router.policies.base import LoadWeights, Policy, ReplicaView, RequestInfo
from ttdist.router.policies.candidates import Candidates
from ttdist.router.policies.prefix_index import PrefixIndex

TIER_WEIGHT = 0.5


class CacheAware(Policy):
    name = "cache_aware"

    def __init__(
        self,
        balance_abs: float = 8.0,
        balance_rel: float = 1.5,
        remembered: int = 16384,
        weights: LoadWeights | None = None,
        tier_weight: float = TIER_WEIGHT,
    ) -> None:
        if not 0.0 <= tier_weight <= 1.0:
            raise ValueError(f"cache_aware's tier_weight must be in [0, 1] (a device page counts 1), got {tier_weight}")
        self.tier_weight = tier_weight
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
            top = self._top_scored(replicas, request.block_hashes)
            chosen = replicas.best(top, self.weights) if top else replicas.least(self.weights)
        self._remember(chosen.replica_id, request)
        return chosen

    def match_length(self, replica: ReplicaView, request: RequestInfo) -> int:
        """Leading prompt pages ``replica`` is believed to hold on its chips."""
        return self._match(replica, request)

    def score(self, replica: ReplicaView, request: RequestInfo) -> float:
        """Device pages matched + ``tier_weight`` x the tier pages right after them (one view's score)."""
        device = self._match(replica, request)
        tier = 0
        if self.tier_weight > 0:
            for h in request.block_hashes[device:]:
                if h not in replica.tier_prefix_hashes:
                    break
                tier += 1
        return device + self.tier_weight * tier

    def _imbalanced(self, low: float, high: float) -> bool:
        return high - low > self.balance_abs and high > self.balance_rel * low

    def _top_scored(self, replicas: Candidates, hashes: tuple[int, ...]) -> set[str]:
        """The candidates with the highest ``score`` for ``hashes`` (empty: none holds page 0 anywhere)."""
        weight, top = self.tier_weight, _Top()
        device = replicas.among(replicas.holders(hashes[0]))
        device |= replicas.among(self._sent_index.holders(hashes[0]))
        tiered: dict[int, set[str]] = {}   # device run length -> replicas going on in their tier sets
        if weight > 0:
            first = replicas.among(replicas.tier_holders(hashes[0])) - device
            if first:
                tiered[0] = first
        for i, h in enumerate(hashes[1:], 1):
            if not (device or tiered):
                break
            narrower = device.intersection(replicas.holders(h))
            narrower |= device.intersection(self._sent_index.holders(h))
            ended, device = device - narrower, narrower
            if weight == 0:
                top.offer(ended, i)
                continue
            in_tiers = replicas.tier_holders(h)
            for run, ids in list(tiered.items()):
                kept = ids.intersection(in_tiers)
                top.offer(ids - kept, run + weight * (i - run))
                if kept:
                    tiered[run] = kept
                else:
                    del tiered[run]
            if ended:
                on = ended.intersection(in_tiers)
                top.offer(ended - on, i)
                if on:
                    tiered[i] = on
        n = len(hashes)
        top.offer(device, n)
        for run, ids in tiered.items():
            top.offer(ids, run + weight * (n - run))
        return top.ids

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


class _Top:
    """The ids offered with the highest score so far."""

    def __init__(self) -> None:
        self.score = 0.0
        self.ids: set[str] = set()

    def offer(self, ids: set[str], score: float) -> None:
        if not ids or score < self.score:
            return
        if score > self.score:
            self.score, self.ids = score, set(ids)
        else:
            self.ids |= ids
