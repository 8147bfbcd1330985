"""Fixed-size KV pages with ref counts, a free queue in eviction order and a prefix cache.

A page holds ``page_size`` consecutive tokens of one or more sequences (shared pages are
prefix-cache hits). A full page whose K/V are computed gets a block hash chained over every
token before it (``extend_block_hashes``), so equal hashes mean equal prefixes; a lookup also compares
the page's token ids, so a hash collision is a miss, never wrong K/V.

Free pages wait in one queue and are reused from its front. A sequence's pages are freed tail
first: pages that hold no cached block go to the front (nothing to lose), cached ones to the back,
so the oldest and the deepest blocks of a prefix are evicted first and its first pages last. A
cached page stays findable while free; taking it again removes it from the queue.

With ``record_evictions`` set, every cached page that ``_take_free`` reuses is listed
(``take_evicted``) so its K/V can be kept in a tier off the chips before anything overwrites it.

A pool may own a slice of a larger page id space (``first_page``): a Galaxy's user groups each
keep their own pool over their own ids (``page_groups.GroupedPagePool``).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

import xxhash

from ttdist.engine.sequence import Sequence


def extend_block_hashes(hashes: list[int], token_ids: list[int], page_size: int, pages: int) -> list[int]:
    """Extend ``hashes``, the chained hashes of the first full pages of ``token_ids``, in place
    until it holds ``pages`` of them (never shortened); returns it. Every chain is hashed here."""
    while len(hashes) < pages:
        start = len(hashes) * page_size
        hashes.append(_chain(hashes[-1] if hashes else 0, token_ids[start:start + page_size]))
    return hashes


def block_hashes(token_ids: list[int], page_size: int) -> list[int]:
    """The chained hash of every full page of ``token_ids`` (a partial tail page has none)."""
    return extend_block_hashes([], token_ids, page_size, len(token_ids) // page_size)


def _chain(previous: int, ids: list[int]) -> int:
    """One page's block hash: its token ids and the hash of the page before it (0 for the first)."""
    return xxhash.xxh3_64_intdigest(struct.pack(f"<Q{len(ids)}q", previous, *ids))


@dataclass(frozen=True)
class EvictedPage:
    """A free page that held cached block ``block_hash`` (of ``token_ids``) was just taken for reuse."""

    page_id: int
    block_hash: int
    token_ids: tuple[int, ...]


@dataclass
class Page:
    page_id: int
    ref_count: int = 0
    block_hash: int | None = None
    token_ids: tuple[int, ...] = ()


class PagePool:
    """Pages ``first_page .. first_page + num_pages - 1``."""

    def __init__(self, num_pages: int, page_size: int, prefix_caching: bool = True, first_page: int = 0) -> None:
        if num_pages < 1 or page_size < 1:
            raise ValueError(f"a page pool needs pages and a page size >= 1, got {num_pages} x {page_size}")
        if first_page < 0:
            raise ValueError(f"a page pool's first page id must be >= 0, got {first_page}")
        self.page_size = page_size
        self.prefix_caching = prefix_caching
        self.first_page = first_page
        ids = range(first_page, first_page + num_pages)
        self._pages = [Page(i) for i in ids]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(ids)
        self._cached: dict[int, int] = {}   # block hash -> page id
        self.record_evictions = False
        self._evicted: list[EvictedPage] = []

    @property
    def pages(self) -> list[Page]:
        """Every page, in id order."""
        return self._pages

    @property
    def num_pages(self) -> int:
        return len(self._pages)

    def page(self, page_id: int) -> Page:
        index = page_id - self.first_page
        if not 0 <= index < len(self._pages):
            raise RuntimeError(f"page {page_id} is not in this pool ({self.first_page}..{self.first_page + len(self._pages) - 1})")
        return self._pages[index]

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def free_queue(self) -> list[int]:
        """Free page ids in eviction order (the first is reused next)."""
        return list(self._free)

    def prefix_hashes(self) -> list[int]:
        """Block hashes of every cached full page (in use or free but not yet evicted)."""
        return list(self._cached)

    def pages_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def take_evicted(self) -> list[EvictedPage]:
        """Cached pages reused since the last call, in the order they were taken."""
        evicted, self._evicted = self._evicted, []
        return evicted

    # -- admission --------------------------------------------------------------------------
    def can_allocate(self, seq: Sequence) -> bool:
        hits, _ = self._match(seq)
        free_hits = sum(1 for pid in hits if self.page(pid).ref_count == 0)
        return self.pages_needed(len(seq)) - len(hits) <= self.num_free - free_hits

    def cached_tokens(self, seq: Sequence) -> int:
        """The prompt tokens ``allocate`` would serve from this pool's prefix cache now."""
        hits, _ = self._match(seq)
        return len(hits) * self.page_size

    def allocate(self, seq: Sequence) -> int:
        """Give ``seq`` pages for all its tokens, reusing cached prefix pages; the tokens reused.

        At most ``(len - 1) // page_size`` pages are reused so at least one token is computed.
        """
        if seq.page_table:
            raise RuntimeError(f"sequence {seq.request_id!r} already holds pages")
        if not self.can_allocate(seq):
            raise RuntimeError(f"not enough free pages for {seq.request_id!r}: check can_allocate first")
        hits, hashes = self._match(seq)
        for pid in hits:
            page = self.page(pid)
            if page.ref_count == 0:
                del self._free[pid]
            page.ref_count += 1
        fresh = [self._take_free() for _ in range(self.pages_needed(len(seq)) - len(hits))]
        seq.page_table = hits + fresh
        seq.block_hashes = hashes[: len(hits)]
        seq.num_computed = len(hits) * self.page_size
        return seq.num_computed

    def deallocate(self, seq: Sequence) -> None:
        """Release ``seq``'s pages (tail first) and forget what it had computed."""
        for pid in reversed(seq.page_table):
            page = self.page(pid)
            if page.ref_count < 1:
                raise RuntimeError(f"page {pid} freed more often than taken")
            page.ref_count -= 1
            if page.ref_count == 0:
                self._free[pid] = None
                if page.block_hash is None or self._cached.get(page.block_hash) != pid:
                    self._free.move_to_end(pid, last=False)
        seq.page_table = []
        seq.block_hashes = []
        seq.num_computed = 0

    # -- growth during decode ---------------------------------------------------------------
    def can_append(self, seq: Sequence) -> bool:
        return self.pages_needed(len(seq)) - len(seq.page_table) <= self.num_free

    def may_append(self, seq: Sequence) -> None:
        """Add a page when the token about to be computed starts a new one."""
        while len(seq.page_table) < self.pages_needed(len(seq)):
            if not self._free:
                raise RuntimeError(f"no free page for {seq.request_id!r}: check can_append first")
            seq.page_table.append(self._take_free())

    def cache_full_pages(self, seq: Sequence) -> None:
        """Register every page of ``seq`` that is now full and computed in the prefix cache."""
        size = self.page_size
        full = seq.num_computed // size
        hashes = self._hashes(seq, full)
        for index in range(len(seq.block_hashes), full):
            block_hash = hashes[index]
            seq.block_hashes.append(block_hash)
            if self.prefix_caching:
                page = self.page(seq.page_table[index])
                page.block_hash, page.token_ids = block_hash, tuple(seq.token_ids[index * size:(index + 1) * size])
                self._cached[block_hash] = page.page_id

    # -- internals --------------------------------------------------------------------------
    def _match(self, seq: Sequence) -> tuple[list[int], list[int]]:
        if not self.prefix_caching or seq.recomputes_prefix:
            return [], []
        size = self.page_size
        usable = (len(seq) - 1) // size * size
        hashes = self._hashes(seq, usable // size)[:usable // size]
        hits: list[int] = []
        for index, block_hash in enumerate(hashes):
            pid = self._cached.get(block_hash)
            if pid is None or self.page(pid).token_ids != tuple(seq.token_ids[index * size:(index + 1) * size]):
                break
            hits.append(pid)
        return hits, hashes

    def _hashes(self, seq: Sequence, pages: int) -> list[int]:
        """``seq.token_hashes`` holding at least its first ``pages`` full pages: its tokens are only
        ever appended, so each page is hashed once across steps and preemptions."""
        return extend_block_hashes(seq.token_hashes, seq.token_ids, self.page_size, pages)

    def _take_free(self) -> int:
        pid, _ = self._free.popitem(last=False)
        page = self.page(pid)
        if page.block_hash is not None and self._cached.get(page.block_hash) == pid:
            del self._cached[page.block_hash]
            if self.record_evictions:
                self._evicted.append(EvictedPage(pid, page.block_hash, page.token_ids))
        page.block_hash, page.token_ids, page.ref_count = None, (), 1
        return pid
