"""Routing tables travel as changes: after each refresh the router's merged table is the whole
table the coordinator would send, while replicas heartbeat (figures and prefix sets moving),
drain, fail, restart, leave and join; quiet replicas are not sent again."""

from __future__ import annotations

import importlib.util
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

from ttdist.router.router import Router, RouterConfig
from ttdist.runtime.registry import ReplicaRecord
from ttdist.runtime.routing_table import WHOLE, RouterReport, TableVersion

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_control_plane.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_control_plane", BENCH)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Counting:
    """The coordinator as the router's source, keeping each table it answered."""

    def __init__(self, source) -> None:
        self.source = source
        self.tables = []

    async def table(self, report):
        table = await self.source.table(report)
        self.tables.append(table)
        return table


async def test_the_merged_table_is_the_whole_table_through_every_kind_of_change():
    bench = _bench()
    rng = random.Random(5)
    coordinator = await bench.build_coordinator(12)
    registry = coordinator.registry
    fleet = bench.StandIns(sorted(registry.replicas), prefixes=6, pages=3)
    source = Counting(bench.InProcessSource(coordinator))
    router = Router(RouterConfig(policy="cache_aware"), source)
    for rid in fleet.replicas:
        await bench.send_beat(coordinator, fleet, rid)
    await router.refresh()
    assert source.tables[-1].changes_since == WHOLE   # the first is whole
    for step in range(60):
        live = [rid for rid in fleet.replicas if rid in registry.replicas]
        for rid in rng.sample(live, 4):
            fleet.replicas[rid].running = rng.randrange(3)
            await bench.send_beat(coordinator, fleet, rid)
        roll, rid = rng.random(), rng.choice(live)
        now = time.monotonic()
        if roll < 0.1:
            registry.draining(rid, now, "test")
        elif roll < 0.2:
            registry.failed(rid, now, "test")
        elif roll < 0.3 and registry.replicas[rid].state == "failed":
            registry.restarting(rid, now)
            registry.started(rid, now, pid=50_000 + step, node_id="n", address=f"127.0.0.1:{30_000 + step}", kv_pages_total=512)
            fleet.replicas[rid].sender.acked(None)   # a new incarnation sends its whole set
        elif roll < 0.35 and len(live) > 3:
            del registry.replicas[rid]   # removed
        elif roll < 0.4:
            gone = [r for r in fleet.replicas if r not in registry.replicas]
            if gone:
                back = gone[0]
                registry.add(ReplicaRecord(back, 0, "1x1", "sim", model=next(iter(coordinator.models))), now)
                registry.started(back, now, pid=60_000 + step, node_id="n", address=f"127.0.0.1:{31_000 + step}", kv_pages_total=512)
                fleet.replicas[back].sender.acked(None)
        await router.refresh()
        whole = registry.entries(next(iter(coordinator.models)))
        assert router.table.replicas == whole, f"step {step}"
        assert {v.replica_id: v.prefix_hashes for v in router.views()} == {e.replica_id: e.prefix_hashes for e in whole}
        assert source.tables[-1].changes_since != WHOLE
    await router.refresh()   # nothing changed: an empty table of changes
    assert source.tables[-1].replicas == () and len(source.tables[-1].replica_ids) == len(registry.replicas)


async def test_a_table_of_changes_that_cannot_apply_is_dropped_and_the_whole_one_asked_for():
    bench = _bench()
    coordinator = await bench.build_coordinator(4)
    router = Router(RouterConfig(policy="round_robin"), bench.InProcessSource(coordinator))
    await router.refresh()
    held = router.replicas.table_version
    assert held is not None and held.epoch == coordinator.registry.epoch
    table = await coordinator.routing_table(RouterReport(table_version=held))
    old = router.table
    router.replicas.apply(replace(table, version=TableVersion("another registry", table.version.change + 1)))
    assert router.table is old and router.replicas.table_version is None   # dropped; the next report asks whole
    source = Counting(router.source)
    router.source = source
    await router.refresh()
    assert source.tables[-1].changes_since == WHOLE and router.replicas.table_version is not None
    assert router.table.replicas == coordinator.registry.entries()


async def test_a_prefix_set_the_router_does_not_hold_is_sent_though_unchanged():
    bench = _bench()
    coordinator = await bench.build_coordinator(4)
    fleet = bench.StandIns(sorted(coordinator.registry.replicas), prefixes=3, pages=2)
    router = Router(RouterConfig(policy="cache_aware"), bench.InProcessSource(coordinator))
    for rid in fleet.replicas:
        await bench.send_beat(coordinator, fleet, rid)
    await router.refresh()
    held = router.replicas.prefix_held()
    lost = dict(held)
    del lost["replica-1"]   # e.g. a concurrent refresh left the router without it
    table = await coordinator.routing_table(RouterReport(prefix_held=lost, table_version=router.replicas.table_version))
    assert [e.replica_id for e in table.replicas] == ["replica-1"]
    assert table.replicas[0].prefix_hashes == fleet.replicas["replica-1"].cached()
    table = await coordinator.routing_table(RouterReport(prefix_held=held, table_version=router.replicas.table_version))
    assert table.replicas == ()
