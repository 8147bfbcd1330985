"""The page-hash index (hash -> holders) stays equal to the sets it indexes: under prefix-set
changes, replicas leaving the table, coming back under a new pid, and one replica's update."""

from __future__ import annotations

import random

from ttdist.dashboard.replica_state import ReplicaState
from ttdist.router.policies import ReplicaView
from ttdist.router.policies.candidates import Pool
from ttdist.router.policies.prefix_index import PrefixIndex
from ttdist.router.replica_set import ReplicaSet
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.routing_table import ReplicaEntry, RoutingTable

CARD = ModelCard("scripted", 64, 256, 16)


def brute(sets: dict[str, frozenset[int]]) -> dict[int, set[str]]:
    """The index as a pass over every set would build it."""
    out: dict[int, set[str]] = {}
    for rid, hashes in sets.items():
        for h in hashes:
            out.setdefault(h, set()).add(rid)
    return out


def indexed(index: PrefixIndex, universe) -> dict[int, set[str]]:
    return {h: set(index.holders(h)) for h in universe if index.holders(h)}


def test_one_holder_is_kept_as_the_id_and_several_as_a_set():
    index = PrefixIndex()
    index.replace("a", frozenset(), frozenset({1, 2}))
    index.replace("b", frozenset(), frozenset({2, 3}))
    assert index.holders(1) == ("a",) and set(index.holders(2)) == {"a", "b"} and index.holders(9) == ()
    index.replace("a", frozenset({1, 2}), frozenset({1}))
    assert index.holders(2) == ("b",) and len(index) == 3
    index.replace("b", frozenset({2, 3}), frozenset())
    assert index.holders(2) == () and index.holders(3) == () and len(index) == 1


def test_the_index_follows_random_set_changes():
    rng = random.Random(7)
    universe = range(60)
    index, sets = PrefixIndex(), {}
    for _ in range(400):
        rid = f"r{rng.randrange(6)}"
        old = sets.get(rid, frozenset())
        new = frozenset(rng.sample(universe, rng.randrange(0, 20))) if rng.random() < 0.8 else frozenset()
        index.replace(rid, old, new)
        sets[rid] = new
        assert indexed(index, universe) == brute(sets)


def entry(rid: str, pid: int, hashes: frozenset[int], state=ReplicaState.READY, seq: int = 1) -> ReplicaEntry:
    return ReplicaEntry(rid, f"{rid}:1", state, pid=pid, prefix_hashes=hashes, prefix_seq=seq)


def test_a_routers_index_follows_tables_removal_and_reregistration():
    """Through ``ReplicaSet.apply``: sets resent whole when changed, left out when unchanged
    (``prefix_unchanged``), replicas leaving, and coming back under a new pid with another set."""
    rng = random.Random(3)
    universe = range(80)
    replicas = ReplicaSet("", 10.0)
    current: dict[str, ReplicaEntry] = {}
    for step in range(120):
        for rid in [f"r{k}" for k in range(8)]:
            held = current.get(rid)
            roll = rng.random()
            if held is None:
                if roll < 0.5:   # (re-)registers, a new incarnation with its own set
                    current[rid] = entry(rid, step + 100, frozenset(rng.sample(universe, 15)), seq=1)
            elif roll < 0.1:
                del current[rid]   # leaves the table
            elif roll < 0.35:      # its set changed: sent whole with a new number
                changed = (held.prefix_hashes - set(rng.sample(sorted(held.prefix_hashes), 3))) | set(rng.sample(universe, 3))
                current[rid] = entry(rid, held.pid, frozenset(changed), held.state, held.prefix_seq + 1)
            elif roll < 0.45:
                state = rng.choice([ReplicaState.READY, ReplicaState.UNHEALTHY, ReplicaState.DRAINING])
                current[rid] = entry(rid, held.pid, held.prefix_hashes, state, held.prefix_seq)
        held_seqs = replicas.prefix_held() if step else {}
        sent = tuple(e if held_seqs.get(e.replica_id) != (e.pid, e.prefix_seq)
                     else ReplicaEntry(e.replica_id, e.address, e.state, pid=e.pid, prefix_seq=e.prefix_seq, prefix_unchanged=True)
                     for e in sorted(current.values(), key=lambda e: e.replica_id))
        replicas.apply(RoutingTable(CARD, sent))
        expected = {rid: e.prefix_hashes for rid, e in current.items()}
        assert indexed(replicas.pool.index, universe) == brute(expected)
        assert {v.replica_id: v.prefix_hashes for v in replicas.views()} == expected


def test_a_pool_update_reindexes_one_replica_and_its_readiness():
    pool = Pool([ReplicaView("a", prefix_hashes=frozenset({1})), ReplicaView("b", "unhealthy", prefix_hashes=frozenset({1, 2}))])
    assert set(pool.index.holders(1)) == {"a", "b"} and pool.ready_ids == {"a"}
    pool.update(ReplicaView("b", prefix_hashes=frozenset({3})))
    assert pool.index.holders(1) == ("a",) and pool.index.holders(3) == ("b",) and pool.ready_ids == {"a", "b"}
    assert list(pool.candidates(blocked={"a"})) == [pool.views[1]]
    pool.update(ReplicaView("zz"))   # not in the pool: ignored
    assert len(pool.views) == 2
