"""A router's routing table from the registry: whole, or the entries changed since the one it holds.

The router's report names the table it holds whole (``RouterReport.table_version``: the
registry's epoch and a change number on ``registry.CHANGES``). When that is this registry's,
the table lists only the replicas whose record changed after it, or whose numbered prefix set
the router does not hold (``RouterReport.prefix_held``), with every replica's id in order, so
the router merges it into the table it holds (``ReplicaSet.apply``). Otherwise (a first
table, a restarted coordinator: another epoch) it is whole.
"""

from __future__ import annotations

from ttdist.runtime.autoscale.status import PoolStatus
from ttdist.runtime.registry import CHANGES, Registry
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.routing_table import RouterReport, RoutingTable, TableVersion


def table_for(registry: Registry, model: str, card: ModelCard, autoscale: PoolStatus | None,
              report: RouterReport | None) -> RoutingTable:
    """``model``'s table for the router that sent ``report`` (None: a whole table)."""
    held = report.prefix_held if report is not None else {}
    version = TableVersion(registry.epoch, CHANGES.now)
    seen = report.table_version if report is not None else None
    if seen is None or seen.epoch != registry.epoch or seen.change > version.change:
        return RoutingTable(card, registry.entries(model, held), autoscale, version)
    records = registry.pool(model)
    changed = tuple(r.entry(held.get(r.replica_id)) for r in records
                    if r.change > seen.change or r.prefix_missing(held.get(r.replica_id)))
    return RoutingTable(card, changed, autoscale, version, changes_since=seen.change,
                        replica_ids=tuple(r.replica_id for r in records))
