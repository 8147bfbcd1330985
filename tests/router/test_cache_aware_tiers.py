"""cache_aware counts the pages a replica's KV tiers could restore, below the pages on its chips:
exact selection sequences, and the tier sets' way from a replica's heartbeat to the policy."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.support.registry import BEAT, registry
from ttdist.dashboard.replica_state import ReplicaState
from ttdist.engine.page_pool import block_hashes
from ttdist.router.policies import CacheAware, ReplicaView, RequestInfo, route
from ttdist.router.replica_set import ReplicaSet
from ttdist.runtime.prefix_delta import PrefixSender
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.routing_table import RoutingTable

PAGE = 4
CHAT = list(range(100, 124))              # 6 pages
H = tuple(block_hashes(CHAT, PAGE))


def ask(n_pages: int, name: str = "q") -> RequestInfo:
    return RequestInfo(name, n_pages * PAGE, H[:n_pages])


def view(rid: str, running: int = 0, device: int = 0, tier: tuple[int, int] = (0, 0)) -> ReplicaView:
    """``device``: the chat's first pages on its chips; ``tier``: pages ``tier[0]..tier[1] - 1`` in its tiers."""
    return ReplicaView(rid, running=running, prefix_hashes=frozenset(H[:device]),
                       tier_prefix_hashes=frozenset(H[tier[0]:tier[1]]))


@pytest.mark.parametrize("a, b, winner, scores", [
    # a device match beats a tier match of the same length (2 vs 2 x 0.5)
    (view("a", running=3, device=2), view("b", tier=(0, 2)), "a", (2.0, 1.0)),
    # a tier match more than twice as long as a device match beats it
    (view("a", device=1), view("b", running=3, tier=(0, 3)), "b", (1.0, 1.5)),
    # twice as long exactly: a tie, the lower load wins
    (view("a", running=2, device=1), view("b", running=1, tier=(0, 2)), "b", (1.0, 1.0)),
    # tier pages count only right after the device pages, as the engine restores them
    (view("a", device=2, tier=(2, 6)), view("b", device=3, tier=(4, 6)), "a", (4.0, 3.0)),
    # a gap in a's tier pages ends its match there
    (view("a", device=1, tier=(2, 6)), view("b", tier=(0, 3)), "b", (1.0, 1.5)),
])
def test_device_pages_weigh_one_tier_pages_half(a, b, winner, scores):
    policy = CacheAware()
    req = ask(6)
    assert (policy.score(a, req), policy.score(b, req)) == scores
    assert route(policy, [a, b, view("idle")], req).replica_id == winner


def test_a_conversation_follows_its_restorable_pages_then_sticks():
    """Its pages were evicted from r1's chips to r1's host tier: r1 (busier) still gets its next
    turn, which puts them on its chips again (remembered until the heartbeat says so)."""
    policy = CacheAware()
    reps = [view("r0"), view("r1", running=2, tier=(0, 4)), view("r2", running=1)]
    turns = [ask(n, f"t{n}") for n in (4, 5, 6)]
    assert [route(policy, reps, t).replica_id for t in turns] == ["r1", "r1", "r1"]
    # another prompt: no match anywhere, least load
    other = RequestInfo("x", 8, tuple(block_hashes(list(range(500, 508)), PAGE)))
    assert route(policy, reps, other).replica_id == "r0"


def test_a_node_tier_page_scores_every_replica_of_its_host_alike():
    """n1a and n1b share a node tier holding the chat; n2 is on another host. The chat goes to
    the host that holds it, to the less loaded of its two replicas, and stays there."""
    policy = CacheAware()
    node = (0, 6)
    reps = [view("n1a", running=2, tier=node), view("n1b", running=1, tier=node), view("n2")]
    assert [route(policy, reps, ask(n)).replica_id for n in (3, 6, 6)] == ["n1b", "n1b", "n1b"]


def test_the_imbalance_guard_and_a_zero_tier_weight_ignore_tiers():
    reps = [view("r0", running=1), view("r1", running=20, tier=(0, 6))]
    assert route(CacheAware(), reps, ask(6)).replica_id == "r0"             # 20 vs 1: least load
    reps = [view("r0", running=1), view("r1", running=3, tier=(0, 6))]
    assert route(CacheAware(), reps, ask(6)).replica_id == "r1"
    assert route(CacheAware(tier_weight=0.0), reps, ask(6)).replica_id == "r0"
    with pytest.raises(ValueError, match="tier_weight must be in"):
        CacheAware(tier_weight=1.5)


def test_tier_sets_travel_as_deltas_from_heartbeat_to_the_policy():
    """A replica's sender -> the registry -> the routing table -> the router's replica set -> the
    policy; an unchanged set is left out of the table and kept by the router."""
    reg = registry()
    reg.started("r0", 1.0, pid=11, node_id="n", address="a:1", kv_pages_total=12)
    sender = PrefixSender()
    sender.acked(reg.heartbeat("r0", replace(BEAT, prefix_delta=sender.delta(frozenset(), frozenset(H[:3]))), 1.1))
    second = sender.delta(frozenset(), frozenset(H[:5]))
    assert (second.tier_added, second.tier_removed, second.added) == (frozenset(H[3:5]), frozenset(), frozenset())
    sender.acked(reg.heartbeat("r0", replace(BEAT, prefix_delta=second), 1.2))
    (entry,) = reg.entries()
    assert entry.tier_prefix_hashes == frozenset(H[:5])
    replicas = ReplicaSet("", 10.0)
    card = ModelCard("m", 64, 256, PAGE)
    replicas.apply(RoutingTable(card, (entry,)))
    same = sender.delta(frozenset(), frozenset(H[:5]))              # nothing changed: the same number
    assert (same.base, same.seq) == (second.seq, second.seq)
    sender.acked(reg.heartbeat("r0", replace(BEAT, prefix_delta=same), 1.3))
    (unchanged,) = reg.entries(held=replicas.prefix_held())
    assert unchanged.prefix_unchanged and unchanged.tier_prefix_hashes == frozenset()   # not sent again
    replicas.apply(RoutingTable(card, (unchanged,)))
    (seen,) = replicas.views()
    assert seen.tier_prefix_hashes == frozenset(H[:5]) and seen.state == ReplicaState.READY
    assert CacheAware().score(seen, ask(6)) == 2.5
    tier_only = sender.delta(frozenset(), frozenset(H[:6]))         # only the tier set changed: a new number
    assert tier_only.seq == second.seq + 1 and tier_only.tier_added == {H[5]}
    sender.acked(reg.heartbeat("r0", replace(BEAT, prefix_delta=tier_only), 1.4))
    (resent,) = reg.entries(held=replicas.prefix_held())
    assert not resent.prefix_unchanged and resent.tier_prefix_hashes == frozenset(H)
