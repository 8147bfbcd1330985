"""Latency histograms and the snapshot's JSON round trip."""

from __future__ import annotations

import json

import pytest
from tests.support.dashboard_snapshots import galaxy_and_t3k, histogram, make_replica

from ttdist.dashboard.status import (
    INTER_TOKEN_BUCKETS_SECONDS,
    TTFT_BUCKETS_SECONDS,
    ClusterSnapshot,
    HistogramSnapshot,
    LatencySummary,
    cluster_latency,
)


def test_observe_puts_values_in_upper_inclusive_buckets():
    h = histogram([0.1, 1.0], [0.05, 0.1, 0.5, 1.0, 3.0, 7.0])
    assert h.bucket_counts == [2, 2, 2]
    assert h.count == 6
    assert h.sum == pytest.approx(11.65)


def test_quantile_interpolates_inside_the_bucket():
    h = histogram(TTFT_BUCKETS_SECONDS, [0.05] * 50 + [0.3] * 49 + [100.0])
    # rank 50 ends bucket (0.04, 0.06]; rank 99 ends bucket (0.25, 0.5].
    assert h.quantile(0.5) == pytest.approx(0.06)
    assert h.quantile(0.99) == pytest.approx(0.5)
    assert h.quantile(1.0) == 80.0  # above the last bound reports the last bound
    assert HistogramSnapshot.empty(TTFT_BUCKETS_SECONDS).quantile(0.5) == 0.0


def test_quantile_of_one_bucket_matches_promql():
    h = histogram([1.0, 2.0], [1.5] * 4)
    # histogram_quantile(0.5) over le=1:0, le=2:4 is 1 + (2-1) * 2/4.
    assert h.quantile(0.5) == 1.5
    assert h.quantile(0.25) == 1.25


def test_merged_and_minus():
    a = histogram([1.0], [0.5, 2.0])
    b = histogram([1.0], [0.5])
    total = a.merged(b)
    assert total.bucket_counts == [2, 1] and total.sum == 3.0
    assert total.minus(b).bucket_counts == [1, 1]
    assert total.minus(b).sum == 2.5
    # A counter that went down (replica restarted) counts from zero.
    assert b.minus(total).bucket_counts == [1, 0]
    with pytest.raises(ValueError, match="different bucket bounds"):
        a.merged(histogram([2.0], []))


def test_latency_summary_from_histogram():
    h = histogram(INTER_TOKEN_BUCKETS_SECONDS, [0.012] * 100)
    summary = LatencySummary.from_histogram(h)
    assert summary.count == 100
    assert summary.p50 == pytest.approx(0.01 + 0.015 * 0.5)
    assert summary.p99 == pytest.approx(0.01 + 0.015 * 0.99)


def test_cluster_latency_merges_every_replica():
    cluster = galaxy_and_t3k()
    cluster.update("t3k-0", ttft_histogram=histogram(TTFT_BUCKETS_SECONDS, [0.03] * 10))
    ttft, itl = cluster_latency(cluster().replicas)
    assert ttft.count == 20 and itl.count == 100
    # 19 observations in (0.02, 0.04]: rank 10 of 20.
    assert ttft.p50 == pytest.approx(0.02 + 0.02 * 10 / 19)


def test_snapshot_json_round_trip():
    snapshot = galaxy_and_t3k()()
    data = json.loads(json.dumps(snapshot.to_json()))
    assert ClusterSnapshot.from_json(data) == snapshot


def test_user_groups_pages_round_trip():
    snapshot = galaxy_and_t3k()()
    snapshot.replicas[0] = make_replica("tg-0", 8, 4, kv_user_groups=4, kv_pages_free_per_group=[200, 150, 250, 150])
    data = json.loads(json.dumps(snapshot.to_json()))
    assert data["replicas"][0]["kv_pages_free_per_group"] == [200, 150, 250, 150]
    assert ClusterSnapshot.from_json(data) == snapshot
    assert data["replicas"][1]["kv_user_groups"] == 1 and data["replicas"][1]["kv_pages_free_per_group"] == []
