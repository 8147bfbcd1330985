"""The KV pages of a mesh whose users are split into groups, one page pool per group.

On a Galaxy (8x4) the users are split over the 4 column groups and each group's chips hold KV
pages only for that group's users, so the cache is not replicated 4 times. The runner's
``num_pages`` is the total over ``groups``: group ``g`` owns the global page ids
``[g * P, (g + 1) * P)`` with ``P = num_pages // groups``, and the runner tells a user's group
from its page ids. Every page of a sequence therefore comes from one group's pool: the pool it
was placed in by ``allocate(seq, group)`` (``seq.group``), until ``deallocate`` returns them.

Each group keeps its own free queue, eviction order and prefix cache: a prefix cached in one
group is reused only by a sequence placed in that group. ``fits`` says which groups could take a
sequence now and how much of its prompt each would serve from its cache; the scheduler picks.
With one group this is exactly one ``PagePool`` over ``[0, num_pages)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttdist.engine.page_pool import EvictedPage, Page, PagePool
from ttdist.engine.sequence import Sequence


@dataclass(frozen=True)
class GroupFit:
    """Group ``group`` can hold a sequence's whole prompt now, serving ``cached_tokens`` of it
    from its prefix cache; ``free_pages`` is the group's free page count before it does."""

    group: int
    cached_tokens: int
    free_pages: int


class GroupedPagePool:
    def __init__(self, num_pages: int, page_size: int, groups: int = 1, prefix_caching: bool = True) -> None:
        if groups < 1:
            raise ValueError(f"a grouped page pool needs >= 1 user group, got {groups}")
        if num_pages % groups:
            raise ValueError(f"{num_pages} pages do not split evenly over {groups} user groups")
        per_group = num_pages // groups
        self.page_size = page_size
        self.prefix_caching = prefix_caching
        self.pages_per_group = per_group
        self.groups = [PagePool(per_group, page_size, prefix_caching, first_page=g * per_group) for g in range(groups)]

    # -- totals (what a single pool would report) -------------------------------------------
    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def pages(self) -> list[Page]:
        """Every page of every group, in global id order."""
        return [page for pool in self.groups for page in pool.pages]

    @property
    def num_pages(self) -> int:
        return sum(pool.num_pages for pool in self.groups)

    @property
    def num_free(self) -> int:
        return sum(pool.num_free for pool in self.groups)

    @property
    def num_cached(self) -> int:
        return sum(pool.num_cached for pool in self.groups)

    def free_per_group(self) -> list[int]:
        return [pool.num_free for pool in self.groups]

    def free_queue(self, group: int = 0) -> list[int]:
        """Group ``group``'s free page ids in its eviction order (the first is reused next)."""
        return self.groups[group].free_queue()

    def prefix_hashes(self) -> list[int]:
        """Every block hash cached in any group, each once (a prefix may be cached in several)."""
        return list(dict.fromkeys(h for pool in self.groups for h in pool.prefix_hashes()))

    def record_evictions(self) -> None:
        """From now on list every cached page reused, for the KV tiers (``take_evicted``)."""
        for pool in self.groups:
            pool.record_evictions = True

    def take_evicted(self) -> list[EvictedPage]:
        return [e for pool in self.groups for e in pool.take_evicted()]

    def group_of(self, page_id: int) -> int:
        if not 0 <= page_id < self.num_pages:
            raise RuntimeError(f"page {page_id} is outside the {self.num_pages} pages of this pool")
        return page_id // self.pages_per_group

    def pages_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    # -- admission --------------------------------------------------------------------------
    def fits(self, seq: Sequence, groups: list[int] | range | None = None) -> list[GroupFit]:
        """The groups among ``groups`` (default: all) that can hold ``seq``'s whole prompt now."""
        chosen = range(self.num_groups) if groups is None else groups
        return [
            GroupFit(g, self.groups[g].cached_tokens(seq), self.groups[g].num_free)
            for g in chosen if self.groups[g].can_allocate(seq)
        ]

    def can_allocate(self, seq: Sequence, group: int = 0) -> bool:
        return self.groups[group].can_allocate(seq)

    def allocate(self, seq: Sequence, group: int = 0) -> int:
        """Give ``seq`` pages in group ``group`` for all its tokens; the tokens served from its cache."""
        if not 0 <= group < self.num_groups:
            raise RuntimeError(f"no user group {group}: this pool has {self.num_groups}")
        cached = self.groups[group].allocate(seq)
        seq.group = group
        return cached

    def deallocate(self, seq: Sequence) -> None:
        """Release ``seq``'s pages to its group (tail first); it may be placed anywhere next time."""
        if seq.group is None:
            if seq.page_table:
                raise RuntimeError(f"sequence {seq.request_id!r} holds pages but no group")
            return
        self.groups[seq.group].deallocate(seq)
        seq.group = None

    # -- growth during decode ---------------------------------------------------------------
    def can_append(self, seq: Sequence) -> bool:
        return self._pool_of(seq).can_append(seq)

    def may_append(self, seq: Sequence) -> None:
        self._pool_of(seq).may_append(seq)

    def cache_full_pages(self, seq: Sequence) -> None:
        self._pool_of(seq).cache_full_pages(seq)

    def _pool_of(self, seq: Sequence) -> PagePool:
        if seq.group is None:
            raise RuntimeError(f"sequence {seq.request_id!r} holds no pages: allocate it first")
        return self.groups[seq.group]
