"""The cluster as the dashboard, the status API and the metrics see it.

The coordinator builds a ``ClusterSnapshot`` from its registry and the replicas'
heartbeats; everything here is plain data (no Ray, no torch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ChipSnapshot:
    row: int
    col: int
    state: str                      # ok, failed (the replica's state for its chips)
    dram_total_bytes: int
    dram_weights_bytes: int
    dram_kv_bytes: int


@dataclass
class ReplicaSnapshot:
    replica_id: str
    state: str                      # starting, ready, unhealthy, failed
    pid: int
    node_id: str
    mesh: str                       # "8x4"
    backend: str                    # sim | ttnn
    address: str                    # internal gRPC address
    kv_pages_total: int
    kv_pages_free: int
    running: int
    waiting: int
    tokens_per_second: float
    prompt_tokens_total: int
    generation_tokens_total: int
    prefix_hit_rate: float
    chips: list[ChipSnapshot] = field(default_factory=list)
    restarts: int = 0
    last_heartbeat_age_s: float = 0.0


@dataclass
class Event:
    time: float                     # unix seconds
    kind: str                       # replica_started, replica_failed, replica_restarted, request_migrated, ...
    replica_id: str
    message: str


@dataclass
class LatencySummary:
    p50: float
    p99: float
    count: int


@dataclass
class ClusterSnapshot:
    time: float
    model: str
    policy: str
    replicas: list[ReplicaSnapshot]
    events: list[Event]
    ttft_seconds: LatencySummary
    inter_token_seconds: LatencySummary

    def to_json(self) -> dict:
        return asdict(self)
