"""Every policy picks through the router's kept ``Pool`` exactly what the plain pass over the
views picked: the reference below is that pass (the policies as they were before the pool, with
cache_aware's tier pages at half a device page), run side by side on random tables (prefix and
KV-tier sets), this router's own loads moving, suspects and exclusions."""

from __future__ import annotations

import random
import time
from collections import OrderedDict

import pytest

from ttdist.dashboard.replica_state import ReplicaState
from ttdist.router.policies import LoadWeights, NoReplicaError, ReplicaView, RequestInfo, make_policy, route
from ttdist.router.replica_set import SUSPECT, ReplicaSet
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.routing_table import ReplicaEntry, RoutingTable

CARD = ModelCard("scripted", 64, 256, 16)
W = LoadWeights()


class Reference:
    """The four policies as one pass over a list of views each (the algorithms of policies/*.py)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counter = 0
        self.rng = random.Random(0)
        self.sent: dict[str, OrderedDict[int, None]] = {}

    def route(self, views: list[ReplicaView], request: RequestInfo, exclude: frozenset[str]) -> str:
        healthy = sorted((r for r in views if r.state == ReplicaState.READY and r.replica_id not in exclude),
                         key=lambda r: r.replica_id)
        if not healthy:
            raise NoReplicaError("none")
        return getattr(self, self.name)(healthy, request).replica_id

    def round_robin(self, replicas, request):
        chosen = replicas[self.counter % len(replicas)]
        self.counter += 1
        return chosen

    def least_load(self, replicas, request):
        return min(replicas, key=lambda r: (W.load(r), r.replica_id))

    def power_of_two(self, replicas, request):
        if len(replicas) == 1:
            return replicas[0]
        first, second = self.rng.sample(list(replicas), 2)
        return second if W.load(second) < W.load(first) else first

    def cache_aware(self, replicas, request):
        loads = {r.replica_id: W.load(r) for r in replicas}
        least = min(replicas, key=lambda r: (loads[r.replica_id], r.replica_id))
        high, low = max(loads.values()), min(loads.values())
        if (high - low > 8.0 and high > 1.5 * low) or not request.block_hashes:
            chosen = least
        else:
            first = request.block_hashes[0]
            held = [r for r in replicas if first in r.prefix_hashes or first in self.sent.get(r.replica_id, ())
                    or first in r.tier_prefix_hashes]
            chosen = max(held, key=lambda r: (self.score(r, request), -loads[r.replica_id])) if held else least
        sent = self.sent.setdefault(chosen.replica_id, OrderedDict())
        for h in request.block_hashes:
            sent[h] = None
            sent.move_to_end(h)
        while len(sent) > 16384:
            sent.popitem(last=False)
        return chosen

    def score(self, replica, request):
        """Device pages, then half a point per tier page right after them."""
        sent = self.sent.get(replica.replica_id, {})
        n = 0
        for h in request.block_hashes:
            if h not in replica.prefix_hashes and h not in sent:
                break
            n += 1
        tier = 0
        for h in request.block_hashes[n:]:
            if h not in replica.tier_prefix_hashes:
                break
            tier += 1
        return n + 0.5 * tier


def prompts(rng: random.Random, count: int) -> list[tuple[int, ...]]:
    """Page-hash chains: a few shared heads (system prompts), then their own pages."""
    heads = [tuple(rng.getrandbits(40) for _ in range(2)) for _ in range(3)]
    return [(rng.choice(heads) if rng.random() < 0.6 else ()) + tuple(rng.getrandbits(40) for _ in range(4))
            for _ in range(count)]


def reference_views(replicas: ReplicaSet, loads: dict[str, tuple[int, int, int]]) -> list[ReplicaView]:
    """What a policy saw before: each table entry, this router's count where larger, suspects marked."""
    now = time.monotonic()
    suspected = {rid for rid, s in replicas.suspects.items()
                 if replicas.table.entry(rid) is not None and s.covers(replicas.table.entry(rid), now)}
    out = []
    for e in replicas.table.replicas:
        running, waiting, pending = loads.get(e.replica_id, (0, 0, 0))
        out.append(ReplicaView(e.replica_id, SUSPECT if e.replica_id in suspected else e.state,
                               max(e.running, running), max(e.waiting, waiting), pending, e.prefix_hashes,
                               e.tier_prefix_hashes))
    return out


@pytest.mark.parametrize("count", [24, 64])   # random.sample draws one way up to 21 ready replicas, another above
@pytest.mark.parametrize("name", ["round_robin", "least_load", "power_of_two", "cache_aware"])
def test_picks_through_the_pool_match_the_plain_pass(name, count):
    rng = random.Random(11)
    pool_of_prompts = prompts(rng, 60)
    replicas = ReplicaSet("", 1000.0)
    policy, reference = make_policy(name), Reference(name)
    ids = [f"replica-{k:02d}" for k in range(count)]
    cached = {rid: frozenset(h for p in rng.sample(pool_of_prompts, 6) for h in p) for rid in ids}
    # KV tiers: a node tier shared by each 4 replicas, plus each one's host tier (prompt heads cut short)
    nodes = [frozenset(h for p in rng.sample(pool_of_prompts, 4) for h in p[:rng.randint(1, len(p))])
             for _ in range(count // 4)]
    tiers = {rid: nodes[k // 4] | frozenset(h for p in rng.sample(pool_of_prompts, 3) for h in p[:rng.randint(1, len(p))])
             for k, rid in enumerate(ids)}
    pids = dict.fromkeys(ids, 1)
    inflight: list[tuple[str, int, bool]] = []
    own: dict[str, list[int]] = {}
    picked = []
    for step in range(400):
        if step % 20 == 0:   # a new table: heartbeat figures, states, sets, membership move
            for rid in rng.sample(ids, 4):
                cached[rid] = frozenset(h for p in rng.sample(pool_of_prompts, 6) for h in p)
            if rng.random() < 0.3:
                pids[rng.choice(ids)] += 1   # restarted: a new incarnation (suspicion ends)
            present = [rid for rid in ids if rng.random() < 0.9]
            states = [ReplicaState.READY] * 6 + [ReplicaState.UNHEALTHY, ReplicaState.DRAINING]
            replicas.apply(RoutingTable(CARD, tuple(
                ReplicaEntry(rid, f"{rid}:1", rng.choice(states), pid=pids[rid], running=rng.randrange(4),
                             waiting=rng.randrange(3), prefix_hashes=cached[rid], tier_prefix_hashes=tiers[rid])
                for rid in present)))
        if rng.random() < 0.03 and replicas.table.replicas:
            replicas.suspect(rng.choice(replicas.table.replicas))
        base = rng.choice(pool_of_prompts)
        hashes = base[: rng.randint(1, len(base))] + (rng.getrandbits(40),) if rng.random() < 0.8 else ()
        info = RequestInfo(f"q{step}", 16 * max(1, len(hashes)), hashes)
        exclude = frozenset(rng.sample(ids, rng.randrange(3)))
        loads = {rid: (c[0], c[1], c[2]) for rid, c in own.items()}
        try:
            expected = reference.route(reference_views(replicas, loads), info, exclude)
        except NoReplicaError:
            with pytest.raises(NoReplicaError):
                route(policy, replicas.candidates(), info, exclude)
            continue
        chosen = route(policy, replicas.candidates(), info, exclude).replica_id
        assert chosen == expected, f"step {step}"
        picked.append(chosen)
        replicas.load(chosen).queued(info.prompt_tokens)   # this router's streams: queue, start, end
        own.setdefault(chosen, [0, 0, 0])
        own[chosen][1] += 1
        own[chosen][2] += info.prompt_tokens
        inflight.append((chosen, info.prompt_tokens, False))
        if len(inflight) > 12:
            rid, tokens, started = inflight.pop(rng.randrange(len(inflight)))
            if not started and rng.random() < 0.5:
                replicas.load(rid).started(tokens)
                own[rid][1] -= 1
                own[rid][2] -= tokens
                own[rid][0] += 1
                inflight.append((rid, tokens, True))
            else:
                replicas.load(rid).ended(tokens, started)
                if started:
                    own[rid][0] -= 1
                else:
                    own[rid][1] -= 1
                    own[rid][2] -= tokens
    assert len(set(picked)) > 5 and len(picked) > 250   # the scenario exercised many replicas and picks
