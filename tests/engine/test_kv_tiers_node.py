"""The node tier: replicas on one host share evicted KV pages through files published by rename."""

from __future__ import annotations

import os

import numpy as np

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.kv_tiers import KvBlock, KvTierConfig, NodeTier
from ttdist.engine.page_pool import block_hashes

from tests.support.engine_fakes import FakeRunner, reference_output
from tests.support.engine_requests import request

PAGE = 4
CHAT = list(range(1, 18))              # 17 tokens: 4 full pages + 1


def replica(node_dir, host_bytes: int = 0) -> tuple[FakeRunner, EngineCore]:
    fake = FakeRunner(page_size=PAGE, num_pages=6)
    tiers = KvTierConfig(host_bytes=host_bytes, node_bytes=1 << 20, node_dir=str(node_dir), inline=True)
    return fake, EngineCore(fake, None, EngineConfig(prefill_chunk=8, kv_tiers=tiers))


def serve(core: EngineCore, name: str, ids: list[int], max_tokens: int = 2):
    outs = []
    core.add_request(request(name, ids, max_tokens), sink=outs.append)
    while core.has_work():
        core.step()
    return outs[-1]


def prefilled(fake: FakeRunner) -> int:
    return sum(n for kind, _, n, _ in (c for c in fake.calls if c[0] == "prefill"))


def test_a_turn_routed_to_the_other_replica_restores_its_prefix_from_the_node_tier(tmp_path):
    fake_a, a = replica(tmp_path)
    fake_b, b = replica(tmp_path)
    first = serve(a, "t1", CHAT)
    serve(a, "other", list(range(30, 52)))          # A evicts the chat's pages: published to the node tier
    a.tiers.flush()
    assert a.stats().kv_tiers.node.pages == 4
    chat_pages = block_hashes(CHAT, PAGE)
    assert sorted(b.tier_hashes()) == sorted(chat_pages)      # what B reports to the router: the shared node tier's
    turn2 = CHAT + list(first.output_ids) + [5, 6, 7]
    got = serve(b, "t2", turn2)                      # replica B never saw the chat
    assert got.output_ids == reference_output(fake_b, turn2, 2)
    assert got.usage.cached_tokens == 16 and fake_b.kv_writes == [[0, 1, 2, 3]]
    assert prefilled(fake_b) == len(turn2) - 16      # only the turn's new tokens are prefilled
    node = b.stats().kv_tiers.node
    assert (node.hits, node.pages) == (4, 4)


def test_a_half_written_entry_is_never_seen_and_another_identity_is_a_miss(tmp_path):
    tier = NodeTier(tmp_path, "model-x", 1 << 20)
    block = KvBlock.of(7, [1, 2, 3, 4], np.arange(4, dtype=np.int64))
    (tier.folder / ".0000000000000007.123.deadbeef.tmp").write_bytes(b"TTDKV001 half")   # a writer killed mid-way
    assert not tier.contains(7) and tier.get(7, [1, 2, 3, 4]) is None
    assert tier.put(block) and tier.get(7, [1, 2, 3, 4]).checksum == block.checksum
    assert tier.get(7, [1, 2, 3, 5]) is None                                     # other tokens: a collision, a miss
    other = NodeTier(tmp_path, "model-y", 1 << 20)
    assert other.get(7, [1, 2, 3, 4]) is None and other.folder != tier.folder
    os.replace(tier.path(7), other.path(7))                                      # a file under the wrong identity
    assert other.get(7, [1, 2, 3, 4]) is None and other.counters.rejected == 1 and not other.contains(7)


def test_a_corrupt_entry_is_removed_and_capacity_drops_the_least_recently_used(tmp_path):
    blocks = [KvBlock.of(i, [i] * 4, np.full(64, i, dtype=np.int64)) for i in range(3)]
    size = len(open_entry(NodeTier(tmp_path / "probe", "m", 1 << 20), blocks[0]))
    tier = NodeTier(tmp_path, "m", 2 * size + 40)                                # two entries (headers vary a little)
    tier.put(blocks[0])
    tier.put(blocks[1])
    os.utime(tier.path(0), ns=(1, 1))                                            # 0 used longest ago
    os.utime(tier.path(1), ns=(2, 2))
    tier.put(blocks[2])
    assert not tier.contains(0) and tier.contains(1) and tier.contains(2)
    data = bytearray(tier.path(2).read_bytes())
    data[-1] ^= 0xFF
    tier.path(2).write_bytes(bytes(data))
    assert tier.get(2, [2] * 4) is None and not tier.contains(2)
    stats = tier.stats()
    assert (stats.evictions, stats.rejected, stats.pages) == (1, 1, 1)


def open_entry(tier: NodeTier, block: KvBlock) -> bytes:
    tier.put(block)
    return tier.path(block.block_hash).read_bytes()
