"""The coordinator actor: weights, KV budgets, the replica registry, health and restarts.

Named ``ttdist-coordinator`` in namespace ``ttdist``. ``start`` resolves every served model
(``ServedModel``: its card, checkpoint and weights), converts each model's weights once per mesh
layout into the converted-weight cache (progress in its log and an event), then starts every
replica actor. Replica ids run over the whole cluster (``replica-0``, ...) in spec order; each
record names its model, and a router asks for one model's table at a time. Each replica sizes its own KV cache from its backend's
DRAM ledger once its weights are placed (free DRAM - reserve, at its KV dtype; a simulated
cache, which lives in host RAM, is capped at ``max_kv_pages`` and says so) and reports the
budget and its per-chip DRAM (``ReplicaMemory``). Replicas on the coordinator's node
memory-map the cache entry; replicas elsewhere fetch its files through the Ray object store
in bounded chunks, one at a time (put once per layout).

A monitor loop probes every replica each ``heartbeat_s`` (a dead process fails at once),
feeds the health state machine and restarts failed replicas once they have shown as failed
for ``restart_delay_s`` (never, with ``restart`` off, nor after a start that raised a
``PermanentError``; when no replica can start, ``start`` and ``wait_ready`` raise
``NoReplicaCanStartError``; ``ttdist serve`` follows ``events_after``). The router asks for the
``RoutingTable`` and reports latencies and migrations in the same call; ``snapshot`` turns
all of it into the dashboard's ``ClusterSnapshot``.

Supervision: Ray restarts the coordinator when its process dies (``max_restarts``). The new
process rebuilds what it knew from the config (model card, converted-weight cache paths,
KV budgets, one ``recovering`` record per replica), finds the replica actors by name (they
are detached, so they outlived it) and lets their heartbeats re-register them; the routing
table is handed out again once every replica has re-registered or failed. Meanwhile the
routers keep serving from their last table. Restart counts and past events are not kept.
``drain_replica`` takes a replica out of routing, lets its streams finish (those still
running at the timeout move to other replicas) and restarts or removes it.

Autoscaling (a model's ``autoscale``): that model's pool follows its load, one ``PoolScaler``
per autoscaled model (``coordinator_autoscale.py``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import ray

from ttdist.dashboard.events import EventKind
from ttdist.dashboard.replica_state import ReplicaState
from ttdist.dashboard.status import ClusterSnapshot, EventCount
from ttdist.mesh.spec import parse_mesh
from ttdist.runtime.autoscale.cold_start import cold_start
from ttdist.runtime.autoscale.pool import PoolScaler
from ttdist.runtime import priority
from ttdist.runtime.coordinator_autoscale import AutoscalingMixin
from ttdist.runtime.config import NICENESS_ENV, ClusterConfig
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.registry import EventPage, Heartbeat, NoReplicaCanStartError, ReplicaRecord, Registry
from ttdist.runtime.replica import NAMESPACE, ReplicaActor, ReplicaSetup, replica_actor_name, restarted_by_ray
from ttdist.runtime.routing_table import RouterReport, RoutingTable, combine_reports
from ttdist.runtime.served_models import ServedModel, convert_weights, model_snapshot, replica_snapshot, resolve_card
from ttdist.runtime.table_changes import table_for

PROBE_TIMEOUT_S = 2.0
NAME_FREE_TIMEOUT_S = 30.0   # a restarted replica's actor name is free once Ray has its old actor dead
DRAIN_SETTLE_S = 1.0         # after marking a replica draining: time for the routers to see it


class Coordinator(AutoscalingMixin):
    def __init__(self, config: ClusterConfig) -> None:
        config.check()
        self.config = config
        self.registry = Registry(config.health)
        self.models: dict[str, ServedModel] = {}   # by served name (its card's id), in spec order; set by _prepare
        self._actors: dict[str, ray.actor.ActorHandle] = {}
        self._setups: dict[str, ReplicaSetup] = {}
        self._report = RouterReport(policy=config.served[0].policy)   # every router's reports added up
        self._reports: dict[tuple[str, str], RouterReport] = {}      # the last one of each (router, model)
        self._monitor: asyncio.Task | None = None
        self._dashboard = None
        self._node_id = ray.get_runtime_context().get_node_id()
        self.scalers: dict[str, PoolScaler] = {}   # per autoscaled model (by served name); set by _prepare
        self._wanted: dict[str, int] = {}           # each autoscaled pool's size as last decided (Ray's request)
        self._next_replica = 0           # replica ids are never reused: replica-0, replica-1, ...
        self._draining: set[asyncio.Task] = set()   # scale-down drains in flight
        self._removed: set[str] = set()             # replicas drained away: never adopted again
        # replicas take Ray's plain (pre-started) workers and set their nice level themselves where
        # a worker may; elsewhere a runtime_env sets it, at the cost of a fresh worker process each
        self._nice_in_actor = config.niceness is None or priority.can_reach(config.niceness)
        self._recovered = asyncio.Event()
        self._recovery: asyncio.Task | None = None
        # after a restart the pool's replicas re-register from their heartbeats before it decides anything
        self._autoscale_from = time.monotonic() + config.health.unhealthy_after_s if restarted_by_ray() else 0.0
        if restarted_by_ray():
            self._recovery = asyncio.get_running_loop().create_task(self._recover())
        else:
            self._recovered.set()

    # ---------------------------------------------------------------- start
    async def start(self) -> None:
        await self._prepare()
        await asyncio.gather(*(self._launch(rid) for rid in self._setups))
        await self._begin()
        self._check_some_can_start()

    def _check_some_can_start(self) -> None:
        why = self.registry.none_can_start()
        if why:
            raise NoReplicaCanStartError(f"no replica of {', '.join(self.models) or 'the model'} can start: {why}")

    async def _recover(self) -> None:
        """After Ray restarted this actor: adopt the replicas that outlived the old process."""
        self.registry.event(EventKind.COORDINATOR_RESTARTED, "", "rebuilding the registry from the replicas' heartbeats")
        await self._prepare(recovering=True)
        for rid in self._setups:
            try:
                self._actors[rid] = ray.get_actor(replica_actor_name(rid), namespace=NAMESPACE)
            except ValueError:
                self.registry.replicas[rid].recovering = False
                self.registry.failed(rid, time.monotonic(), "its actor is gone (found after a coordinator restart)")
        await self._begin()
        while any(r.recovering for r in self.registry.replicas.values()):
            await asyncio.sleep(0.05)
        self._recovered.set()

    async def _begin(self) -> None:
        self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())
        if self.config.dashboard_port is not None:
            await self._start_dashboard()

    async def _prepare(self, recovering: bool = False) -> None:
        """Model cards, weights (converted once per model and mesh; a restart finds them in the
        cache), one record per replica."""
        cfg = self.config
        for model in cfg.served:
            served = ServedModel(model)
            served.card = await asyncio.to_thread(resolve_card, served, cfg)
            self.models[served.card.model_id] = served
            if model.autoscale is not None:
                self.scalers[served.card.model_id] = PoolScaler(model.autoscale)
            if cfg.engine == "model":
                for mesh in sorted({g.mesh for g in served.config.groups}):
                    await convert_weights(served, mesh, self.config.weights_cache, self.registry)
        for name, served in self.models.items():
            autoscale = served.config.autoscale
            for gi, group in enumerate(served.config.groups):
                count = autoscale.start_replicas if autoscale is not None else group.count
                if autoscale is not None and recovering:   # adopted from their heartbeats (``heartbeat``);
                    self._next_replica += count            # the next models' ids stay those they started with
                    continue
                for k in range(count):
                    self._add_replica(name, gi, tuple(group.devices[k]) if group.devices else (), recovering)

    def _add_replica(self, model: str, gi: int, devices: tuple[int, ...] = (), recovering: bool = False,
                     rid: str = "") -> str:
        """A new record (starting) and setup for a replica of ``model``'s group ``gi`` (a new id
        unless ``rid`` names one to adopt); returns its id."""
        group = self.models[model].config.groups[gi]
        rid = rid or f"replica-{self._next_replica}"
        self._next_replica = max(self._next_replica, int(rid.rpartition("-")[2]) + 1)
        record = ReplicaRecord(rid, gi, parse_mesh(group.mesh).shape_str, group.label, devices, model=model)
        record.kv_pages_budget = self._pages_budget(group.mesh)
        record.recovering = recovering
        self.registry.add(record, time.monotonic())
        self._setups[rid] = self._setup(record, group.mesh)
        return rid

    def _pages_budget(self, mesh: str) -> int:
        """Scripted engines: their pool. Model engines: 0 until the replica reports the pages its
        backend's DRAM ledger leaves after the weights (``ReplicaMemory``)."""
        if self.config.engine == "scripted":
            return self.config.scripted.num_pages
        return 0

    def _group(self, record: ReplicaRecord):
        return self.models[record.model].config.groups[record.group]

    def _setup(self, record: ReplicaRecord, mesh: str) -> ReplicaSetup:
        cfg, group, served = self.config, self._group(record), self.models[record.model]
        in_host_ram = group.backend == "sim" or group.emulate   # a simulated or emulated cache lives in host RAM
        return ReplicaSetup(
            replica_id=record.replica_id, mesh=mesh, backend=group.backend, emulate=group.emulate, card=served.card,
            model_dir=served.model_dir, devices=record.devices, engine=cfg.engine, scripted=cfg.scripted,
            num_pages=min(record.kv_pages_budget, cfg.max_kv_pages) if cfg.engine == "scripted" else 0,
            max_pages=cfg.max_kv_pages if in_host_ram else None, max_batch=cfg.max_batch,
            default_max_tokens=cfg.default_max_tokens, heartbeat_s=cfg.health.heartbeat_s, cpu_threads=cfg.cpu_threads,
            niceness=cfg.niceness if self._nice_in_actor else None,
            host=cfg.replica_host, dispatch_core=group.dispatch_core, command_queues=group.command_queues,
            cluster_token=cfg.cluster_token, stall_after_s=cfg.health.stall_after_s, logprobs_mode=cfg.logprobs_mode,
            tracing=cfg.tracing,
            kv_host_bytes=cfg.kv_host_bytes, kv_node_bytes=cfg.kv_node_bytes, kv_node_dir=cfg.kv_node_dir,
        )

    async def _weights_for(self, setup: ReplicaSetup, node_id: str):
        if self.config.engine == "scripted":
            return None
        from ttdist.runtime.remote_shards import WeightSource

        served = self.models[self.registry.replicas[setup.replica_id].model]
        mesh, precision = setup.mesh, served.config.precision_of(setup.backend)  # one entry serves every precision
        if node_id == self._node_id:
            return WeightSource(entry=served.weights_path[mesh], precision=precision), "cache"
        if mesh not in served.weights_ref:  # the entry's files in bounded chunks, fetched one at a time
            from ttdist.runtime.remote_shards import RemoteShards

            served.weights_ref[mesh] = await asyncio.to_thread(RemoteShards.put, served.weights_path[mesh])
        return WeightSource(remote=served.weights_ref[mesh], precision=precision), "object_store"

    async def _launch(self, rid: str, decided: float | None = None) -> None:
        """Start replica ``rid``'s actor; ``decided`` (unix seconds): when a scale-up asked for it,
        to record its cold start."""
        setup = self._setups[rid]
        group = self._group(self.registry.replicas[rid])
        env = {} if self._nice_in_actor else {"OMP_NUM_THREADS": str(self.config.cpu_threads),
                                               NICENESS_ENV: str(self.config.niceness)}
        try:
            actor = await self._create_replica_actor(rid, group, env)
            self._actors[rid] = actor
            placed = await asyncio.wait_for(actor.placed.remote(), self.config.health.start_timeout_s)
            weights = await self._weights_for(setup, placed.node_id)
            arg, via = weights if weights else (None, "")
            self.registry.replicas[rid].weights_via = via
            started = await asyncio.wait_for(actor.start.remote(arg), self.config.health.start_timeout_s)
        except Exception as err:  # noqa: BLE001 - any start failure marks the replica failed
            cause = err.cause if isinstance(err, ray.exceptions.RayTaskError) else err   # the replica's own error
            self.registry.start_failed(rid, time.monotonic(), cause)
            return
        self.registry.started(
            rid, time.monotonic(), pid=started.pid, node_id=started.node_id, address=started.address,
            kv_pages_total=started.kv_pages_total,
        )
        self.registry.replicas[rid].memory = started.memory
        scaler = self.scalers.get(self.registry.replicas[rid].model)
        if decided is not None and scaler is not None:
            load = started.memory.load if started.memory else None
            took = cold_start(rid, decided, placed, started.start_s, load, time.time(), via)
            scaler.cold_starts.append(took)
            self.registry.event(EventKind.COLD_START, rid, took.describe())

    async def _create_replica_actor(self, rid: str, group, env: dict):
        """A named, detached replica actor (it outlives this coordinator); waits for a restarted
        replica's name to be released by its killed predecessor."""
        options = dict(
            name=replica_actor_name(rid), namespace=NAMESPACE, lifetime="detached", num_cpus=0,
            resources=dict(group.resources) or None, max_restarts=0, max_concurrency=1000,
        )
        if env:   # a runtime_env of its own: Ray starts a fresh worker process for it
            options["runtime_env"] = {"env_vars": env}
        deadline = time.monotonic() + NAME_FREE_TIMEOUT_S
        while True:
            try:
                return ray.remote(ReplicaActor).options(**options).remote(self._setups[rid])
            except ValueError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    # ---------------------------------------------------------------- health
    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health.heartbeat_s)
            serving = (ReplicaState.READY, ReplicaState.UNHEALTHY)
            await asyncio.gather(*(self._probe(rid) for rid, r in self.registry.replicas.items() if r.state in serving))
            self.registry.tick(time.monotonic())
            for rid in self.registry.due_restarts(time.monotonic()):
                await self._restart(rid)
            if self.scalers and self._recovered.is_set() and time.monotonic() >= self._autoscale_from:
                for model in self.scalers:
                    await self._autoscale(model)

    async def _probe(self, rid: str) -> None:
        try:
            await asyncio.wait_for(self._actors[rid].ping.remote(), PROBE_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.registry.unhealthy(rid, time.monotonic(), f"no answer to a probe within {PROBE_TIMEOUT_S} s")
        except ray.exceptions.RayActorError as err:
            self.registry.failed(rid, time.monotonic(), f"process gone: {type(err).__name__}")

    async def _restart(self, rid: str) -> None:
        old = self._actors.pop(rid, None)
        if old is not None:
            ray.kill(old, no_restart=True)
        self.registry.restarting(rid, time.monotonic())
        asyncio.get_running_loop().create_task(self._launch(rid))

    # ---------------------------------------------------------------- API
    async def heartbeat(self, replica_id: str, beat: Heartbeat) -> int:
        """Take a replica's heartbeat; returns the number of its prefix-hash set held here."""
        if replica_id not in self.registry.replicas and self.scalers and self._recovery and replica_id not in self._removed:
            await self._adopt(replica_id, beat)   # the pool's replica, heard from after a coordinator restart
        held = self.registry.heartbeat(replica_id, beat, time.monotonic())
        record = self.registry.replicas.get(replica_id)
        if record is not None and record.model in self.scalers:
            self.scalers[record.model].observe(replica_id, beat, time.monotonic())
        if beat.memory is not None and replica_id in self.registry.replicas:  # kept across coordinator restarts
            self.registry.replicas[replica_id].memory = beat.memory
        return held

    async def routing_table(self, report: RouterReport | None = None, model: str = "") -> RoutingTable:
        """``model``'s table (its card and pool; "" = the first model's): the entries changed after
        the table the router holds whole (``report.table_version``), or the whole table."""
        await self._recovered.wait()   # after a restart: not before every replica re-registered or failed
        first = next(iter(self.models))
        if report is not None:
            self._reports[(report.router_id, report.model or first)] = report
            self._report = combine_reports(list(self._reports.values()))
            self.registry.record(report.events)   # a ring: bounded however long it runs
        name = model or first
        scaler = self.scalers.get(name)
        return table_for(self.registry, name, self.models[name].card, scaler.status() if scaler else None, report)

    async def model_cards(self) -> list[ModelCard]:
        """Every served model's card, in spec order."""
        return [m.card for m in self.models.values()]

    async def replicas(self) -> list[ReplicaRecord]:
        return list(self.registry.replicas.values())

    async def wait_ready(self, count: int, timeout_s: float) -> int:
        """Wait until ``count`` replicas are ready; returns how many are, sooner once no more can
        become ready (failed for good). Raises ``NoReplicaCanStartError`` when none ever can."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.registry.replicas.values()
            ready = sum(r.state == ReplicaState.READY for r in records)
            if ready >= count or time.monotonic() > deadline:
                return ready
            self._check_some_can_start()
            if sum(self.registry.may_serve(r) for r in records) < count:
                return ready
            await asyncio.sleep(0.05)

    async def events_after(self, seen: int) -> EventPage:
        """The cluster's events numbered above ``seen`` (0: all still held), for a console to follow."""
        return self.registry.events_after(seen)

    async def model_dir_path(self, model: str = "") -> str:
        """``model``'s checkpoint folder ("" = the first model's)."""
        return (self.models[model] if model else next(iter(self.models.values()))).model_dir

    async def replica_setup(self, replica_id: str) -> tuple[ReplicaSetup, str | None]:
        """How ``replica_id`` builds its engine: its setup and converted-weight cache path
        (None for a scripted engine), e.g. to build the same engine outside the cluster."""
        setup = self._setups[replica_id]
        return setup, self.models[self.registry.replicas[replica_id].model].weights_path.get(setup.mesh)

    def actor(self, replica_id: str):
        return self._actors[replica_id]

    async def inject_fault(self, replica_id: str, faults) -> None:
        """Start every later incarnation of ``replica_id`` with ``faults`` (``EngineFaults``; tests:
        a replica that fails at every start is a crash loop). The running one is not touched."""
        self._setups[replica_id] = replace(self._setups[replica_id], faults=faults)

    async def drain_replica(self, replica_id: str, timeout_s: float = 30.0, restart: bool = True) -> int:
        """Restart (or, with ``restart`` off, remove) a replica on purpose without cutting streams:
        out of routing, its streams finish for up to ``timeout_s`` (those still running then move
        to other replicas when it stops), then it stops. Returns how many streams had to move."""
        if replica_id not in self.registry.replicas:
            raise KeyError(f"no replica {replica_id!r}; known: {', '.join(sorted(self.registry.replicas))}")
        self.registry.draining(replica_id, time.monotonic(), f"{'restart' if restart else 'removal'} on purpose")
        if self.registry.replicas[replica_id].state != ReplicaState.DRAINING:
            raise RuntimeError(f"replica {replica_id} is {self.registry.replicas[replica_id].state}, not serving")
        await asyncio.sleep(DRAIN_SETTLE_S)
        actor = self._actors[replica_id]
        try:
            moved = await asyncio.wait_for(actor.drain.remote(timeout_s), timeout_s + 10)
            await asyncio.wait_for(actor.stop.remote(), 10)
        except (asyncio.TimeoutError, ray.exceptions.RayError):
            moved = -1
        self.registry.event(EventKind.REPLICA_DRAINED, replica_id, f"{moved} stream(s) moved" if moved >= 0 else "did not answer")
        if restart:
            await self._restart(replica_id)
        else:
            ray.kill(self._actors.pop(replica_id), no_restart=True)
            self._forget(replica_id)
        return moved

    def _forget(self, replica_id: str) -> None:
        self._removed.add(replica_id)
        del self.registry.replicas[replica_id]
        self._setups.pop(replica_id, None)

    async def snapshot(self) -> ClusterSnapshot:
        now = time.monotonic()
        replicas = [replica_snapshot(r, now) for r in sorted(self.registry.replicas.values(), key=lambda r: r.replica_id)]
        first = next(iter(self.models), "")
        return ClusterSnapshot(
            time=time.time(), model=first, policy=self._report.policy or self.config.served[0].policy,
            replicas=replicas, events=list(self.registry.events[-100:]),
            ttft_seconds=self._report.ttft_seconds, inter_token_seconds=self._report.inter_token_seconds,
            models=[model_snapshot(name, served, self._reports, self._autoscale_snapshot(name))
                    for name, served in self.models.items()],
            event_counts=[EventCount(model, kind, n) for (model, kind), n in sorted(self.registry.event_counts.items())],
        )

    async def _start_dashboard(self) -> None:
        from ttdist.dashboard.server import DashboardConfig, DashboardServer

        self._dashboard = DashboardServer(
            DashboardConfig(host=self.config.host, port=self.config.dashboard_port), self.snapshot
        )
        await self._dashboard.start()

    async def dashboard_url(self) -> str:
        return self._dashboard.url if self._dashboard is not None else ""

    async def shutdown(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        if self._dashboard is not None:
            await self._dashboard.stop()
        if self._recovery is not None:
            self._recovery.cancel()
        stops = [a.stop.remote() for a in self._actors.values()]
        if stops:
            await asyncio.wait([asyncio.ensure_future(s) for s in stops], timeout=5.0)
        for actor in self._actors.values():
            ray.kill(actor, no_restart=True)
        self._actors.clear()


