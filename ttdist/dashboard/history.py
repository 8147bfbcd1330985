"""A short server-side history of the cluster, for the page's charts.

One ``HistoryPoint`` per sample, kept for ``history_seconds``. Latency percentiles in a
point cover the last ``latency_window_s`` only: they come from the difference between the
replicas' cumulative histograms now and at the start of the window, so a slow start an
hour ago does not hide a fast cluster now. While no replica reports a histogram, the
points carry the coordinator's own latency summary instead.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ttdist.dashboard.replica_state import ReplicaState
from ttdist.dashboard.status import (
    INTER_TOKEN_BUCKETS_SECONDS,
    TTFT_BUCKETS_SECONDS,
    ClusterSnapshot,
    HistogramSnapshot,
    LatencySummary,
)
from ttdist.dashboard.summary import ClusterSummary, is_live, kv_cache_usage


@dataclass
class ReplicaPoint:
    state: ReplicaState
    running: int
    waiting: int
    tokens_per_second: float
    kv_cache_usage_perc: float


@dataclass
class HistoryPoint:
    time: float
    replicas_ready: int
    requests_running: int
    requests_waiting: int
    tokens_per_second: float
    kv_cache_usage_perc: float
    ttft_p50: float | None           # None: no first token in the window
    ttft_p99: float | None
    inter_token_p50: float | None
    inter_token_p99: float | None
    replicas: dict[str, ReplicaPoint] = field(default_factory=dict)


@dataclass
class _LatencyMark:
    time: float
    ttft: HistogramSnapshot
    inter_token: HistogramSnapshot


def _merged(snapshot: ClusterSnapshot) -> tuple[HistogramSnapshot, HistogramSnapshot]:
    ttft = HistogramSnapshot.empty(TTFT_BUCKETS_SECONDS)
    itl = HistogramSnapshot.empty(INTER_TOKEN_BUCKETS_SECONDS)
    for replica in snapshot.replicas:
        ttft = ttft.merged(replica.ttft_histogram)
        itl = itl.merged(replica.inter_token_histogram)
    return ttft, itl


def _recent(now: HistogramSnapshot, then: HistogramSnapshot,
            reported: LatencySummary) -> tuple[float | None, float | None]:
    """p50 and p99 of what the replicas observed since ``then``; when no replica reports
    histograms at all, the coordinator's own summary; None when there is nothing to show."""
    if now.count == 0:
        return (reported.p50, reported.p99) if reported.count else (None, None)
    window = now.minus(then)
    if window.count == 0:
        return None, None
    return window.quantile(0.5), window.quantile(0.99)


class History:
    """Points over the last ``history_seconds``, oldest first."""

    def __init__(self, history_seconds: float, latency_window_s: float) -> None:
        self._history_seconds = history_seconds
        self._latency_window_s = latency_window_s
        self._points: deque[HistoryPoint] = deque()
        self._marks: deque[_LatencyMark] = deque()

    def record(self, snapshot: ClusterSnapshot, now: float) -> HistoryPoint:
        """Adds the point for ``snapshot`` sampled at ``now`` (the dashboard's clock)."""
        summary = ClusterSummary.of(snapshot)
        ttft, itl = _merged(snapshot)
        self._marks.append(_LatencyMark(now, ttft, itl))
        while len(self._marks) > 1 and self._marks[1].time <= now - self._latency_window_s:
            self._marks.popleft()
        base = self._marks[0]
        ttft_p50, ttft_p99 = _recent(ttft, base.ttft, snapshot.ttft_seconds)
        itl_p50, itl_p99 = _recent(itl, base.inter_token, snapshot.inter_token_seconds)
        point = HistoryPoint(
            time=now,
            replicas_ready=summary.replicas_ready,
            requests_running=summary.requests_running,
            requests_waiting=summary.requests_waiting,
            tokens_per_second=summary.tokens_per_second,
            kv_cache_usage_perc=summary.kv_cache_usage_perc,
            ttft_p50=ttft_p50,
            ttft_p99=ttft_p99,
            inter_token_p50=itl_p50,
            inter_token_p99=itl_p99,
            replicas={
                r.replica_id: ReplicaPoint(
                    state=r.state,
                    running=r.running if is_live(r) else 0,
                    waiting=r.waiting if is_live(r) else 0,
                    tokens_per_second=r.tokens_per_second if is_live(r) else 0.0,
                    kv_cache_usage_perc=kv_cache_usage(r),
                )
                for r in snapshot.replicas
            },
        )
        self._points.append(point)
        while self._points and self._points[0].time < now - self._history_seconds:
            self._points.popleft()
        return point

    def since(self, after: float | None) -> list[HistoryPoint]:
        """Points newer than ``after`` (all of them when ``after`` is None)."""
        if after is None:
            return list(self._points)
        return [p for p in self._points if p.time > after]
