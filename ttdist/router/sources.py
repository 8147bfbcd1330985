"""A fixed routing table as a ``ReplicaSource``: for running the router without a coordinator."""

from __future__ import annotations

from ttdist.runtime.routing_table import RouterReport, RoutingTable


class StaticSource:
    """Serves ``current`` (replace it to change the table); keeps the router's last report."""

    def __init__(self, table: RoutingTable) -> None:
        self.current = table
        self.last_report: RouterReport | None = None

    async def table(self, report: RouterReport) -> RoutingTable:
        self.last_report = report
        return self.current
