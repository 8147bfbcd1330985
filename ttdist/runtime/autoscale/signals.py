"""A pool's ``PoolLoad`` from its replicas' own heartbeats (plain Python, clock passed in).

Load signals read the last heartbeat of each ready replica: running + waiting requests,
waiting requests, KV pages in use. The SLO signals need latency over a recent window, but a
heartbeat carries histograms since the replica started: ``LatencyWindow`` keeps each
replica's histograms of the last ``window_s`` and takes the p90 of what was observed in it
(the newest minus the oldest kept, summed over replicas).
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from ttdist.dashboard.replica_state import ReplicaState
from ttdist.dashboard.status import HistogramSnapshot
from ttdist.runtime.autoscale.config import AutoscaleConfig
from ttdist.runtime.autoscale.decision import PoolLoad
from ttdist.runtime.registry import Heartbeat, ReplicaRecord

IN_POOL = (ReplicaState.STARTING, ReplicaState.READY, ReplicaState.UNHEALTHY, ReplicaState.FAILED)


class LatencyWindow:
    """Per replica, the histograms of one latency (TTFT or inter-token) over the last ``window_s``."""

    def __init__(self, signal: str, window_s: float) -> None:
        self.field = "ttft_histogram" if signal == "ttft_p90_ms" else "inter_token_histogram"
        self.window_s = window_s
        self._seen: dict[str, deque[tuple[float, HistogramSnapshot]]] = {}

    def add(self, replica_id: str, beat: Heartbeat, now: float) -> None:
        hist = getattr(beat, self.field)
        if hist is None:
            return
        kept = self._seen.setdefault(replica_id, deque())
        kept.append((now, hist))
        while len(kept) > 2 and now - kept[1][0] >= self.window_s:   # keep one sample at or before the window's start
            kept.popleft()

    def forget(self, live: set[str]) -> None:
        for rid in set(self._seen) - live:
            del self._seen[rid]

    def p90_ms(self) -> float | None:
        window = None
        for kept in self._seen.values():
            recent = kept[-1][1].minus(kept[0][1]) if len(kept) > 1 else None
            if recent is not None and recent.count:
                window = recent if window is None else window.merged(recent)
        return None if window is None else window.quantile(0.9) * 1000.0


def pool_load(config: AutoscaleConfig, records: Iterable[ReplicaRecord], waiting_for_replica: int,
              latency: LatencyWindow | None, may_serve=lambda r: True) -> PoolLoad:
    """The pool's ``PoolLoad``: ``records`` are its replicas (draining ones are not counted)."""
    pool = [r for r in records if r.state in IN_POOL and may_serve(r)]
    ready = [r for r in pool if r.state == ReplicaState.READY and r.stats is not None]
    ongoing = sum(r.stats.running + r.stats.waiting for r in ready)
    queued = sum(r.stats.waiting for r in ready)
    kv = sum(1 - r.stats.free_pages / r.stats.total_pages for r in ready if r.stats.total_pages)
    if latency is not None:
        latency.forget({r.replica_id for r in pool})
    starting = sum(r.state == ReplicaState.STARTING for r in pool)
    return PoolLoad(replicas=len(pool), ready=len(ready), starting=starting, ongoing=ongoing, queued=queued, kv_used=kv,
                    waiting_for_replica=waiting_for_replica, latency_p90_ms=latency.p90_ms() if latency else None)
