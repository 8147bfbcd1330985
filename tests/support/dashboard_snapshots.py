"""Snapshots built by hand and a source whose numbers tests change."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ttdist.dashboard.events import Event
from ttdist.dashboard.status import (
    INTER_TOKEN_BUCKETS_SECONDS,
    TTFT_BUCKETS_SECONDS,
    ChipSnapshot,
    ClusterSnapshot,
    EventCount,
    HistogramSnapshot,
    LatencySummary,
    ModelSnapshot,
    ReplicaSnapshot,
)

GiB = 2**30
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def make_replica(replica_id: str, rows: int, cols: int, **overrides) -> ReplicaSnapshot:
    chips = [
        ChipSnapshot(row=r, col=c, state="ok", dram_total_bytes=12 * GiB,
                     dram_weights_bytes=3 * GiB, dram_kv_bytes=6 * GiB)
        for r in range(rows) for c in range(cols)
    ]
    values = dict(
        replica_id=replica_id, state="ready", pid=1000, node_id="node-0", mesh=f"{rows}x{cols}",
        backend="sim", address="127.0.0.1:50100", kv_pages_total=1000, kv_pages_free=750,
        running=0, waiting=0, tokens_per_second=0.0, prompt_tokens_total=0,
        generation_tokens_total=0, prefix_hit_rate=0.0, chips=chips,
    )
    values.update(overrides)
    return ReplicaSnapshot(**values)


def histogram(bounds, values) -> HistogramSnapshot:
    h = HistogramSnapshot.empty(bounds)
    for v in values:
        h.observe(v)
    return h


class FakeCluster:
    """A source whose numbers tests change; thread-safe because the dashboard runs in its own thread."""

    def __init__(self, replicas: list[ReplicaSnapshot], events: list[Event] | None = None,
                 models: list[ModelSnapshot] | None = None) -> None:
        self._lock = threading.Lock()
        self.replicas = replicas
        self.events = events or []
        self.models = models or []   # several served models (empty: the one model "tiny-llama")
        self.calls = 0

    def update(self, replica_id: str, **changes) -> None:
        with self._lock:
            replica = next(r for r in self.replicas if r.replica_id == replica_id)
            for key, value in changes.items():
                setattr(replica, key, value)

    def __call__(self) -> ClusterSnapshot:
        with self._lock:
            self.calls += 1
            return ClusterSnapshot(
                time=time.time(), model=self.models[0].name if self.models else "tiny-llama", policy="least_load",
                models=list(self.models),
                replicas=[ReplicaSnapshot(**{**r.__dict__, "chips": list(r.chips)}) for r in self.replicas],
                events=list(self.events),
                event_counts=[EventCount("tiny-llama", kind, sum(e.kind == kind for e in self.events))
                              for kind in sorted({e.kind for e in self.events})],
                ttft_seconds=LatencySummary(0.0, 0.0, 0), inter_token_seconds=LatencySummary(0.0, 0.0, 0),
            )


def galaxy_and_t3k() -> FakeCluster:
    return FakeCluster(
        [
            make_replica("tg-0", 8, 4, running=3, waiting=1, tokens_per_second=212.5,
                         prompt_tokens_total=4096, generation_tokens_total=1500,
                         ttft_histogram=histogram(TTFT_BUCKETS_SECONDS, [0.03] * 9 + [0.2]),
                         inter_token_histogram=histogram(INTER_TOKEN_BUCKETS_SECONDS, [0.012] * 99 + [0.09])),
            make_replica("t3k-0", 1, 8, kv_pages_free=1000, address="127.0.0.1:50101", pid=1001),
        ],
        [Event(time=time.time() - 5, kind="replica_started", replica_id="tg-0", message="ready on 8x4")],
    )
