"""Grouped page pool: each user group's exact page ids, eviction order and prefix cache."""

from __future__ import annotations

import pytest

from ttdist.engine.page_groups import GroupedPagePool, GroupFit
from ttdist.engine.page_pool import PagePool, block_hashes

from tests.support.engine_requests import A, B, computed, seq


def test_each_group_takes_its_own_page_ids_and_keeps_its_own_cache():
    pool = GroupedPagePool(num_pages=8, page_size=4, groups=2)     # group 0: pages 0-3, group 1: 4-7
    a = seq(A, "a")
    assert pool.allocate(a, group=1) == 0
    assert (a.page_table, a.group) == ([4, 5, 6], 1)
    assert (pool.free_queue(0), pool.free_queue(1)) == ([0, 1, 2, 3], [7])
    assert (pool.num_free, pool.free_per_group()) == (5, [4, 1])
    computed(pool, a)
    assert pool.prefix_hashes() == block_hashes(A, 4)

    b = seq(B, "b")
    assert pool.fits(b) == [GroupFit(0, cached_tokens=0, free_pages=4), GroupFit(1, cached_tokens=8, free_pages=1)]
    assert pool.allocate(b, group=0) == 0                 # group 1's cached prefix is not group 0's
    assert b.page_table == [0, 1, 2]
    computed(pool, b)
    assert pool.prefix_hashes() == block_hashes(A, 4)     # cached in both groups, listed once
    assert pool.num_cached == 4

    pool.deallocate(a)                                     # tail first, within group 1 only
    assert a.group is None
    assert (pool.free_queue(0), pool.free_queue(1)) == ([3], [6, 7, 5, 4])

    c = seq(list(range(500, 516)), "c")                    # 4 pages: evicts group 1's blocks, not group 0's
    pool.allocate(c, group=1)
    assert c.page_table == [6, 7, 5, 4]
    assert pool.free_queue(1) == [] and pool.num_cached == 2
    assert pool.prefix_hashes() == block_hashes(A, 4)     # group 0 still holds them
    assert pool.fits(seq(A, "d")) == [GroupFit(0, cached_tokens=8, free_pages=1)]
    assert pool.fits(seq(A, "d"), groups=[1]) == []


def test_growth_takes_pages_from_the_sequence_group_only():
    pool = GroupedPagePool(num_pages=4, page_size=4, groups=2)
    s = seq([1, 2, 3, 4], "s")
    pool.allocate(s, group=1)
    assert s.page_table == [2]
    s.token_ids.append(5)
    assert pool.can_append(s)
    pool.may_append(s)
    assert s.page_table == [2, 3]
    s.token_ids += [6, 7, 8, 9]
    assert not pool.can_append(s) and pool.num_free == 2   # group 0's free pages are not its
    with pytest.raises(RuntimeError, match="no free page for 's'"):
        pool.may_append(s)
    pool.deallocate(s)
    assert pool.free_per_group() == [2, 2] and all(p.ref_count == 0 for p in pool.pages)


def test_one_group_is_exactly_one_page_pool():
    grouped, plain = GroupedPagePool(num_pages=8, page_size=4), PagePool(num_pages=8, page_size=4)
    for pool in (grouped, plain):
        a = seq(A, "a")
        pool.allocate(a)
        computed(pool, a)
        b = seq(B, "b")
        assert pool.allocate(b) == 8
        pool.deallocate(a)
        pool.deallocate(b)
    assert grouped.free_queue() == plain.free_queue() == [3, 2, 4, 5, 6, 7, 1, 0]
    assert grouped.prefix_hashes() == plain.prefix_hashes()
    assert [p.page_id for p in grouped.pages] == list(range(8))


def test_page_ids_map_to_groups_and_bad_splits_are_refused():
    pool = GroupedPagePool(num_pages=32, page_size=4, groups=4)
    assert [pool.group_of(pid) for pid in (0, 7, 8, 31)] == [0, 0, 1, 3]
    with pytest.raises(RuntimeError, match="page 32 is outside the 32 pages"):
        pool.group_of(32)
    with pytest.raises(ValueError, match="10 pages do not split evenly over 4 user groups"):
        GroupedPagePool(num_pages=10, page_size=4, groups=4)
    with pytest.raises(RuntimeError, match="page 3 is not in this pool"):
        pool.groups[1].page(3)
    with pytest.raises(RuntimeError, match="holds no pages"):
        pool.can_append(seq([1]))
