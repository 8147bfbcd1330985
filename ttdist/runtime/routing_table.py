"""What the coordinator and the router tell each other, as plain picklable data.

The coordinator hands the router a ``RoutingTable`` (every replica's address, health state
and last heartbeat figures); the router hands back a ``RouterReport`` (latency summaries and
events such as migrations) each time it asks. A replica's prefix hashes (thousands per replica)
travel only when they changed: the report says which numbered set (``prefix_held``) the router
holds per replica, and an entry whose set is still that one comes with ``prefix_unchanged`` and
no hashes (the router keeps its own copy). The same holds for the pages a replica's KV tiers
could restore (``tier_prefix_hashes``), numbered with the prefix set.

Entries travel only when they changed, too: each table says which change of the registry it is
as of (``version``: the registry's epoch and its change number); the router reports the version
of the whole table it holds (``RouterReport.table_version``), and the next table lists only the
entries changed after it (``changes_since``), with every replica's id in order
(``replica_ids``), so the router merges them into what it holds (table_changes.py builds them).
A version from another epoch (a restarted coordinator), or none, gets the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ttdist.dashboard.events import Event
from ttdist.dashboard.replica_state import ReplicaState, state_label
from ttdist.dashboard.status import LatencySummary
from ttdist.engine.kv_tiers.stats import KvTierStats
from ttdist.mesh.accounting import ChipDram
from ttdist.runtime.autoscale.status import PoolStatus
from ttdist.runtime.request_checks import ModelCard
from ttdist.v1 import generation_pb2 as pb


def _dram_fields(dram: ChipDram | None) -> dict:
    if dram is None:
        return {}
    return {"dram_total_bytes": dram.capacity, "dram_weights_bytes": dram.weights, "dram_kv_bytes": dram.kv_cache,
            "dram_other_bytes": dram.other}


@dataclass(frozen=True)
class ReplicaEntry:
    """One replica in the registry, as the router needs it."""

    replica_id: str
    address: str
    state: ReplicaState
    pid: int = 0
    node_id: str = ""
    mesh: str = ""
    backend: str = ""
    kv_pages_total: int = 0
    kv_pages_free: int = 0
    running: int = 0
    waiting: int = 0
    tokens_per_second: float = 0.0
    prefix_hashes: frozenset[int] = frozenset()
    kv_pages_budget: int = 0
    crash_loop: bool = False                # failed too often in a row: not restarted ("failed (crash loop)")
    kv_pages_capped_by_host: bool = False   # a simulated cache in host RAM holds fewer pages than the budget
    dram: ChipDram | None = None            # the fullest chip, from the replica backend's ledger
    kv_user_groups: int = 1                 # KV user groups (a Galaxy's column groups); pages above are totals
    kv_pages_free_per_group: tuple[int, ...] = ()   # group g's free pages, by group id (() if not reported)
    model: str = ""                         # the served model whose pool it is in
    kv_tiers: KvTierStats | None = None     # host and node KV tiers (None: not reported)
    prefix_seq: int = -1                    # the number of ``prefix_hashes`` (-1: unnumbered, always sent)
    prefix_unchanged: bool = False          # the asking router holds set ``prefix_seq`` of this pid: hashes left out
    tier_prefix_hashes: frozenset[int] = frozenset()   # pages its KV tiers could restore (numbered with ``prefix_seq``)

    def to_proto(self) -> pb.ReplicaStatus:
        return pb.ReplicaStatus(
            replica_id=self.replica_id, state=state_label(self.state, self.crash_loop),
            pid=self.pid, node_id=self.node_id,
            mesh=self.mesh, backend=self.backend, kv_pages_total=self.kv_pages_total,
            kv_pages_free=self.kv_pages_free, running=self.running, waiting=self.waiting,
            address=self.address, tokens_per_second=self.tokens_per_second, kv_pages_budget=self.kv_pages_budget,
            kv_pages_capped_by_host=self.kv_pages_capped_by_host, **_dram_fields(self.dram),
            kv_user_groups=self.kv_user_groups, kv_pages_free_per_group=self.kv_pages_free_per_group,
            model=self.model,
            kv_tiers=kv_tiers_proto(self.kv_tiers),
        )


def kv_tiers_proto(stats: KvTierStats | None) -> pb.KvTierStatus | None:
    """The engine's tier counters as the public message (None stays unset)."""
    if stats is None:
        return None
    def tier(c):
        return pb.KvTierCounters(**vars(c))
    return pb.KvTierStatus(
        enabled=stats.enabled, host=tier(stats.host), node=tier(stats.node), offloaded_pages=stats.offloaded_pages,
        restored_pages=stats.restored_pages, restored_tokens=stats.restored_tokens, restore_fallbacks=stats.restore_fallbacks,
        restore_seconds_total=stats.restore_s_total, offload_seconds_total=stats.offload_s_total,
    )


@dataclass(frozen=True)
class TableVersion:
    """Which state of the registry a table shows: changes up to ``change`` of registry ``epoch``."""

    epoch: str
    change: int


WHOLE = -1   # ``RoutingTable.changes_since`` of a whole table


@dataclass(frozen=True)
class RoutingTable:
    """One served model's table: its card and its pool's replicas (only those changed after
    ``changes_since`` when that is not ``WHOLE``: ``replica_ids`` then lists them all, in order)."""

    card: ModelCard
    replicas: tuple[ReplicaEntry, ...] = ()
    autoscale: PoolStatus | None = None   # the model's pool follows its load (None: a fixed count)
    version: TableVersion | None = None   # the registry state it shows (None: not versioned)
    changes_since: int = WHOLE
    replica_ids: tuple[str, ...] = ()

    @property
    def starts_on_demand(self) -> bool:
        """No replica may be ready, yet a request is served: one starts for it (``min_replicas: 0``)."""
        return self.autoscale is not None and self.autoscale.starts_on_demand

    def entry(self, replica_id: str) -> ReplicaEntry | None:
        return next((r for r in self.replicas if r.replica_id == replica_id), None)


def _empty() -> LatencySummary:
    return LatencySummary(p50=0.0, p99=0.0, count=0)


@dataclass(frozen=True)
class RouterReport:
    """The router's view since its last report: latency over a recent window, new events."""

    policy: str = ""
    ttft_seconds: LatencySummary = field(default_factory=_empty)
    inter_token_seconds: LatencySummary = field(default_factory=_empty)
    events: tuple[Event, ...] = field(default_factory=tuple)
    requests_total: int = 0
    migrations_total: int = 0
    router_id: str = ""       # which router (several may serve one port); the coordinator keeps one report each
    model: str = ""           # the served model it routes (a router runs one ``Router`` per model)
    waiting_for_replica: int = 0   # that model's requests held now for want of a replica (its autoscaler reads it)
    prefix_held: dict[str, tuple[int, int]] = field(default_factory=dict)   # replica id -> (pid, prefix_seq) it holds
    table_version: TableVersion | None = None   # of the whole table it holds (None: send the whole table)

def _combined_latency(summaries: list[LatencySummary]) -> LatencySummary:
    """Several routers' windows as one: p50 weighted by count (approximate), the worst p99."""
    count = sum(x.count for x in summaries)
    if not count:
        return _empty()
    return LatencySummary(p50=sum(x.p50 * x.count for x in summaries) / count,
                          p99=max(x.p99 for x in summaries if x.count), count=count)


def combine_reports(reports: list[RouterReport]) -> RouterReport:
    """The last report of every router, added up (what the dashboard shows for the cluster)."""
    if len(reports) == 1:
        return reports[0]
    return RouterReport(
        policy=reports[0].policy if reports else "",
        ttft_seconds=_combined_latency([r.ttft_seconds for r in reports]),
        inter_token_seconds=_combined_latency([r.inter_token_seconds for r in reports]),
        requests_total=sum(r.requests_total for r in reports),
        migrations_total=sum(r.migrations_total for r in reports),
        waiting_for_replica=sum(r.waiting_for_replica for r in reports),
    )
