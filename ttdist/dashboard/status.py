"""The cluster as the dashboard, the status API and the metrics see it.

The coordinator builds a ``ClusterSnapshot`` from its registry and the replicas'
heartbeats; everything here is plain data (no Ray, no torch).
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field, replace

from ttdist.dashboard.events import Event
from ttdist.dashboard.replica_state import ReplicaState

# Fixed upper bounds (seconds) of the latency histograms that replicas report in their
# heartbeats; the last, implicit bucket is +Inf. Same shape as vLLM's, stretched upward
# because a simulated mesh on CPU is slower than a real one.
TTFT_BUCKETS_SECONDS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)
INTER_TOKEN_BUCKETS_SECONDS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)


@dataclass
class HistogramSnapshot:
    """Latency observations since the replica started, in fixed buckets.

    ``bucket_counts[i]`` counts observations in ``(bounds[i-1], bounds[i]]``; the last entry
    (index ``len(bounds)``) counts those above the last bound. Counts are per bucket, not
    cumulative across buckets; they only grow while the replica lives.
    """

    bounds: list[float]
    bucket_counts: list[int]
    sum: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...] | list[float]) -> "HistogramSnapshot":
        return cls(bounds=list(bounds), bucket_counts=[0] * (len(bounds) + 1), sum=0.0)

    @property
    def count(self) -> int:
        return sum(self.bucket_counts)

    def observe(self, value: float) -> None:
        self.bucket_counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def merged(self, other: "HistogramSnapshot") -> "HistogramSnapshot":
        self._check_same_bounds(other)
        counts = [a + b for a, b in zip(self.bucket_counts, other.bucket_counts)]
        return HistogramSnapshot(list(self.bounds), counts, self.sum + other.sum)

    def minus(self, earlier: "HistogramSnapshot") -> "HistogramSnapshot":
        """Observations made since ``earlier`` (a reset replica counts from zero)."""
        self._check_same_bounds(earlier)
        if any(a < b for a, b in zip(self.bucket_counts, earlier.bucket_counts)):
            return HistogramSnapshot(list(self.bounds), list(self.bucket_counts), self.sum)
        counts = [a - b for a, b in zip(self.bucket_counts, earlier.bucket_counts)]
        return HistogramSnapshot(list(self.bounds), counts, max(0.0, self.sum - earlier.sum))

    def quantile(self, q: float) -> float:
        """Linear interpolation inside the bucket holding rank ``q * count`` (as PromQL's
        histogram_quantile); observations above the last bound report the last bound."""
        total = self.count
        if total == 0:
            return 0.0
        rank = q * total
        seen = 0
        for i, n in enumerate(self.bucket_counts):
            if n and seen + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                low = self.bounds[i - 1] if i else 0.0
                return low + (self.bounds[i] - low) * (rank - seen) / n
            seen += n
        return self.bounds[-1]

    def _check_same_bounds(self, other: "HistogramSnapshot") -> None:
        if list(self.bounds) != list(other.bounds):
            raise ValueError("histograms with different bucket bounds cannot be combined")


CHIP_OK = "ok"     # a chip of a live replica


@dataclass
class ChipSnapshot:
    row: int
    col: int
    state: str                      # CHIP_OK, or ReplicaState.FAILED with its replica
    dram_total_bytes: int
    dram_weights_bytes: int
    dram_kv_bytes: int
    dram_other_bytes: int = 0       # everything else the replica backend's ledger holds


@dataclass
class ReplicaSnapshot:
    replica_id: str
    state: ReplicaState
    pid: int
    node_id: str
    mesh: str                       # "8x4"
    backend: str                    # sim | ttnn | ttnn (emulated)
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
    state_reason: str = ""                  # why it entered its state (e.g. the failure that stopped it)
    crash_loop: bool = False                # failed too often in a row: left failed, not restarted
    kv_pages_budget: int = 0                # pages the replica's DRAM ledger allows after its weights
    kv_pages_capped_by_host: bool = False   # a simulated cache in host RAM holds fewer
    last_heartbeat_age_s: float = 0.0
    ttft_histogram: HistogramSnapshot = field(
        default_factory=lambda: HistogramSnapshot.empty(TTFT_BUCKETS_SECONDS))
    inter_token_histogram: HistogramSnapshot = field(
        default_factory=lambda: HistogramSnapshot.empty(INTER_TOKEN_BUCKETS_SECONDS))
    requests_finished_total: int = 0
    kv_user_groups: int = 1                 # KV user groups (a Galaxy's column groups); pages above are totals
    kv_pages_free_per_group: list[int] = field(default_factory=list)   # group g's free pages, by group id
    model: str = ""                         # the served model whose pool it is in ("": the cluster's one model)
    # the engine's ``KvTierStats`` as JSON: {"enabled", "host": {...}, "node": {...}, "offloaded_pages", ...}; {}: not reported
    kv_tiers: dict = field(default_factory=dict)


@dataclass
class LatencySummary:
    p50: float
    p99: float
    count: int

    @classmethod
    def from_histogram(cls, histogram: HistogramSnapshot) -> "LatencySummary":
        return cls(p50=histogram.quantile(0.5), p99=histogram.quantile(0.99), count=histogram.count)


@dataclass
class AutoscaleSnapshot:
    """A model's autoscaled replica pool: its bounds, its signal, its size now and its decisions so far."""

    min_replicas: int
    max_replicas: int
    signal: str
    target: float
    replicas: int
    scale_ups_total: int = 0
    scale_downs_total: int = 0


@dataclass
class EventCount:
    """How many events of ``kind`` the cluster has had for ``model`` ("" for cluster-wide ones such
    as weight conversion), since the coordinator started."""

    model: str
    kind: str
    count: int


@dataclass
class ModelSnapshot:
    """One served model: its name, checkpoint, routing policy, its routers' latency window and its
    autoscaled pool."""

    name: str
    model: str = ""                 # its checkpoint
    policy: str = ""
    max_context: int = 0
    ttft_seconds: LatencySummary = field(default_factory=lambda: LatencySummary(0.0, 0.0, 0))
    inter_token_seconds: LatencySummary = field(default_factory=lambda: LatencySummary(0.0, 0.0, 0))
    autoscale: AutoscaleSnapshot | None = None   # its pool follows its load (None: a fixed count)


@dataclass
class ClusterSnapshot:
    time: float
    model: str                      # the first (default) model's name
    policy: str
    replicas: list[ReplicaSnapshot]
    events: list[Event]
    ttft_seconds: LatencySummary
    inter_token_seconds: LatencySummary
    models: list[ModelSnapshot] = field(default_factory=list)   # every served model, in spec order
    event_counts: list[EventCount] = field(default_factory=list)

    def model_of(self, replica: ReplicaSnapshot) -> str:
        """The model a replica serves (its own field; the cluster's model for an older snapshot)."""
        return replica.model or self.model

    def model_names(self) -> list[str]:
        return [m.name for m in self.models] or [self.model]

    def for_model(self, name: str) -> "ClusterSnapshot":
        """The snapshot of one model's pool: its replicas, policy and latency window."""
        info = next((m for m in self.models if m.name == name), None)
        if info is None:
            return replace(self, model=name, replicas=[r for r in self.replicas if self.model_of(r) == name])
        return replace(self, model=name, policy=info.policy, models=[info],
                       replicas=[r for r in self.replicas if self.model_of(r) == name],
                       ttft_seconds=info.ttft_seconds, inter_token_seconds=info.inter_token_seconds)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ClusterSnapshot":
        """The inverse of ``to_json``; keys it does not know (such as the extras that
        /api/status adds) are ignored."""
        replicas = []
        for r in data["replicas"]:
            r = _known(ReplicaSnapshot, r)
            r["state"] = ReplicaState(r["state"])
            r["chips"] = [ChipSnapshot(**_known(ChipSnapshot, c)) for c in r.get("chips", [])]
            for key in ("ttft_histogram", "inter_token_histogram"):
                if key in r:
                    r[key] = HistogramSnapshot(**_known(HistogramSnapshot, r[key]))
            replicas.append(ReplicaSnapshot(**r))
        return cls(
            time=data["time"], model=data["model"], policy=data["policy"], replicas=replicas,
            events=[Event(**_known(Event, e)) for e in data["events"]],
            ttft_seconds=LatencySummary(**_known(LatencySummary, data["ttft_seconds"])),
            inter_token_seconds=LatencySummary(**_known(LatencySummary, data["inter_token_seconds"])),
            models=[_model(m) for m in data.get("models", [])],
            event_counts=[EventCount(**_known(EventCount, c)) for c in data.get("event_counts", [])],
        )


def _model(data: dict) -> ModelSnapshot:
    m = _known(ModelSnapshot, data)
    for key in ("ttft_seconds", "inter_token_seconds"):
        if key in m:
            m[key] = LatencySummary(**_known(LatencySummary, m[key]))
    if m.get("autoscale"):
        m["autoscale"] = AutoscaleSnapshot(**_known(AutoscaleSnapshot, m["autoscale"]))
    return ModelSnapshot(**m)


def _known(cls: type, data: dict) -> dict:
    return {k: v for k, v in data.items() if k in cls.__dataclass_fields__}


def cluster_latency(replicas: list[ReplicaSnapshot]) -> tuple[LatencySummary, LatencySummary]:
    """TTFT and inter-token summaries over every replica's histogram since it started."""
    ttft = HistogramSnapshot.empty(TTFT_BUCKETS_SECONDS)
    itl = HistogramSnapshot.empty(INTER_TOKEN_BUCKETS_SECONDS)
    for r in replicas:
        ttft = ttft.merged(r.ttft_histogram)
        itl = itl.merged(r.inter_token_histogram)
    return LatencySummary.from_histogram(ttft), LatencySummary.from_histogram(itl)
