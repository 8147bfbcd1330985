"""A replica's prefix-cache page hashes sent as changes, not as the whole set every heartbeat.

A replica with thousands of cached pages would otherwise send thousands of hashes with every
heartbeat (every 50 ms while requests start and end). ``PrefixSender`` (replica side) numbers
each heartbeat's set and sends only what changed since the set the coordinator last
acknowledged (a set equal to the acknowledged one keeps its number: an empty delta, and routing
tables need not carry the set again); ``apply_delta`` (coordinator side) applies a change to the
set it holds. The coordinator answers each heartbeat with the number of the set it now holds;
when that is not one the replica remembers (a restarted coordinator holds none, a beat was lost or ignored), the
replica's next heartbeat sends the whole set again. Either side can restart at any time.

A second set rides on the same numbers: the pages the replica's KV tiers could restore (its
host tier and the node tier it shares, ``tier_added`` / ``tier_removed``). Both sets change
together under one ``seq`` (a change to either is a new number), so acknowledgements and the
router's "unchanged" shortcut cover both.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL = -1     # ``PrefixDelta.base`` of a whole set


@dataclass(frozen=True)
class PrefixDelta:
    """Set number ``seq``: the set numbered ``base`` minus ``removed`` plus ``added``
    (``base == FULL``: ``added`` is the whole set); the tier set likewise with ``tier_*``."""

    base: int
    seq: int
    added: frozenset[int]
    removed: frozenset[int] = frozenset()
    tier_added: frozenset[int] = frozenset()
    tier_removed: frozenset[int] = frozenset()


def apply_delta(held: frozenset[int], held_seq: int, delta: PrefixDelta) -> tuple[frozenset[int], int] | None:
    """The set and its number after ``delta``; None when ``delta`` is not based on the held set."""
    if delta.base == FULL:
        return delta.added, delta.seq
    if delta.base != held_seq:
        return None
    if not (delta.removed or delta.added):   # most heartbeats: no copy of a set of thousands of hashes
        return held, delta.seq
    return (held - delta.removed) | delta.added, delta.seq


def apply_tier_delta(held: frozenset[int], delta: PrefixDelta) -> frozenset[int]:
    """The tier set after ``delta`` (only once ``apply_delta`` took ``delta``: same base)."""
    if delta.base == FULL:
        return delta.tier_added
    if not (delta.tier_removed or delta.tier_added):
        return held
    return (held - delta.tier_removed) | delta.tier_added


class PrefixSender:
    """The replica's side: ``delta`` for each heartbeat, ``acked`` with the coordinator's answer."""

    def __init__(self, keep: int = 8) -> None:
        self._seq = 0
        self._sent: dict[int, tuple[frozenset[int], frozenset[int]]] = {}   # (set, tier set) not yet acknowledged
        self._acked: tuple[int, tuple[frozenset[int], frozenset[int]]] | None = None
        self._keep = keep

    def delta(self, current: frozenset[int], tiers: frozenset[int] = frozenset()) -> PrefixDelta:
        if self._acked is not None and self._acked[1] == (current, tiers):
            seq = self._acked[0]   # unchanged: the same number, so tables need not carry the sets again
            return PrefixDelta(seq, seq, frozenset())
        self._seq += 1
        self._sent[self._seq] = (current, tiers)
        while len(self._sent) > self._keep:
            del self._sent[min(self._sent)]
        if self._acked is None:
            return PrefixDelta(FULL, self._seq, current, tier_added=tiers)
        seq, (base, tier_base) = self._acked
        return PrefixDelta(seq, self._seq, current - base, base - current, tiers - tier_base, tier_base - tiers)

    def acked(self, seq: int | None) -> None:
        """The coordinator holds set ``seq`` now (None or unknown: send the whole set next)."""
        held = self._sent.get(seq) if seq is not None else None
        if held is None:
            if seq is None or self._acked is None or self._acked[0] != seq:
                self._acked = None
            return
        self._acked = (seq, held)
        for old in [s for s in self._sent if s <= seq]:
            del self._sent[old]
