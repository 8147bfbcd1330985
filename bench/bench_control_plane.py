"""Control-plane scale: the coordinator and one router with 64, 256 and 1,024 registered replicas.

What is real and what is a stand-in:

- Real: ``Coordinator`` (built from a scripted-engine ``ClusterConfig``; ``_prepare`` makes its
  registry records), ``Registry.started`` / ``heartbeat`` (prefix deltas applied) / ``tick``, the
  coordinator's ``heartbeat``, ``routing_table`` and ``snapshot`` methods, the dashboard's
  ``DashboardServer.sample`` + ``status_json``, the replica side's ``PrefixSender``, ``Router``
  (its refresh loop at the default ``refresh_s``, ``ReplicaSet``, ``choose``) and ``route`` with
  every policy in ``ttdist/router/policies/``.
- Stand-ins: no Ray and no replica processes. The replicas are plain objects in this process
  (``StandIns``: load figures and a prefix cache per replica, each heartbeating every
  ``heartbeat_s`` of the default ``HealthConfig``); Ray's RPCs are replaced by direct calls with a
  pickle round trip of the arguments and results (what Ray serializes; Ray's own per-call
  overhead is NOT counted); ``ray.get_runtime_context`` is replaced while the coordinator is
  built; the monitor loop's probes (Ray pings) are not made, its ``tick`` is. The router's
  ``cluster_status`` asks each replica over gRPC for live figures: not measured here.

Measured per size:
- coordinator CPU per second of heartbeats: process CPU time of one simulated second of load
  (every replica's heartbeats at the default interval, deserializing each; the monitor's ticks;
  one router's table fetches every ``refresh_s``, serializing the table), as a share of a core;
- table propagation: a replica's load change (seen at its next heartbeat) and a state change made
  at the coordinator (draining) -> the running router's table has it (wall time, p50 / max);
- routing decision time p50 / p99 per policy: the router's ``choose`` (what ``_pick`` does: the
  ready candidates less suspects, then ``route``), every replica holding ``--prefixes`` cached
  prompts of ``--pages`` pages (a share of them behind common system prompts), 60 % of requests
  continuing a cached prompt;
- status API: ``Coordinator.snapshot`` and the dashboard's ``status_json`` over it.
Targets (issue 32): coordinator < 25 % of a core and pick p99 < 1 ms at 1,024 replicas, cost per
replica growing no faster than linearly (growth = cost per replica at the largest size / at the
smallest; 1.0 = linear).

    .venv/bin/python bench/bench_control_plane.py [--sizes 64,256,1024] [--picks 500] [--changes 6]
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttdist.dashboard.replica_state import ReplicaState  # noqa: E402
from ttdist.router.policies import POLICIES, RequestInfo, make_policy  # noqa: E402
from ttdist.router.router import Router, RouterConfig  # noqa: E402
from ttdist.runtime.config import ClusterConfig, ReplicaGroup  # noqa: E402
from ttdist.runtime.coordinator import Coordinator  # noqa: E402
from ttdist.runtime.prefix_delta import PrefixSender  # noqa: E402
from ttdist.runtime.registry import Heartbeat  # noqa: E402
from ttdist.runtime.routing_table import RouterReport, RoutingTable  # noqa: E402

SYSTEM_PROMPTS = 32          # common system prompts (2 pages each) that a share of the cached prompts start with
TOTAL_PAGES = 512


def _hash(rng: random.Random) -> int:
    return rng.getrandbits(63)


@dataclass
class Replica:
    """One stand-in replica: its load and its prefix cache (a list of prompts, each a page-hash chain)."""

    replica_id: str
    prompts: list[tuple[int, ...]]
    running: int = 0
    sender: PrefixSender = field(default_factory=PrefixSender)

    def cached(self) -> frozenset[int]:
        return frozenset(h for p in self.prompts for h in p)


class StandIns:
    """Many replicas in one object: each heartbeats (as ``Heartbeat`` with a ``PrefixDelta``) and
    its cache turns over (one prompt in, the oldest out) now and then."""

    def __init__(self, ids: list[str], prefixes: int, pages: int, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.pages = pages
        self.systems = [tuple(_hash(self.rng) for _ in range(2)) for _ in range(SYSTEM_PROMPTS)]
        self.replicas = {rid: Replica(rid, [self.prompt() for _ in range(prefixes)]) for rid in ids}
        self._sets = {rid: r.cached() for rid, r in self.replicas.items()}

    def prompt(self) -> tuple[int, ...]:
        head = self.rng.choice(self.systems) if self.rng.random() < 0.5 else ()
        return head + tuple(_hash(self.rng) for _ in range(self.pages - len(head)))

    def beat(self, rid: str, churn: float = 0.1) -> Heartbeat:
        r = self.replicas[rid]
        if self.rng.random() < churn:
            r.prompts = r.prompts[1:] + [self.prompt()]
            self._sets[rid] = r.cached()
        return Heartbeat(running=r.running, waiting=0, free_pages=TOTAL_PAGES // 2, total_pages=TOTAL_PAGES,
                         prefix_hit_rate=0.5, tokens_per_second=100.0, prompt_tokens_total=0,
                         generation_tokens_total=0, prefix_delta=r.sender.delta(self._sets[rid]))


async def build_coordinator(n: int) -> Coordinator:
    """The real coordinator with ``n`` registered, ready replicas (records made by ``_prepare``)."""
    config = ClusterConfig(engine="scripted", groups=(ReplicaGroup(count=n, mesh="1x1"),), dashboard_port=None,
                           policy="cache_aware")
    context = SimpleNamespace(get_node_id=lambda: "node-bench", was_current_actor_reconstructed=False)
    with mock.patch("ttdist.runtime.coordinator.ray.get_runtime_context", lambda: context), \
         mock.patch("ttdist.runtime.replica.ray.get_runtime_context", lambda: context):
        coordinator = Coordinator(config)
    await coordinator._prepare()
    now = time.monotonic()
    for k, rid in enumerate(sorted(coordinator.registry.replicas)):
        coordinator.registry.started(rid, now, pid=10_000 + k, node_id="node-bench",
                                     address=f"127.0.0.1:{20_000 + k}", kv_pages_total=TOTAL_PAGES)
    return coordinator


async def send_beat(coordinator: Coordinator, fleet: StandIns, rid: str) -> float:
    """One heartbeat through the coordinator as Ray would carry it; returns the coordinator's CPU seconds."""
    blob = pickle.dumps((rid, fleet.beat(rid)))     # the replica's side
    t0 = time.process_time()
    held = await coordinator.heartbeat(*pickle.loads(blob))
    cpu = time.process_time() - t0
    fleet.replicas[rid].sender.acked(held)
    return cpu


class InProcessSource:
    """The coordinator as a router's ``ReplicaSource``: a direct call, report and table pickled."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.cpu_s = 0.0   # the coordinator's side: building and serializing tables

    async def table(self, report: RouterReport) -> RoutingTable:
        t0 = time.process_time()
        table = await self.coordinator.routing_table(pickle.loads(pickle.dumps(report)))
        blob = pickle.dumps(table)
        self.cpu_s += time.process_time() - t0
        return pickle.loads(blob)


async def coordinator_cpu(coordinator: Coordinator, fleet: StandIns, router: Router, seconds: int = 2) -> tuple[float, float]:
    """CPU seconds the coordinator spends per second of the cluster's heartbeats (a share of a core):
    on heartbeats and ticks, and on the router's tables."""
    health = coordinator.config.health
    beats_per_s = round(1 / health.heartbeat_s)
    tables_per_s = round(1 / RouterConfig().refresh_s)
    source = router.source
    for rid in fleet.replicas:            # the first beat of each carries its whole prefix set
        await send_beat(coordinator, fleet, rid)
    await router.refresh()                # and the router's first table every set
    source.cpu_s = 0.0
    cpu = 0.0
    for _ in range(seconds):
        for _ in range(beats_per_s):
            for rid in fleet.replicas:
                cpu += await send_beat(coordinator, fleet, rid)
            t0 = time.process_time()
            coordinator.registry.tick(time.monotonic())
            coordinator.registry.due_restarts(time.monotonic())
            cpu += time.process_time() - t0
        for _ in range(tables_per_s):
            await router.refresh()
    return cpu / seconds, source.cpu_s / seconds


async def heartbeat_loop(coordinator: Coordinator, fleet: StandIns) -> None:
    """Every stand-in heartbeats each ``heartbeat_s``, staggered; the monitor's tick each interval."""
    period = coordinator.config.health.heartbeat_s
    ids = list(fleet.replicas)
    start = time.monotonic()
    sent = 0
    while True:
        await asyncio.sleep(0.005)
        due = int((time.monotonic() - start) / period * len(ids))
        while sent < due:
            await send_beat(coordinator, fleet, ids[sent % len(ids)])
            sent += 1
            if sent % len(ids) == 0:
                coordinator.registry.tick(time.monotonic())


async def _wait_for(router: Router, rid: str, seen) -> float:
    t0 = time.monotonic()
    while not seen(router.table.entry(rid)):
        await asyncio.sleep(0.002)
    return time.monotonic() - t0


async def propagation(coordinator: Coordinator, fleet: StandIns, router: Router, changes: int) -> dict[str, list[float]]:
    """Seconds from a change to the router's table having it: a load change and a state change."""
    rng = random.Random(1)
    picked = rng.sample(list(fleet.replicas), 2 * changes)
    delays: dict[str, list[float]] = {"load": [], "state": []}
    for k in range(changes):
        await asyncio.sleep(rng.random() * 0.3)
        rid = picked[k]
        fleet.replicas[rid].running = 7
        delays["load"].append(await _wait_for(router, rid, lambda e: e.running == 7))
        await asyncio.sleep(rng.random() * 0.3)
        rid = picked[changes + k]
        coordinator.registry.draining(rid, time.monotonic(), "bench: a state change")
        delays["state"].append(await _wait_for(router, rid, lambda e: e.state == ReplicaState.DRAINING))
    return delays


def pick_times(router: Router, fleet: StandIns, policy: str, picks: int, pages: int,
               cpu: list[float] | None = None) -> list[float]:
    """Seconds per routing decision (``Router.choose``, what ``_pick`` does), the router's own load
    counts moving; ``cpu`` gets each decision's thread CPU time (wall time less other processes' turns)."""
    rng = random.Random(2)
    router.policy = make_policy(policy)
    ids = list(fleet.replicas)
    inflight: list[tuple[str, int]] = []
    times = []
    for k in range(picks):
        r = fleet.replicas[rng.choice(ids)]
        if rng.random() < 0.6:   # continues a cached prompt
            base = rng.choice(r.prompts)
            hashes = base[: rng.randint(2, len(base))] + tuple(_hash(rng) for _ in range(2))
        else:
            hashes = fleet.prompt()
        info = RequestInfo(f"req-{k}", prompt_tokens=32 * len(hashes), block_hashes=hashes)
        t0, c0 = time.perf_counter(), time.thread_time()
        chosen = router.choose(info)
        times.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.thread_time() - c0)
        router.replicas.load(chosen.replica_id).queued(info.prompt_tokens)
        inflight.append((chosen.replica_id, info.prompt_tokens))
        if len(inflight) > 64:
            rid, tokens = inflight.pop(rng.randrange(len(inflight)))
            router.replicas.load(rid).ended(tokens, started=False)
    for rid, tokens in inflight:
        router.replicas.load(rid).ended(tokens, started=False)
    return times


async def status_times(coordinator: Coordinator, repeats: int = 5) -> tuple[float, float]:
    """Median seconds of ``Coordinator.snapshot`` and of the dashboard's ``status_json`` over it."""
    from ttdist.dashboard.server import DashboardConfig, DashboardServer

    dashboard = DashboardServer(DashboardConfig(host="127.0.0.1", port=0), coordinator.snapshot)
    snaps, jsons = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        await dashboard.sample()
        snaps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        dashboard.status_json()
        jsons.append(time.perf_counter() - t0)
    return statistics.median(snaps), statistics.median(jsons)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class SizeResult:
    replicas: int
    cpu_share: float
    table_share: float
    load_delay: list[float]
    state_delay: list[float]
    picks: dict[str, list[float]]
    picks_cpu: dict[str, list[float]]
    snapshot_s: float
    status_json_s: float
    table_replicas: int


async def run_size(n: int, prefixes: int, pages: int, picks: int, changes: int) -> SizeResult:
    coordinator = await build_coordinator(n)
    fleet = StandIns(sorted(coordinator.registry.replicas), prefixes, pages)
    router = Router(RouterConfig(policy="cache_aware"), InProcessSource(coordinator))
    beats_cpu, tables_cpu = await coordinator_cpu(coordinator, fleet, router)
    await router.start()
    beats = asyncio.get_running_loop().create_task(heartbeat_loop(coordinator, fleet))
    try:
        delays = await propagation(coordinator, fleet, router, changes)
    finally:
        beats.cancel()
        await router.stop()
    await router.refresh()
    cpu: dict[str, list[float]] = {name: [] for name in POLICIES}
    times = {name: pick_times(router, fleet, name, picks, pages, cpu[name]) for name in POLICIES}
    snap, js = await status_times(coordinator)
    return SizeResult(n, beats_cpu + tables_cpu, tables_cpu, delays["load"], delays["state"], times, cpu, snap, js,
                      len(router.table.replicas))


def report(results: list[SizeResult]) -> None:
    print("\nreplicas  coord CPU (tables)  load->router p50/max ms  state->router p50/max ms  snapshot ms  status_json ms")
    for r in results:
        print(f"{r.replicas:8d}  {r.cpu_share * 100:7.1f} % ({r.table_share * 100:4.1f} %)  {pct(r.load_delay, .5) * 1e3:10.0f} / {max(r.load_delay) * 1e3:4.0f}"
              f"  {pct(r.state_delay, .5) * 1e3:14.0f} / {max(r.state_delay) * 1e3:4.0f}"
              f"  {r.snapshot_s * 1e3:11.1f}  {r.status_json_s * 1e3:14.1f}")
    for title, which in (("wall", "picks"), ("thread CPU time: less other processes' turns on a shared machine", "picks_cpu")):
        print(f"\nrouting decision (Router.choose), p50 / p99 ms, {title}")
        print("replicas  " + "  ".join(f"{name:>18s}" for name in POLICIES))
        for r in results:
            print(f"{r.replicas:8d}  " + "  ".join(
                f"{pct(t, .5) * 1e3:8.3f} / {pct(t, .99) * 1e3:7.3f}" for t in getattr(r, which).values()))
    lo, hi = results[0], results[-1]
    if hi.replicas == lo.replicas:
        return
    def growth(a: float, b: float) -> float:
        return (b / hi.replicas) / (a / lo.replicas)
    print(f"\ngrowth of cost per replica, {hi.replicas} vs {lo.replicas} replicas (1.0 = linear):")
    print(f"  coordinator CPU {growth(lo.cpu_share, hi.cpu_share):.2f}, snapshot {growth(lo.snapshot_s, hi.snapshot_s):.2f},"
          f" status_json {growth(lo.status_json_s, hi.status_json_s):.2f}, " + ", ".join(
              f"{name} p50 {growth(pct(lo.picks[name], .5), pct(hi.picks[name], .5)):.2f}" for name in POLICIES))
    worst = max(pct(t, .99) for t in hi.picks.values())
    worst_cpu = max(pct(t, .99) for t in hi.picks_cpu.values())
    print(f"targets at {hi.replicas}: coordinator {hi.cpu_share * 100:.1f} % of a core (< 25 %):"
          f" {'met' if hi.cpu_share < 0.25 else 'MISSED'}; worst pick p99 {worst * 1e3:.3f} ms wall,"
          f" {worst_cpu * 1e3:.3f} ms CPU (< 1 ms): {'met' if worst < 1e-3 else 'MISSED'}"
          f"{'' if worst < 1e-3 else ' (CPU: met)' if worst_cpu < 1e-3 else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256,1024", help="replica counts, comma-separated")
    parser.add_argument("--prefixes", type=int, default=200, help="cached prompts per replica")
    parser.add_argument("--pages", type=int, default=8, help="pages per cached prompt")
    parser.add_argument("--picks", type=int, default=500, help="routing decisions per policy and size")
    parser.add_argument("--changes", type=int, default=6, help="load and state changes timed per size")
    args = parser.parse_args()
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        t0 = time.monotonic()
        results.append(asyncio.run(run_size(n, args.prefixes, args.pages, args.picks, args.changes)))
        print(f"{n} replicas measured in {time.monotonic() - t0:.0f} s", flush=True)
    report(results)


if __name__ == "__main__":
    main()
