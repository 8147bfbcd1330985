"""This replica's host-memory tier: evicted KV pages kept in RAM, least recently used first out.

Capacity is in bytes. ``put`` makes room by dropping the least recently used blocks (a block
larger than the whole tier is not kept); ``get`` returns a block only when its hash and token ids
match and its checksum holds, and marks it most recently used. Thread-safe: the engine thread
offloads and looks up while a transfer thread may read blocks for a restore.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ttdist.engine.kv_tiers.block import KvBlock
from ttdist.engine.kv_tiers.stats import TierCounters


class HostTier:
    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"a host tier's capacity must be >= 0 bytes, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._blocks: OrderedDict[int, KvBlock] = OrderedDict()   # least recently used first
        self._bytes = 0
        self._lock = threading.Lock()
        self.counters = TierCounters(capacity_bytes=capacity_bytes)

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def lru_order(self) -> list[int]:
        """Block hashes, the next to be dropped first."""
        with self._lock:
            return list(self._blocks)

    def contains(self, block_hash: int, token_ids) -> bool:
        with self._lock:
            block = self._blocks.get(block_hash)
            return block is not None and block.holds(block_hash, token_ids)

    def touch(self, block_hash: int) -> bool:
        """Mark ``block_hash`` most recently used; False when the tier does not hold it."""
        with self._lock:
            if block_hash not in self._blocks:
                return False
            self._blocks.move_to_end(block_hash)
            return True

    def put(self, block: KvBlock) -> bool:
        """Keep ``block`` (replacing one of the same hash); False when it cannot fit at all."""
        with self._lock:
            if block.nbytes > self.capacity_bytes:
                return False
            old = self._blocks.pop(block.block_hash, None)
            if old is not None:
                self._bytes -= old.nbytes
            while self._bytes + block.nbytes > self.capacity_bytes:
                self.drop_oldest_locked()
            self._blocks[block.block_hash] = block
            self._bytes += block.nbytes
            self.counters.bytes_in += block.nbytes
            self._sync()
            return True

    def get(self, block_hash: int, token_ids) -> KvBlock | None:
        """The intact block of these tokens, or None (a corrupt one is dropped and counted)."""
        with self._lock:
            block = self._blocks.get(block_hash)
            if block is None or not block.holds(block_hash, token_ids):
                return None
            if not block.intact():
                self._remove(block_hash)
                self.counters.rejected += 1
                return None
            self._blocks.move_to_end(block_hash)
            self.counters.bytes_out += block.nbytes
            return block

    def shrink(self, capacity_bytes: int) -> None:
        """Hold at most ``capacity_bytes`` from now on (host memory pressure): the oldest go first."""
        with self._lock:
            self.capacity_bytes = self.counters.capacity_bytes = max(0, capacity_bytes)
            while self._bytes > self.capacity_bytes:
                self.drop_oldest_locked()
            self._sync()

    def drop_oldest_locked(self) -> None:
        block_hash = next(iter(self._blocks))
        self._remove(block_hash)
        self.counters.evictions += 1

    def _remove(self, block_hash: int) -> None:
        self._bytes -= self._blocks.pop(block_hash).nbytes
        self._sync()

    def _sync(self) -> None:
        self.counters.pages, self.counters.bytes = len(self._blocks), self._bytes
