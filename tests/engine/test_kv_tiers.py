"""KV tiers on the fake runner: evicted pages go to the host tier and come back, counted exactly.

The fake runner's KV pages hold token ids and its next token is a function of the context it
reads back through the page table, so a page restored with the wrong contents, into the wrong
page or too late changes the output: every test also checks the outputs against the reference.
"""

from __future__ import annotations

import pytest

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.kv_tiers import KvTierConfig, KvTierSizeError, parse_size
from ttdist.engine.page_pool import block_hashes
from ttdist.engine.request import RequestOutput

from tests.support.engine_fakes import FakeRunner, reference_output
from tests.support.engine_requests import assert_pool_empty, request
from tests.support.manual_executor import ManualExecutor

PAGE = 4
BLOCK_BYTES = PAGE * 8          # a fake page: PAGE int64 token ids
A = list(range(1, 14))          # 13 tokens: 3 full pages + 1
B = list(range(21, 34))
C = list(range(41, 54))


def run(core: EngineCore, max_steps: int = 1000) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    for _ in range(max_steps):
        if not core.has_work():
            return tokens
        for out in core.step():
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
    raise AssertionError("engine did not drain")


def make(num_pages: int = 4, host_blocks: int = 16, executor=None, wait_s: float = 60.0, node_dir=None,
         **runner) -> tuple[FakeRunner, EngineCore]:
    """An engine over the fake runner; with ``node_dir`` a node tier there and no host tier, so restores
    are read on ``executor`` (the host tier's are taken at admission, never pending)."""
    fake = FakeRunner(page_size=PAGE, num_pages=num_pages, **runner)
    tiers = KvTierConfig(host_bytes=0 if node_dir else host_blocks * BLOCK_BYTES, node_bytes=1 << 20 if node_dir else 0,
                         node_dir=str(node_dir or ""), inline=executor is None, restore_wait_s=wait_s)
    core = EngineCore(fake, None, EngineConfig(prefill_chunk=8, kv_tiers=tiers), kv_executor=executor)
    return fake, core


def last_usage(core: EngineCore, name: str, prompt: list[int], max_tokens: int = 1) -> RequestOutput:
    outs: list[RequestOutput] = []
    core.add_request(request(name, prompt, max_tokens), sink=outs.append)
    run(core)
    return outs[-1]


def test_evict_offload_hit_restore_exact():
    fake, core = make()
    assert last_usage(core, "a1", A).usage.cached_tokens == 0
    assert core.pool.free_queue() == [3, 2, 1, 0]       # the partial page first, then the deepest block
    last_usage(core, "b", B)                             # takes every page: A's three blocks are evicted
    assert fake.kv_reads == [[2, 1, 0]]
    assert core.tiers.host.lru_order() == [block_hashes(A, PAGE)[i] for i in (2, 1, 0)]
    fake.calls.clear()
    done = last_usage(core, "a2", A, max_tokens=3)
    assert done.usage.cached_tokens == 12                # 3 pages from the host tier
    assert fake.kv_writes == [[0, 1, 2]]                 # into fresh pages: B's, as its free queue gives them
    assert fake.calls[0] == ("decode", 1)                # no prefill: only the prompt's last token is computed
    stats = core.stats().kv_tiers
    assert (stats.offloaded_pages, stats.restored_pages, stats.restored_tokens, stats.restore_fallbacks) == (6, 3, 12, 0)
    assert (stats.host.hits, stats.host.misses, stats.host.pages, stats.host.bytes) == (3, 2, 6, 6 * BLOCK_BYTES)
    assert core.stats().cached_tokens_total == 12
    assert_pool_empty(core)


def test_restored_outputs_equal_the_reference_and_the_tier_off():
    prompts = {"a": A + [7, 7], "b": B, "c": C + A, "a2": A + [7, 7, 9, 9, 9, 9, 1]}
    fake, core = make(num_pages=8)
    off = EngineCore(FakeRunner(page_size=PAGE, num_pages=8), None, EngineConfig(prefill_chunk=8))
    for name, ids in list(prompts.items()) * 2:
        got = last_usage(core, name, ids, max_tokens=5)
        plain = last_usage(off, name, ids, max_tokens=5)
        assert got.output_ids == plain.output_ids == reference_output(fake, ids, 5)
    assert core.stats().kv_tiers.restored_pages > 0
    assert core.stats().prefill_steps_total < off.stats().prefill_steps_total


def test_lru_order_and_a_full_tier_drop_the_oldest():
    fake, core = make(host_blocks=3)
    last_usage(core, "a", A)
    last_usage(core, "b", B)                             # A's blocks fill the tier
    hashes_a, hashes_b = block_hashes(A, PAGE), block_hashes(B, PAGE)
    assert core.tiers.host.lru_order() == [hashes_a[2], hashes_a[1], hashes_a[0]]
    last_usage(core, "c", C)                             # B's blocks push A's out, oldest first
    host = core.stats().kv_tiers.host
    assert core.tiers.host.lru_order() == [hashes_b[2], hashes_b[1], hashes_b[0]]
    assert (host.pages, host.bytes, host.evictions, host.capacity_bytes) == (3, 3 * BLOCK_BYTES, 3, 3 * BLOCK_BYTES)
    done = last_usage(core, "a2", A, max_tokens=2)       # A is gone from every tier: recomputed
    assert done.usage.cached_tokens == 0
    assert done.output_ids == reference_output(fake, A, 2)


def test_a_block_in_the_tier_is_not_read_off_the_chips_again():
    fake, core = make()
    for name in ("a", "b", "a2", "b2"):
        last_usage(core, name, A if name.startswith("a") else B)
    # A evicted once, B once, then each is restored and evicted again: already held, no second read
    assert fake.kv_reads == [[2, 1, 0], [1, 2, 3]]
    assert core.stats().kv_tiers.offloaded_pages == 6


def test_a_corrupt_block_is_never_written_and_the_prompt_is_recomputed():
    fake, core = make()
    last_usage(core, "a", A)
    last_usage(core, "b", B)
    block = core.tiers.host.get(block_hashes(A, PAGE)[0], A[:PAGE])
    block.payload[0] += 1                                # the bytes no longer match the checksum
    done = last_usage(core, "a2", A, max_tokens=2)
    assert done.usage.cached_tokens == 0 and fake.kv_writes == []
    assert done.output_ids == reference_output(fake, A, 2)
    stats = core.stats().kv_tiers
    assert (stats.host.rejected, stats.restore_fallbacks) == (1, 1)


def test_a_restore_racing_an_abort_writes_nothing(tmp_path):
    executor = ManualExecutor()
    fake, core = make(num_pages=8, executor=executor, node_dir=tmp_path)
    last_usage(core, "a", A)
    last_usage(core, "b", B + C + [1, 2, 3])             # 29 tokens: every page, A's evicted
    executor.run_all()
    core.add_request(request("long", [60, 61], max_tokens=20))
    core.step()                                          # "long" decodes
    core.add_request(request("a2", A, max_tokens=2))
    core.step()                                          # a2 admitted, its restore pending: "long" decodes
    assert core.scheduler.running[-1].restore is not None
    assert core.abort("a2")
    executor.run_all()                                   # the read finishes after the abort
    run(core)
    assert fake.kv_writes == []
    assert core.stats().kv_tiers.restore_fallbacks == 1
    assert_pool_empty(core)


def test_preempted_while_restoring_then_restored_on_readmission(tmp_path):
    executor = ManualExecutor()
    fake, core = make(num_pages=5, executor=executor, node_dir=tmp_path)
    last_usage(core, "a", A)
    last_usage(core, "b", B + [1, 2, 3, 4, 5, 6])        # 19 tokens: all 5 pages, A's blocks evicted
    executor.run_all()
    outs: dict[str, list[RequestOutput]] = {}
    core.add_request(request("long", [60, 61, 62], max_tokens=6), sink=outs.setdefault("long", []).append)
    core.step()                                          # long: 1 page, first token
    core.add_request(request("a2", A, max_tokens=2), sink=outs.setdefault("a2", []).append)
    core.step()                                          # a2 takes 4 pages; its restore waits; long decodes
    pending = core.scheduler.running[-1]
    assert pending.request_id == "a2" and pending.restore is not None
    for _ in range(20):                                  # long needs a 2nd page: a2, the newest, is preempted
        core.step()
        if pending.num_preemptions:
            break
    assert pending.restore is None and core.scheduler.waiting[0] is pending
    executor.auto = True                                 # its readmission reads again, at once
    run(core)
    assert [t for o in outs["a2"] for t in o.token_ids] == reference_output(fake, A, 2)
    assert [t for o in outs["long"] for t in o.token_ids] == reference_output(fake, [60, 61, 62], 6)
    stats = core.stats().kv_tiers
    assert (stats.restore_fallbacks, stats.restored_pages) == (1, 3)   # dropped once, restored on readmission
    assert_pool_empty(core)


def test_host_memory_pressure_shrinks_the_tier_and_fails_no_request():
    fake, core = make()
    last_usage(core, "a", A)
    last_usage(core, "b", B)
    assert core.tiers.host.bytes_held == 3 * BLOCK_BYTES

    def no_memory(page_ids):
        raise MemoryError

    fake.read_kv_pages = no_memory
    done = last_usage(core, "c", C, max_tokens=2)        # evicts B's pages: reading them runs out of memory
    assert done.output_ids == reference_output(fake, C, 2) and done.request_error is None
    assert core.tiers.host.capacity_bytes == 3 * BLOCK_BYTES // 2 and core.tiers.host.bytes_held == BLOCK_BYTES   # half, the oldest out


def test_a_restore_not_ready_in_time_falls_back_to_recompute(tmp_path):
    executor = ManualExecutor()
    fake, core = make(executor=executor, wait_s=0.0, node_dir=tmp_path)
    last_usage(core, "a", A)
    last_usage(core, "b", B)
    executor.run_all()                                   # A's pages published to the node tier
    done = last_usage(core, "a2", A, max_tokens=2)       # its read never ran: recomputed
    assert done.usage.cached_tokens == 0 and fake.kv_writes == []
    assert done.output_ids == reference_output(fake, A, 2)
    assert core.stats().kv_tiers.restore_fallbacks == 1


def test_sizes_and_a_tier_larger_than_host_ram():
    assert parse_size("512MiB") == 512 * 2**20 and parse_size("8GB") == 8 * 10**9 and parse_size(1234) == 1234
    assert parse_size("10%", ram=1000) == 100 and parse_size("auto", ram=1000) == 100
    with pytest.raises(KvTierSizeError, match="cannot read the size"):
        parse_size("lots")
    with pytest.raises(KvTierSizeError, match="more than this host's RAM"):
        KvTierConfig(host_bytes=10**18).check()


def _restore_while_long_decodes(prompt: list[int]) -> tuple[FakeRunner, EngineCore, ManualExecutor, list[RequestOutput]]:
    """A's blocks in the host tier, "long" decoding; ``prompt`` (A's pages first) admitted, one step run."""
    executor = ManualExecutor()                          # never run: a host-tier restore must not need it
    fake, core = make(num_pages=8, executor=executor)
    last_usage(core, "a", A)
    last_usage(core, "b", B + C + [1, 2, 3])             # every page: A's blocks go to the host tier
    core.add_request(request("long", [60, 61], max_tokens=20))
    core.step()                                          # "long" decodes from now on
    outs: list[RequestOutput] = []
    core.add_request(request("a2", prompt, max_tokens=2), sink=outs.append)
    fake.calls.clear()
    core.step()
    return fake, core, executor, outs


@pytest.mark.parametrize("extra, first_step", [([7], ["prefill"]), ([], ["decode"])])
def test_a_host_tier_restore_runs_in_the_step_that_admits_it(extra, first_step):
    """Its pages are written and its remaining chunk runs in the admitting step, no decode first;
    with one token left it decodes with the others in that same step."""
    prompt = A + extra
    fake, core, executor, outs = _restore_while_long_decodes(prompt)
    assert fake.kv_writes and [c[0] for c in fake.calls] == first_step
    assert outs[0].token_ids == reference_output(fake, prompt, 1)
    run(core)
    assert outs[-1].usage.cached_tokens == 12
    timings = outs[-1].timings                           # the restore was written between admission and the first token
    assert timings.queue_s <= timings.restored_s <= timings.ttft_s and timings.restored_s > 0
    assert executor.queue == [] and core.stats().kv_tiers.restore_fallbacks == 0
    assert_pool_empty(core)


def test_tiers_stay_off_for_a_runner_that_cannot_read_pages():
    core = EngineCore(FakeRunner(page_size=PAGE, kv_identity=""), None,
                      EngineConfig(prefill_chunk=8, kv_tiers=KvTierConfig(host_bytes=1000, inline=True)))
    assert core.tiers is None and not core.stats().kv_tiers.enabled


def test_restores_read_on_the_transfer_thread(tmp_path):
    fake = FakeRunner(page_size=PAGE, num_pages=4)
    tiers = KvTierConfig(host_bytes=16 * BLOCK_BYTES, node_bytes=1 << 20, node_dir=str(tmp_path), restore_wait_s=60.0)
    core = EngineCore(fake, None, EngineConfig(prefill_chunk=8, kv_tiers=tiers))   # a real thread, not inline
    last_usage(core, "a", A)
    last_usage(core, "b", B)
    done = last_usage(core, "a2", A, max_tokens=3)
    core.close()                                         # waits for the node tier's writes
    assert done.output_ids == reference_output(fake, A, 3) and done.usage.cached_tokens == 12
    stats = core.stats().kv_tiers
    assert (stats.restored_pages, stats.node.pages) == (3, 6)
