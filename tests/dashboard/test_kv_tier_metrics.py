"""The KV tiers' figures on the way out: Prometheus ``ttdist:kv_offload_*`` and the ``ttdist status`` line."""

from __future__ import annotations

from dataclasses import asdict

from prometheus_client.parser import text_string_to_metric_families

from ttdist.cli.status import format_table
from ttdist.client.types import ClusterStatus
from ttdist.dashboard.metrics import exposition, metrics_registry
from ttdist.engine.kv_tiers import KvTierStats, TierCounters
from ttdist.runtime.routing_table import ReplicaEntry
from ttdist.dashboard.replica_state import ReplicaState
from ttdist.v1 import generation_pb2 as pb

from tests.support.dashboard_snapshots import FakeCluster, make_replica

STATS = KvTierStats(
    enabled=True,
    host=TierCounters(capacity_bytes=64 * 2**20, pages=12, bytes=12 * 2**20, hits=30, misses=5, evictions=2,
                      bytes_in=14 * 2**20, bytes_out=30 * 2**20),
    node=TierCounters(capacity_bytes=256 * 2**20, pages=40, bytes=40 * 2**20, hits=7, misses=3),
    offloaded_pages=14, restored_pages=37, restored_tokens=37 * 32, restore_fallbacks=1, restore_s_total=0.25,
)


def samples(cluster: FakeCluster) -> dict[tuple[str, tuple], float]:
    text = exposition(metrics_registry(cluster))[0].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_prometheus_kv_offload_series_per_tier():
    cluster = FakeCluster([make_replica("r0", 1, 2, kv_tiers=asdict(STATS)), make_replica("r1", 1, 2)])
    got = samples(cluster)
    host = (("model_name", "tiny-llama"), ("replica", "r0"), ("tier", "host"))
    node = (("model_name", "tiny-llama"), ("replica", "r0"), ("tier", "node"))
    assert got[("ttdist:kv_offload_pages", host)] == 12 and got[("ttdist:kv_offload_pages", node)] == 40
    assert got[("ttdist:kv_offload_hits_total", host)] == 30 and got[("ttdist:kv_offload_bytes_out_total", host)] == 30 * 2**20
    assert got[("ttdist:kv_offload_restored_tokens_total", (("model_name", "tiny-llama"), ("replica", "r0")))] == 37 * 32
    assert not any(labels and ("replica", "r1") in labels for (name, labels) in got if name.startswith("ttdist:kv_offload"))


def test_status_shows_a_line_for_a_replica_with_tiers():
    entry = ReplicaEntry("r0", "127.0.0.1:1", ReplicaState.READY, kv_pages_total=64, kv_pages_free=10, kv_tiers=STATS)
    status = ClusterStatus.from_proto(pb.ClusterStatus(model="m", policy="round_robin", replicas=[entry.to_proto()]))
    assert status.replicas[0].kv_tiers.host.hits == 30 and status.replicas[0].kv_tiers.restored_pages == 37
    lines = format_table(status).splitlines()
    assert lines[-1].strip() == ("KV tiers: host 12 pages 12/64 MiB, 30 hits; node 40 pages 40/256 MiB, 7 hits; "
                                 "offloaded 14, restored 37 pages (1184 tokens), 1 fallbacks")
    plain = ReplicaEntry("r1", "127.0.0.1:2", ReplicaState.READY).to_proto()
    assert "KV tiers" not in format_table(ClusterStatus.from_proto(pb.ClusterStatus(replicas=[plain])))
