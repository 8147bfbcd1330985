"""Everything that grows per step or per event is bounded: the CCL ledger keeps counters and a
ring of recent records, the registry's and the router's event lists and latency windows are
rings, whatever the run's length."""

from __future__ import annotations

import asyncio

from ttdist.mesh.accounting import CclLedger, CclRecord
from ttdist.mesh.spec import Topology
from ttdist.router.router import MAX_PENDING_EVENTS, Router, RouterConfig
from ttdist.router.latency import LatencyWindow
from ttdist.runtime.config import HealthConfig
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.registry import Registry
from ttdist.runtime.routing_table import RoutingTable


def test_ccl_ledger_counts_every_collective_but_keeps_only_recent_records():
    ledger = CclLedger(keep=8)
    for i in range(10_000):
        op = "all_gather" if i % 2 else "reduce_scatter"
        ledger.record(CclRecord(op, i % 3 == 0, 2, Topology.LINE, 100.0, 1.0 + (i % 2)))
    assert len(ledger.records) == 8 and ledger.records[-1].bytes_moved == 2.0   # the last one: i = 9999, odd
    assert ledger.recorded == 10_000
    assert ledger.count() == 10_000 and ledger.count("all_gather") == 5_000
    assert ledger.total_bytes() == 5_000 * 2.0 + 5_000 * 1.0
    per_axis = ledger.bytes_per_axis()
    assert sum(per_axis.values()) == ledger.total_bytes() and set(per_axis) == {0, 1}
    ledger.clear()
    assert ledger.count() == 0 and ledger.records == [] and ledger.bytes_per_axis() == {}


def test_registry_events_are_a_ring():
    reg = Registry(HealthConfig(), max_events=50)
    for i in range(1_000):
        reg.event("replica_unhealthy", "r0", f"event {i}")
    assert len(reg.events) == 50 and reg.events[-1].message == "event 999"


def test_latency_window_is_a_ring():
    window = LatencyWindow(size=100)
    for i in range(10_000):
        window.add(float(i))
    summary = window.summary()
    assert summary.count == 100 and summary.p50 >= 9_900


class _Down:
    """A coordinator that does not answer."""

    def __init__(self, table: RoutingTable) -> None:
        self.first, self.table_ = True, table

    async def table(self, report):
        if self.first:
            self.first = False
            return self.table_
        raise ConnectionError("coordinator gone")


async def test_router_events_waiting_for_a_silent_coordinator_are_bounded():
    router = Router(RouterConfig(refresh_s=0.001), _Down(RoutingTable(ModelCard("m", 10, 64))))
    await router.start()
    try:
        for _ in range(200):
            await asyncio.sleep(0.002)
            if len(router._events) >= MAX_PENDING_EVENTS:
                break
        for i in range(3 * MAX_PENDING_EVENTS):
            router._event("request_migrated", "r0", f"e{i}")
        assert len(router._events) == MAX_PENDING_EVENTS
        assert router._events[-1].message == f"e{3 * MAX_PENDING_EVENTS - 1}"
    finally:
        await router.stop()
