"""Heartbeats carry what changed in a replica's cached page hashes; the registry rebuilds the set."""

from __future__ import annotations

from dataclasses import replace

from tests.support.registry import BEAT, registry
from ttdist.runtime.prefix_delta import FULL, PrefixDelta, PrefixSender


def beat(sender: PrefixSender, hashes: set[int]):
    return replace(BEAT, prefix_delta=sender.delta(frozenset(hashes)))


def held(reg) -> frozenset[int]:
    return reg.entries()[0].prefix_hashes


def test_the_registry_follows_the_set_from_deltas_and_resyncs_after_a_restart():
    reg = registry()
    reg.started("r0", 1.0, pid=11, node_id="n", address="a:1", kv_pages_total=12)
    sender = PrefixSender()
    first = beat(sender, set(range(1000)))
    assert first.prefix_delta.base == FULL and len(first.prefix_delta.added) == 1000
    sender.acked(reg.heartbeat("r0", first, 1.1))
    second = beat(sender, set(range(1, 1001)))   # one page evicted, one cached
    assert (second.prefix_delta.added, second.prefix_delta.removed) == ({1000}, {0})
    sender.acked(reg.heartbeat("r0", second, 1.2))
    assert held(reg) == frozenset(range(1, 1001))
    lost = beat(sender, set(range(2, 1002)))     # never reaches the registry
    sender.acked(None)
    again = beat(sender, set(range(3, 1003)))
    assert again.prefix_delta.base == FULL       # no answer: the whole set again
    sender.acked(reg.heartbeat("r0", again, 1.3))
    assert held(reg) == frozenset(range(3, 1003)) and lost.prefix_delta.base != FULL
    # a restarted coordinator holds nothing: it ignores a delta, answers FULL, gets the whole set next
    fresh = registry()
    fresh.started("r0", 1.0, pid=11, node_id="n", address="a:1", kv_pages_total=12)
    delta = beat(sender, set(range(3, 1004)))
    assert delta.prefix_delta.base != FULL
    answer = fresh.heartbeat("r0", delta, 1.4)
    assert answer == FULL and held(fresh) == frozenset()
    sender.acked(answer)
    sender.acked(fresh.heartbeat("r0", beat(sender, set(range(3, 1004))), 1.5))
    assert held(fresh) == frozenset(range(3, 1004))


def test_a_delta_on_a_set_the_registry_does_not_hold_is_not_applied():
    reg = registry()
    reg.started("r0", 1.0, pid=11, node_id="n", address="a:1", kv_pages_total=12)
    reg.heartbeat("r0", replace(BEAT, prefix_delta=PrefixDelta(FULL, 1, frozenset({1, 2}))), 1.1)
    assert reg.heartbeat("r0", replace(BEAT, prefix_delta=PrefixDelta(7, 8, frozenset({3}))), 1.2) == 1
    assert held(reg) == frozenset({1, 2})


def test_an_unchanged_set_keeps_its_number_so_tables_leave_it_out():
    reg = registry()
    reg.started("r0", 1.0, pid=11, node_id="n", address="a:1", kv_pages_total=12)
    sender = PrefixSender()
    sender.acked(reg.heartbeat("r0", beat(sender, set(range(100))), 1.1))
    entry = reg.entries()[0]
    for k in range(3):   # the same pages cached: an empty delta on the same number, every time
        same = beat(sender, set(range(100)))
        assert (same.prefix_delta.base, same.prefix_delta.seq) == (entry.prefix_seq, entry.prefix_seq)
        sender.acked(reg.heartbeat("r0", same, 1.2 + k))
    assert reg.entries(None, {"r0": (11, entry.prefix_seq)})[0].prefix_unchanged
    changed = beat(sender, set(range(1, 101)))
    assert changed.prefix_delta.seq == entry.prefix_seq + 1
    sender.acked(reg.heartbeat("r0", changed, 2.0))
    assert held(reg) == frozenset(range(1, 101)) and not reg.entries(None, {"r0": (11, entry.prefix_seq)})[0].prefix_unchanged
