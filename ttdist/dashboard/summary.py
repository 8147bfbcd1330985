"""Figures derived from one ``ClusterSnapshot``: the cluster summary and per-replica extras.

The page, ``/api/status`` and ``/metrics`` all read these, so every view of the cluster
adds things up the same way. A failed replica still shows (with its last figures) but adds
nothing to the live totals: its requests are gone or migrated and its pages are not usable.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttdist.dashboard.replica_state import ReplicaState
from ttdist.dashboard.status import (
    CHIP_OK,
    ClusterSnapshot,
    LatencySummary,
    ReplicaSnapshot,
    cluster_latency,
)


def is_live(replica: ReplicaSnapshot) -> bool:
    return replica.state != ReplicaState.FAILED


def kv_cache_usage(replica: ReplicaSnapshot) -> float:
    """Fraction of the replica's KV pages in use (0..1, as vLLM's kv_cache_usage_perc)."""
    if replica.kv_pages_total <= 0:
        return 0.0
    used = replica.kv_pages_total - replica.kv_pages_free
    return min(1.0, max(0.0, used / replica.kv_pages_total))


def chip_state(replica: ReplicaSnapshot, chip_state_value: str) -> str:
    """A chip that reports ok takes its replica's state when the replica is not ready."""
    if chip_state_value == CHIP_OK and replica.state != ReplicaState.READY:
        return replica.state
    return chip_state_value


@dataclass
class ClusterSummary:
    replicas_total: int
    replicas_ready: int
    replicas_failed: int
    requests_running: int
    requests_waiting: int
    tokens_per_second: float
    kv_pages_total: int
    kv_pages_used: int
    kv_cache_usage_perc: float
    prompt_tokens_total: int
    generation_tokens_total: int
    requests_finished_total: int
    ttft_seconds: LatencySummary
    inter_token_seconds: LatencySummary

    @classmethod
    def of(cls, snapshot: ClusterSnapshot) -> "ClusterSummary":
        live = [r for r in snapshot.replicas if is_live(r)]
        pages_total = sum(r.kv_pages_total for r in live)
        pages_used = sum(max(0, r.kv_pages_total - r.kv_pages_free) for r in live)
        ttft, itl = snapshot.ttft_seconds, snapshot.inter_token_seconds
        if ttft.count == 0 and itl.count == 0:
            ttft, itl = cluster_latency(snapshot.replicas)
        return cls(
            replicas_total=len(snapshot.replicas),
            replicas_ready=sum(r.state == ReplicaState.READY for r in snapshot.replicas),
            replicas_failed=sum(r.state == ReplicaState.FAILED for r in snapshot.replicas),
            requests_running=sum(r.running for r in live),
            requests_waiting=sum(r.waiting for r in live),
            tokens_per_second=sum(r.tokens_per_second for r in live),
            kv_pages_total=pages_total,
            kv_pages_used=pages_used,
            kv_cache_usage_perc=pages_used / pages_total if pages_total else 0.0,
            prompt_tokens_total=sum(r.prompt_tokens_total for r in snapshot.replicas),
            generation_tokens_total=sum(r.generation_tokens_total for r in snapshot.replicas),
            requests_finished_total=sum(r.requests_finished_total for r in snapshot.replicas),
            ttft_seconds=ttft,
            inter_token_seconds=itl,
        )
