"""Page pool: exact page ids, eviction order, prefix hits and the collision check."""

from __future__ import annotations

import pytest

from ttdist.engine.page_pool import PagePool, block_hashes

from tests.support.engine_requests import A, B, computed, seq


def test_block_hashes_chain_over_full_pages():
    h = block_hashes(A, 4)
    assert len(h) == 2                                   # the partial tail page has no hash
    assert block_hashes(B, 4) == h                       # same first 8 tokens
    assert block_hashes([999] + A[1:], 4)[1] != h[1]     # page 1 hash depends on page 0's tokens
    assert block_hashes(A[4:8], 4)[0] != h[1]            # same page content, other prefix
    assert all(0 <= x < 2**64 for x in h)


def test_scripted_allocation_sharing_and_eviction_order():
    pool = PagePool(num_pages=8, page_size=4)
    a = seq(A, "a")
    assert pool.allocate(a) == 0
    assert a.page_table == [0, 1, 2]
    computed(pool, a)
    assert pool.prefix_hashes() == block_hashes(A, 4)

    b = seq(B, "b")
    assert pool.allocate(b) == 8                          # two cached pages reused
    assert b.page_table == [0, 1, 3]
    assert [pool.pages[i].ref_count for i in range(4)] == [2, 2, 1, 1]
    assert pool.free_queue() == [4, 5, 6, 7]

    pool.deallocate(a)                                     # page 2 holds no block: front of the queue
    assert pool.free_queue() == [2, 4, 5, 6, 7]
    computed(pool, b)
    pool.deallocate(b)                                     # tail first: 3 to the front, cached 1 then 0 last
    assert pool.free_queue() == [3, 2, 4, 5, 6, 7, 1, 0]
    assert pool.num_free == 8

    c = seq(list(range(500, 526)), "c")                    # 26 tokens = 7 pages, evicts up to page 1
    pool.allocate(c)
    assert c.page_table == [3, 2, 4, 5, 6, 7, 1]
    assert pool.free_queue() == [0]
    assert pool.prefix_hashes() == block_hashes(A, 4)[:1]  # page 1's block was evicted, page 0's is left

    d = seq(A, "d")
    assert pool.can_allocate(d) is False                   # needs 2 fresh pages beside the hit
    pool.deallocate(c)
    assert pool.allocate(d) == 4                           # only page 0 is still cached
    assert d.page_table[0] == 0


def test_hit_on_free_cached_pages_counts_against_free_space():
    pool = PagePool(num_pages=4, page_size=4)
    a = seq(A, "a")
    pool.allocate(a)
    computed(pool, a)
    pool.deallocate(a)
    assert pool.free_queue() == [2, 3, 1, 0]
    b = seq(A[:8] + list(range(7, 15)), "b")               # 16 tokens: 2 hits (free) + 2 fresh = all 4
    assert pool.can_allocate(b)
    assert pool.allocate(b) == 8
    assert b.page_table == [0, 1, 2, 3]
    assert pool.num_free == 0
    c = seq(A[:8] + [1], "c")                              # hits 0 and 1 (in use) + one fresh: none left
    assert pool.can_allocate(c) is False


def test_whole_prompt_cached_still_computes_its_last_page():
    pool = PagePool(num_pages=8, page_size=4)
    a = seq(A[:8], "a")
    pool.allocate(a)
    computed(pool, a)
    b = seq(A[:8], "b")
    assert pool.allocate(b) == 4                            # page 1 is recomputed into a fresh page
    assert b.page_table == [0, 2]
    assert b.num_computed == 4


def test_collision_check_compares_token_ids():
    pool = PagePool(num_pages=8, page_size=4)
    a = seq(A, "a")
    pool.allocate(a)
    computed(pool, a)
    pool.pages[0].token_ids = (1, 2, 3, 4)                 # same hash, other tokens: a collision
    b = seq(A, "b")
    assert pool.allocate(b) == 0
    assert 0 not in b.page_table


def test_append_takes_a_page_only_at_a_page_boundary():
    pool = PagePool(num_pages=3, page_size=4)
    s = seq(A[:4], "s")
    pool.allocate(s)
    assert s.page_table == [0]
    s.token_ids.append(1)                                  # 5 tokens: position 4 starts page 2
    assert pool.can_append(s)
    pool.may_append(s)
    assert s.page_table == [0, 1]
    s.token_ids.append(2)
    pool.may_append(s)
    assert s.page_table == [0, 1]
    other = seq([1, 2, 3, 4, 5], "o")
    assert pool.can_allocate(other) is False
    pool.allocate(seq([9], "x"))
    s.token_ids.extend([3, 4, 5])                          # 9 tokens need a third page: none free
    assert pool.can_append(s) is False
    with pytest.raises(RuntimeError, match="no free page"):
        pool.may_append(s)


def test_prefix_caching_off_never_shares():
    pool = PagePool(num_pages=8, page_size=4, prefix_caching=False)
    a = seq(A, "a")
    pool.allocate(a)
    computed(pool, a)
    assert pool.prefix_hashes() == []
    b = seq(A, "b")
    assert pool.allocate(b) == 0
    assert b.page_table == [3, 4, 5]


def test_double_free_is_an_invariant_error():
    pool = PagePool(num_pages=2, page_size=4)
    a = seq(A[:3], "a")
    pool.allocate(a)
    table = list(a.page_table)
    pool.deallocate(a)
    a.page_table = table
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.deallocate(a)
