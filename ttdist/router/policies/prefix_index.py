"""Which replicas hold a page hash: an index kept up to date as prefix sets change.

``PrefixIndex`` maps each page hash to the ids of the replicas holding it, so cache_aware
finds the replicas that hold a prompt's first page (and the next, and so on) without asking
each replica's set in turn. It changes by differences: ``replace(replica, old, new)`` takes a
replica's previous and current sets (a removed replica's current set is empty) and touches
only the hashes that came or went. A hash held by one replica (most of them) maps to that
replica's id itself, not to a one-element set: a set per hash would cost several times the
memory of the prefix sets themselves.
"""

from __future__ import annotations

from typing import Collection, Iterable


class PrefixIndex:
    def __init__(self) -> None:
        self._holders: dict[int, str | set[str]] = {}

    def __len__(self) -> int:
        """The hashes held by at least one replica."""
        return len(self._holders)

    def holders(self, page_hash: int) -> Collection[str]:
        """The ids of the replicas holding ``page_hash`` (empty when none does)."""
        held = self._holders.get(page_hash)
        if held is None:
            return ()
        return (held,) if type(held) is str else held

    def replace(self, replica_id: str, old: frozenset[int], new: frozenset[int]) -> None:
        """``replica_id`` held ``old`` and holds ``new`` now."""
        if old is new:
            return
        self.discard_all(replica_id, old - new)
        self.add_all(replica_id, new - old)

    def add_all(self, replica_id: str, hashes: Iterable[int]) -> None:
        for h in hashes:
            self.add(replica_id, h)

    def discard_all(self, replica_id: str, hashes: Iterable[int]) -> None:
        for h in hashes:
            self.discard(replica_id, h)

    def add(self, replica_id: str, page_hash: int) -> None:
        held = self._holders.get(page_hash)
        if held is None:
            self._holders[page_hash] = replica_id
        elif type(held) is str:
            if held != replica_id:
                self._holders[page_hash] = {held, replica_id}
        else:
            held.add(replica_id)

    def discard(self, replica_id: str, page_hash: int) -> None:
        held = self._holders.get(page_hash)
        if held is None:
            return
        if type(held) is str:
            if held == replica_id:
                del self._holders[page_hash]
            return
        held.discard(replica_id)
        if len(held) == 1:
            self._holders[page_hash] = next(iter(held))
