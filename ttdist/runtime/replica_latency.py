"""One replica's latency histograms: time to first token and the gaps between tokens.

The replica's ``Generation`` service measures each request as it streams it: TTFT from the
moment the request reached the service to its first token, then one inter-token gap per
token after the first (an output that carries k tokens at once adds its gap and k - 1 gaps
of zero). So each finished request adds one TTFT and ``completion_tokens - 1`` gaps. The
histograms use the dashboard's fixed buckets and only grow while the replica lives; the
replica sends copies in every heartbeat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ttdist.dashboard.status import INTER_TOKEN_BUCKETS_SECONDS, TTFT_BUCKETS_SECONDS, HistogramSnapshot


def _copy(histogram: HistogramSnapshot) -> HistogramSnapshot:
    return HistogramSnapshot(list(histogram.bounds), list(histogram.bucket_counts), histogram.sum)


@dataclass
class ReplicaLatency:
    ttft: HistogramSnapshot = field(default_factory=lambda: HistogramSnapshot.empty(TTFT_BUCKETS_SECONDS))
    inter_token: HistogramSnapshot = field(
        default_factory=lambda: HistogramSnapshot.empty(INTER_TOKEN_BUCKETS_SECONDS))

    def request(self) -> "RequestClock":
        """A clock for one request, started now."""
        return RequestClock(self, time.perf_counter())

    def snapshot(self) -> tuple[HistogramSnapshot, HistogramSnapshot]:
        """Copies of (ttft, inter_token) that later observations do not change."""
        return _copy(self.ttft), _copy(self.inter_token)


@dataclass
class RequestClock:
    latency: ReplicaLatency
    started: float
    last: float | None = None

    def tokens(self, count: int, now: float | None = None) -> None:
        """``count`` tokens were delivered at ``now`` (default: the current time)."""
        if count <= 0:
            return
        now = time.perf_counter() if now is None else now
        if self.last is None:
            self.latency.ttft.observe(now - self.started)
        else:
            self.latency.inter_token.observe(now - self.last)
        for _ in range(count - 1):
            self.latency.inter_token.observe(0.0)
        self.last = now
