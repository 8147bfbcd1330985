"""The control-plane bench's core at 16 replicas: the real coordinator and router, stand-in replicas.

Keeps bench/bench_control_plane.py from rotting and checks that prefix sets reach the router
whole although, once it holds them, the coordinator's tables leave unchanged ones out.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ttdist.router.policies import POLICIES, RequestInfo, make_policy, route
from ttdist.router.router import Router, RouterConfig
from ttdist.runtime.routing_table import RouterReport

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_control_plane.py"
N = 16


def _bench():
    spec = importlib.util.spec_from_file_location("bench_control_plane", BENCH)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_router_sees_every_replica_and_picks_registered_ones():
    bench = _bench()
    coordinator = await bench.build_coordinator(N)
    fleet = bench.StandIns(sorted(coordinator.registry.replicas), prefixes=20, pages=4)
    router = Router(RouterConfig(policy="cache_aware"), bench.InProcessSource(coordinator))
    beats_cpu, tables_cpu = await bench.coordinator_cpu(coordinator, fleet, router, seconds=1)   # beats and tables
    assert beats_cpu > 0 and tables_cpu > 0
    for rid in fleet.replicas:          # one more round, acknowledged, then two tables: the second leaves sets out
        await bench.send_beat(coordinator, fleet, rid)
    await router.refresh()
    table = await coordinator.routing_table(RouterReport(prefix_held=router.replicas.prefix_held()))
    assert all(e.prefix_unchanged and not e.prefix_hashes for e in table.replicas)
    await router.refresh()
    entries = {e.replica_id: e for e in router.table.replicas}
    assert sorted(entries) == sorted(fleet.replicas) and len(entries) == N
    for rid, replica in fleet.replicas.items():
        assert entries[rid].prefix_hashes == replica.cached()
        assert not entries[rid].prefix_unchanged
    for name in POLICIES:
        times = bench.pick_times(router, fleet, name, picks=50, pages=4)
        assert len(times) == 50
        assert {v.replica_id for v in router.views()} == set(fleet.replicas)
    assert router.replicas.loads and set(router.replicas.loads) <= set(fleet.replicas)   # where the picks went
    prompt = fleet.replicas["replica-3"].prompts[0]   # its whole chain is on replica-3 only (random page hashes)
    chosen = route(make_policy("cache_aware"), router.views(), RequestInfo("r", 128, prompt))
    assert chosen.replica_id == "replica-3"
    await router.stop()


def test_unchanged_prefixes_of_another_incarnation_are_asked_for_again():
    from ttdist.dashboard.replica_state import ReplicaState
    from ttdist.router.replica_set import ReplicaSet
    from ttdist.runtime.request_checks import ModelCard
    from ttdist.runtime.routing_table import ReplicaEntry, RoutingTable

    card = ModelCard("scripted", 64, 256, 16)
    replicas = ReplicaSet("", 10.0)
    replicas.apply(RoutingTable(card, (ReplicaEntry("r0", "a:1", ReplicaState.READY, pid=1, prefix_hashes=frozenset({5}), prefix_seq=3),)))
    assert replicas.prefix_held() == {"r0": (1, 3)}
    replicas.apply(RoutingTable(card, (ReplicaEntry("r0", "a:1", ReplicaState.READY, pid=1, prefix_seq=3, prefix_unchanged=True),)))
    assert replicas.table.replicas[0].prefix_hashes == frozenset({5})   # kept from the set held
    replicas.apply(RoutingTable(card, (ReplicaEntry("r0", "a:1", ReplicaState.READY, pid=2, prefix_seq=3, prefix_unchanged=True),)))
    assert replicas.table.replicas[0].prefix_hashes == frozenset() and replicas.prefix_held() == {}   # the whole set next time
