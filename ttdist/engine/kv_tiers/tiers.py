"""The engine's KV tiers: pages evicted from the chips go to host memory, and come back.

Offload: when the page pool reuses a free page that still held a cached prefix block, the page
is recorded (``PagePool.take_evicted``); before the next model step writes anything the engine
reads those pages off the chips (``ModelRunner.read_kv_pages``) and keeps them in the host tier
(and publishes them to the node tier on the transfer thread). A block the host tier already
holds is only marked recently used.

Restore: at admission the prefix lookup continues past the device cache's hits page by page
into the host tier, then the node tier, while pages are found (``match``). Fresh device pages
were allocated for them with the rest of the prompt; ``start_restore`` takes the host tier's
blocks at once (so the prompt's first chunk need not wait a step for them) and reads the node
tier's on the transfer thread (a file read and a checksum), and before the prompt's first chunk runs ``finish_restore`` writes them into those pages (``ModelRunner.write_kv_pages``),
counts their tokens computed and lets the chunks start after them. A restore not read within
``restore_wait_s``, or one whose block turned out bad, falls back to recomputing those tokens;
an abort or a preemption drops it (its pages were freed by then; nothing is written).
"""

from __future__ import annotations

import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from ttdist.engine.kv_tiers.block import KvBlock
from ttdist.engine.kv_tiers.config import KvTierConfig
from ttdist.engine.kv_tiers.host_tier import HostTier
from ttdist.engine.kv_tiers.node_tier import NodeTier
from ttdist.engine.kv_tiers.stats import KvTierStats, TierCounters
from ttdist.engine.page_pool import EvictedPage
from ttdist.engine.sequence import Sequence

ReadPages = Callable[[list[int]], list[np.ndarray]]
WritePages = Callable[[list[int], list[np.ndarray]], None]


class Executor(Protocol):
    def submit(self, fn, *args) -> Future: ...


class InlineExecutor:
    """Runs each task at once on the caller's thread (exact, deterministic transfers)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True) -> None:
        pass


@dataclass
class PendingRestore:
    """Pages ``seq.page_table[first:first + len(hashes)]`` are being filled from the tiers."""

    first: int
    hashes: list[int]
    token_ids: list[tuple[int, ...]]
    future: Future
    started_s: float


class KvTiers:
    def __init__(self, config: KvTierConfig, identity: str, page_size: int, executor: Executor | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not identity:
            raise ValueError("KV tiers need the runner's KV identity (RunnerInfo.kv_identity)")
        self.config = config
        self.page_size = page_size
        self.clock = clock
        self.host = HostTier(config.host_bytes)
        self.node = NodeTier(config.node_dir, identity, config.node_bytes) if config.node_bytes > 0 else None
        self.executor = executor or (InlineExecutor() if config.inline else
                                     ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-tiers"))
        self.totals = KvTierStats(enabled=True)
        self._node_writes: list[Future] = []

    # -- offload ----------------------------------------------------------------------------
    def offload(self, evicted: list[EvictedPage], read: ReadPages) -> None:
        """Keep the KV of pages the pool just evicted (call before anything overwrites them)."""
        todo = [e for e in evicted if not self.host.touch(e.block_hash)
                and not (self.host.capacity_bytes == 0 and self.node is not None and self.node.contains(e.block_hash))]
        if not todo:
            return
        start = time.perf_counter()
        try:
            payloads = read([e.page_id for e in todo])
        except MemoryError:   # host memory pressure: the tier gives up half its bytes, no request fails
            self.host.shrink(self.host.bytes_held // 2)
            return
        self.totals.offload_s_total += time.perf_counter() - start
        self.totals.offloaded_pages += len(todo)
        blocks = [KvBlock.of(e.block_hash, e.token_ids, p) for e, p in zip(todo, payloads)]
        for block in blocks:
            self.host.put(block)
        if self.node is not None:
            self._node_writes = [f for f in self._node_writes if not f.done()]
            self._node_writes.append(self.executor.submit(self._publish, blocks))

    def _publish(self, blocks: list[KvBlock]) -> None:
        for block in blocks:
            self.node.put(block)

    def flush(self) -> None:
        """Wait for every node-tier write started so far (tests, shutdown)."""
        for future in self._node_writes:
            future.result()
        self._node_writes.clear()

    # -- restore ----------------------------------------------------------------------------
    def match(self, seq: Sequence, first: int, last: int) -> int:
        """How many of ``seq``'s full pages ``first..last - 1`` the tiers hold, in order from ``first``."""
        found = 0
        for index in range(first, last):
            block_hash, ids = seq.token_hashes[index], self._tokens(seq, index)
            if self.host.contains(block_hash, ids):
                self.host.counters.hits += 1
            elif self.node is not None and self.node.contains(block_hash):
                self.host.counters.misses += 1
                self.node.counters.hits += 1
            else:
                self.host.counters.misses += 1
                if self.node is not None:
                    self.node.counters.misses += 1
                break
            found += 1
        return found

    def start_restore(self, seq: Sequence, first: int, count: int) -> None:
        """Take pages ``first..first + count - 1`` of ``seq`` for its fresh device pages: those the host
        tier holds at once (memory: a lookup and a checksum, ready before the next step), the rest
        read from the node tier on the transfer thread."""
        hashes = list(seq.token_hashes[first:first + count])
        ids = [self._tokens(seq, i) for i in range(first, first + count)]
        blocks = self._from_host(hashes, ids)
        if len(blocks) == count or self.node is None:
            future: Future = Future()
            future.set_result(blocks)
        else:
            future = self.executor.submit(self._from_node, blocks, hashes[len(blocks):], ids[len(blocks):])
        seq.restore = PendingRestore(first, hashes, ids, future, self.clock())

    def _from_host(self, hashes: list[int], ids: list[tuple[int, ...]]) -> list[KvBlock]:
        """The host tier's blocks in order, up to the first it cannot give soundly."""
        blocks = []
        for block_hash, tokens in zip(hashes, ids):
            block = self.host.get(block_hash, tokens)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def _from_node(self, blocks: list[KvBlock], hashes: list[int], ids: list[tuple[int, ...]]) -> list[KvBlock]:
        """``blocks`` then the node tier's, in order, up to the first no tier can give soundly."""
        blocks = list(blocks)
        for block_hash, tokens in zip(hashes, ids):
            block = self.host.get(block_hash, tokens) or self.node.get(block_hash, tokens)
            if block is None:
                break
            self.host.put(block)
            blocks.append(block)
        return blocks

    def restore_due(self, seq: Sequence) -> bool:
        """``seq``'s restore is read, or has had its ``restore_wait_s``: its chunk should run now."""
        pending = seq.restore
        return pending is None or pending.future.done() or self.clock() >= pending.started_s + self.config.restore_wait_s

    def finish_restore(self, seq: Sequence, write: WritePages) -> int:
        """Write ``seq``'s restored pages into the chips; the tokens it no longer computes (0: recompute)."""
        pending = seq.restore
        seq.restore = None
        if pending is None:
            return 0
        try:
            left = pending.started_s + self.config.restore_wait_s - self.clock()
            blocks = pending.future.result(timeout=max(0.0, left))
        except (FutureTimeout, CancelledError):
            pending.future.cancel()
            blocks = []
        except Exception:  # noqa: BLE001 - a tier that fails costs a recompute, never the request
            blocks = []
        if len(blocks) < len(pending.hashes):
            self.totals.restore_fallbacks += 1
        if not blocks:
            return 0
        pages = seq.page_table[pending.first:pending.first + len(blocks)]
        write(pages, [b.payload for b in blocks])
        seq.num_computed = (pending.first + len(blocks)) * self.page_size
        tokens = len(blocks) * self.page_size
        self.totals.restored_pages += len(blocks)
        self.totals.restored_tokens += tokens
        self.totals.restore_s_total += self.clock() - pending.started_s
        return tokens

    def drop_restore(self, seq: Sequence) -> None:
        """``seq`` leaves its pages (abort, preemption, finish): its restore is never written."""
        if seq.restore is not None:
            seq.restore.future.cancel()
            seq.restore = None
            self.totals.restore_fallbacks += 1

    # -- reporting --------------------------------------------------------------------------
    def stats(self) -> KvTierStats:
        node = self.node.stats() if self.node is not None else TierCounters()
        return KvTierStats(True, TierCounters(**vars(self.host.counters)), node, self.totals.offloaded_pages,
                           self.totals.restored_pages, self.totals.restored_tokens, self.totals.restore_fallbacks,
                           self.totals.restore_s_total, self.totals.offload_s_total)

    def restorable_hashes(self) -> list[int]:
        """Block hashes a restore could read: this replica's host tier, then the node tier it shares."""
        hashes = self.host.lru_order()
        if self.node is not None:
            hashes = list(dict.fromkeys(hashes + self.node.hashes()))
        return hashes

    def close(self) -> None:
        """Let the node-tier writes started finish (each is published whole or not at all), then stop."""
        self.executor.shutdown(wait=True)

    def _tokens(self, seq: Sequence, index: int) -> tuple[int, ...]:
        return tuple(seq.token_ids[index * self.page_size:(index + 1) * self.page_size])
