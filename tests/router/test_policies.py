"""Each routing policy's selection sequence on scripted loads; health filtering first."""

from __future__ import annotations

import random

import pytest

from ttdist.engine.page_pool import block_hashes
from ttdist.router.policies import (
    POLICIES, CacheAware, LeastLoad, NoReplicaError, Policy, PowerOfTwo, ReplicaView, RequestInfo,
    RoundRobin, UnknownPolicyError, make_policy, route,
)

REQ = RequestInfo("r")


def views(*loads, states=None):
    states = states or ["ready"] * len(loads)
    return [ReplicaView(f"r{i}", states[i], running=l) for i, l in enumerate(loads)]


def sequence(policy, replicas, n, request=REQ):
    return [route(policy, replicas, request).replica_id for _ in range(n)]


def test_round_robin_cycles_in_id_order_and_skips_unhealthy():
    reps = views(0, 0, 0)
    assert sequence(RoundRobin(), reps, 5) == ["r0", "r1", "r2", "r0", "r1"]
    reps = views(0, 0, 0, states=["ready", "unhealthy", "ready"])
    assert sequence(RoundRobin(), reps, 4) == ["r0", "r2", "r0", "r2"]


def test_round_robin_ignores_input_order():
    reps = list(reversed(views(0, 0, 0)))
    assert sequence(RoundRobin(), reps, 3) == ["r0", "r1", "r2"]


def test_least_load_counts_running_waiting_and_pending_prefill():
    reps = [
        ReplicaView("a", running=2, waiting=1),                      # 3
        ReplicaView("b", running=1, waiting=0, pending_prefill_tokens=1024),  # 1 + 2 = 3
        ReplicaView("c", running=2, waiting=0, pending_prefill_tokens=256),   # 2.5
    ]
    assert route(LeastLoad(), reps, REQ).replica_id == "c"
    # a tie goes to the lowest id
    assert route(LeastLoad(), reps[:2], REQ).replica_id == "a"


def test_least_load_sequence_as_loads_change():
    policy = LeastLoad()
    loads = {"r0": 0, "r1": 0, "r2": 0}
    picked = []
    for _ in range(6):
        reps = [ReplicaView(k, running=v) for k, v in loads.items()]
        choice = route(policy, reps, REQ).replica_id
        loads[choice] += 1 if choice != "r1" else 2
        picked.append(choice)
    # loads after each pick: 100, 120, 121, 221, 222 (r1 costs 2) -> all tied at 2 -> r0
    assert picked == ["r0", "r1", "r2", "r0", "r2", "r0"]


def test_least_load_skips_unhealthy_even_if_idle():
    reps = views(5, 0, 3, states=["ready", "failed", "ready"])
    assert route(LeastLoad(), reps, REQ).replica_id == "r2"


def test_power_of_two_is_seeded_and_prefers_the_lighter_of_two():
    reps = views(9, 0, 4, 1)
    first = sequence(PowerOfTwo(seed=3), reps, 12)
    assert first == sequence(PowerOfTwo(seed=3), reps, 12)
    # the most loaded replica (r0) only wins if drawn with itself, which cannot happen
    assert "r0" not in first
    # r1 (idle) wins every draw it is part of: it must appear, and more often than r2
    assert first.count("r1") > first.count("r2")
    rng = random.Random(3)
    load = {"r0": 9, "r1": 0, "r2": 4, "r3": 1}
    expected = []
    for _ in range(12):
        a, b = rng.sample(["r0", "r1", "r2", "r3"], 2)
        expected.append(b if load[b] < load[a] else a)
    assert first == expected


def test_power_of_two_single_replica():
    assert sequence(PowerOfTwo(), views(7, 0, states=["ready", "starting"]), 3) == ["r0"] * 3


def hashes(prefix_tokens, n_pages, page=4):
    return tuple(block_hashes(prefix_tokens, page))[:n_pages]


def test_cache_aware_prefers_longest_prefix_match():
    page = 4
    prompt = list(range(16))
    h = tuple(block_hashes(prompt, page))
    reps = [
        ReplicaView("a", running=1, prefix_hashes=frozenset(h[:1])),
        ReplicaView("b", running=3, prefix_hashes=frozenset(h[:3])),
        ReplicaView("c", running=0, prefix_hashes=frozenset()),
    ]
    policy = CacheAware()
    req = RequestInfo("x", 16, h)
    assert policy.match_length(reps[1], req) == 3
    assert route(policy, reps, req).replica_id == "b"


def test_cache_aware_no_match_goes_to_least_load_then_sticks():
    page = 4
    policy = CacheAware()
    reps = views(2, 1, 0)
    shared = list(range(100, 112))
    reqs = [RequestInfo(f"q{i}", 16, tuple(block_hashes(shared + [i] * 4, page))) for i in range(4)]
    picked = [route(policy, reps, r).replica_id for r in reqs]
    # the first has no match anywhere -> least load (r2); later ones share 3 pages with it
    assert picked == ["r2", "r2", "r2", "r2"]


def test_cache_aware_imbalance_guard_falls_back_to_least_load():
    prompt = list(range(8))
    h = tuple(block_hashes(prompt, 4))
    reps = [
        ReplicaView("hot", running=20, prefix_hashes=frozenset(h)),
        ReplicaView("idle", running=2),
    ]
    req = RequestInfo("x", 8, h)
    assert route(CacheAware(), reps, req).replica_id == "idle"
    # within the guard the cache wins
    reps[0] = ReplicaView("hot", running=9, prefix_hashes=frozenset(h))
    assert route(CacheAware(), reps, req).replica_id == "hot"


def test_cache_aware_ignores_a_cached_unhealthy_replica():
    h = tuple(block_hashes(list(range(8)), 4))
    reps = [ReplicaView("a", "unhealthy", prefix_hashes=frozenset(h)), ReplicaView("b", running=5)]
    assert route(CacheAware(), reps, RequestInfo("x", 8, h)).replica_id == "b"


def test_no_ready_replica_and_exclusion():
    reps = views(0, 0, states=["starting", "failed"])
    with pytest.raises(NoReplicaError, match="r0=starting"):
        route(RoundRobin(), reps, REQ)
    reps = views(0, 0)
    assert route(LeastLoad(), reps, REQ, exclude=frozenset({"r0"})).replica_id == "r1"
    with pytest.raises(NoReplicaError):
        route(LeastLoad(), reps, REQ, exclude=frozenset({"r0", "r1"}))


def test_make_policy_by_name():
    for name in ("round_robin", "least_load", "power_of_two", "cache_aware"):
        assert make_policy(name).name == name
    with pytest.raises(UnknownPolicyError, match="round_robin"):
        make_policy("random")


def test_policies_share_the_base_hooks():
    """Every policy is a ``Policy``: the hooks it has no use for are the base's no-ops, and the
    base alone refuses to pick."""
    for cls in POLICIES.values():
        assert issubclass(cls, Policy)
        assert cls.on_complete is Policy.on_complete
        assert cls().on_complete("r0", REQ) is None
    with pytest.raises(NotImplementedError, match="select"):
        Policy().select(views(0), REQ)
