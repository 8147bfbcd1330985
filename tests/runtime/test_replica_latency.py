"""A replica's TTFT and inter-token histograms, timed with explicit clock values."""

from __future__ import annotations

from ttdist.dashboard.status import INTER_TOKEN_BUCKETS_SECONDS, TTFT_BUCKETS_SECONDS
from ttdist.runtime.replica_latency import ReplicaLatency, RequestClock


def test_one_ttft_then_one_gap_per_later_token():
    latency = ReplicaLatency()
    clock = RequestClock(latency, started=10.0)
    clock.tokens(1, now=10.3)
    clock.tokens(1, now=10.35)
    clock.tokens(0, now=10.4)          # an output without tokens (a final ABORT) adds nothing
    clock.tokens(1, now=10.45)
    assert latency.ttft.bounds == list(TTFT_BUCKETS_SECONDS)
    assert latency.inter_token.bounds == list(INTER_TOKEN_BUCKETS_SECONDS)
    assert latency.ttft.count == 1 and abs(latency.ttft.sum - 0.3) < 1e-9
    assert latency.ttft.bucket_counts[TTFT_BUCKETS_SECONDS.index(0.5)] == 1      # (0.25, 0.5]
    assert latency.inter_token.count == 2 and abs(latency.inter_token.sum - 0.15) < 1e-9
    assert latency.inter_token.bucket_counts[INTER_TOKEN_BUCKETS_SECONDS.index(0.05)] == 1   # (0.025, 0.05]
    assert latency.inter_token.bucket_counts[INTER_TOKEN_BUCKETS_SECONDS.index(0.1)] == 1    # (0.075, 0.1]


def test_an_output_with_several_tokens_adds_zero_gaps():
    latency = ReplicaLatency()
    clock = RequestClock(latency, started=0.0)
    clock.tokens(3, now=0.2)
    clock.tokens(2, now=0.3)
    assert latency.ttft.count == 1
    # 5 tokens: 4 gaps, of which 0.1 s once and 0 three times
    assert latency.inter_token.count == 4 and abs(latency.inter_token.sum - 0.1) < 1e-9
    assert latency.inter_token.bucket_counts[0] == 3


def test_snapshots_are_copies_and_requests_add_up():
    latency = ReplicaLatency()
    for start in (0.0, 1.0):
        clock = RequestClock(latency, started=start)
        clock.tokens(1, now=start + 0.01)
        clock.tokens(1, now=start + 0.02)
    ttft, itl = latency.snapshot()
    assert (ttft.count, itl.count) == (2, 2)
    RequestClock(latency, started=5.0).tokens(1, now=5.1)
    assert (ttft.count, latency.ttft.count) == (2, 3)
