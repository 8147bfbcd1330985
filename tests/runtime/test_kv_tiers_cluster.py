"""The node KV tier across replicas on a real local Ray cluster: two tiny-model replicas on one
host share a node tier. A conversation's first turn runs on replica-0 and is evicted from its
chips (published to the node tier); its next turn, sent to replica-1 (which never saw it),
restores the prefix from the node tier: replica-1 prefills only the turn's new tokens, and the
output is transformers' greedy output. The replicas' heartbeats carry the restorable pages to
the router's table, and cache_aware sends the turn after to the replica holding it on its chips.
"""

from __future__ import annotations

import random

import pytest
import ray

from tests.support.cluster import running_cluster
from tests.support.generation import greedy, run, stub_for
from tests.support.model_checks import reference_greedy
from tests.support.waiting import wait_for
from ttdist.engine.page_pool import block_hashes
from ttdist.runtime.auth import cluster_metadata
from ttdist.runtime.config import ClusterConfig, HealthConfig, ReplicaGroup

pytestmark = pytest.mark.slow

PAGE = 16
POOL_PAGES = 8
TOKEN = "kv-tiers-cluster-token"
NEW = 4   # tokens generated per turn


def direct(address: str, prompt: list[int]):
    """Greedy ``NEW`` tokens from the replica at ``address`` itself (no router)."""
    channel, stub = stub_for(address)
    with channel:
        chunks, complete = [], None
        for resp in stub.Generate(greedy(prompt, NEW), metadata=cluster_metadata(TOKEN), timeout=120):
            if resp.WhichOneof("kind") == "chunk":
                chunks.extend(resp.chunk.token_ids)
            else:
                complete = resp.complete
    return chunks, complete


def test_a_turn_on_the_replica_that_never_saw_it_restores_its_prefix_from_the_node_tier(tiny_checkpoint, tmp_path):
    config = ClusterConfig(
        model=str(tiny_checkpoint), groups=(ReplicaGroup(count=2, mesh="1x1"),), port=0, dashboard_port=None,
        page_size=PAGE, max_batch=2, max_kv_pages=POOL_PAGES, weights_cache=str(tmp_path / "weights"),
        cluster_token=TOKEN, policy="cache_aware", kv_host_bytes="0", kv_node_bytes="64MiB",
        kv_node_dir=str(tmp_path / "kv"), health=HealthConfig(heartbeat_s=0.25))
    rng = random.Random(5)
    chat = [rng.randrange(3, 49152) for _ in range(3 * PAGE + 5)]                 # 3 full pages and 5 tokens
    filler = [rng.randrange(3, 49152) for _ in range(POOL_PAGES * PAGE - NEW)]    # with its output: every page of the pool
    chat_pages = set(block_hashes(chat, PAGE))
    with running_cluster(config, serving_timeout_s=120) as deployment:
        coordinator = deployment.coordinator
        table = wait_for(lambda: (t := ray.get(coordinator.routing_table.remote())) and
                         sum(e.state == "ready" for e in t.replicas) == 2 and t, 120, "two ready replicas")
        a, b = sorted(table.replicas, key=lambda e: e.replica_id)
        actor_a, actor_b = (ray.get(coordinator.actor.remote(e.replica_id)) for e in (a, b))

        first, _ = direct(a.address, chat)
        assert first == reference_greedy(tiny_checkpoint, chat, NEW)
        direct(a.address, filler)                              # replica-0 evicts the chat's pages: offloaded
        wait_for(lambda: ray.get(actor_a.engine_stats.remote()).kv_tiers.node.pages == len(chat_pages), 60,
                 "replica-0 to publish the chat's 3 pages to the node tier")

        before = ray.get(actor_b.engine_stats.remote())
        turn2 = chat + first + [rng.randrange(3, 49152) for _ in range(9)]
        got, complete = direct(b.address, turn2)
        after = ray.get(actor_b.engine_stats.remote())
        assert got == reference_greedy(tiny_checkpoint, turn2, NEW)
        restored = len(chat_pages) * PAGE
        assert complete.usage.cached_tokens == restored
        assert after.prompt_tokens_total - before.prompt_tokens_total == len(turn2)
        computed = (after.prompt_tokens_total - after.cached_tokens_total) - (before.prompt_tokens_total - before.cached_tokens_total)
        assert computed == len(turn2) - restored                # only the turn's new tokens are prefilled
        tiers_b = after.kv_tiers
        assert (tiers_b.node.hits - before.kv_tiers.node.hits, tiers_b.restored_tokens - before.kv_tiers.restored_tokens,
                tiers_b.restore_fallbacks - before.kv_tiers.restore_fallbacks) == (len(chat_pages), restored, 0)

        # both replicas report the chat's pages as restorable (the node tier they share) to the routing table,
        # replica-1 the turn's pages on its chips; the router then holds that table
        turn3 = turn2 + got + [rng.randrange(3, 49152) for _ in range(3)]
        on_chips = set(block_hashes(turn3, PAGE)[:4])

        def reported():
            t = ray.get(coordinator.routing_table.remote())
            tiers_shown = all(chat_pages <= e.tier_prefix_hashes for e in t.replicas)
            return t if tiers_shown and on_chips <= t.entry(b.replica_id).prefix_hashes else None
        seen = wait_for(reported, 60, "the tier sets and replica-1's pages in the routing table")
        wait_for(lambda: all(router_holds(coordinator, e.replica_id, e.prefix_seq) for e in seen.replicas), 60,
                 "the router to hold that table")
        channel, stub = stub_for(deployment.address)
        with channel:                                          # cache_aware: 4 pages on replica-1's chips beat 3 restorable
            ids, done = run(stub, greedy(turn3, NEW))
        assert done.replica_id == b.replica_id and ids == reference_greedy(tiny_checkpoint, turn3, NEW)


def router_holds(coordinator, replica_id: str, seq: int) -> bool:
    """The router's last report says it holds ``replica_id``'s prefix sets numbered ``seq`` or later."""
    held = ray.get(coordinator.__ray_call__.remote(lambda self: [r.prefix_held for r in self._reports.values()]))
    return any(h.get(replica_id, (0, -1))[1] >= seq for h in held)
