"""The replica actor: one engine + model on one mesh, serving ``Generation`` on an internal port.

A thin shell: the coordinator creates it with a ``ReplicaSetup`` (``replica_setup.py``) in
Ray's plain worker, where it sets its own nice level, ``OMP_NUM_THREADS`` and
``TT_VISIBLE_DEVICES`` (``priority.py``: no ``runtime_env`` of its own, so Ray may hand it a
worker it pre-started), asks which node it landed on, then calls ``start`` with the weights (a converted-weight cache path on the
coordinator's node, the shards themselves through the Ray object store elsewhere). Once
serving it sends a ``Heartbeat`` to the coordinator every ``heartbeat_s``, and sooner (at
most one per ``MIN_BEAT_GAP_S``) when a request starts or ends, so the registry's running
and waiting counts follow the replica closely. Each heartbeat carries copies of the
replica's TTFT and inter-token histograms (``ReplicaLatency``) and the incarnation that sent
it (pid, node, address).

Replica actors are named (``replica_actor_name``) and detached from the coordinator, so they
outlive it: when Ray restarts a dead coordinator, it finds them by name, and they keep
heartbeating (looking the coordinator up by name again after an error) and re-register from
their heartbeats. ``drain`` stops taking requests and waits for the running ones to finish.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable

import ray

from ttdist.engine.faults import EngineFaults
from ttdist.engine.process import EngineProcess
from ttdist.engine.serving import ServingEngine
from ttdist.engine.stats import EngineStats
from ttdist.model.kv_budget import ReplicaMemory
from ttdist.runtime import priority
from ttdist.runtime.autoscale.cold_start import Placed, process_start_time
from ttdist.runtime.config import backend_label
from ttdist.runtime.prefix_delta import PrefixSender
from ttdist.runtime.registry import Heartbeat
from ttdist.runtime.replica_latency import ReplicaLatency
from ttdist.runtime.replica_service import start_replica_server
from ttdist.runtime.replica_setup import ReplicaSetup, build_core, core_memory
from ttdist.runtime.scripted_engine import ScriptedEngine
from ttdist.dashboard.replica_state import ReplicaState
from ttdist.runtime.routing_table import ReplicaEntry
from ttdist.tracing import make_tracing

__all__ = ["ReplicaActor", "ReplicaSetup", "StartedReplica", "build_core", "build_engine", "core_memory"]

COORDINATOR_NAME = "ttdist-coordinator"
NAMESPACE = "ttdist"
MIN_BEAT_GAP_S = 0.05     # prompt heartbeats (on a request's start or end) come at most this often
BEAT_TIMEOUT_S = 30.0     # a heartbeat call that takes longer (coordinator gone for good) is retried


def restarted_by_ray() -> bool:
    """True in an actor process that Ray started again after the previous one died."""
    with warnings.catch_warnings():   # Ray 2.60 warns about an attribute it reads itself
        warnings.simplefilter("ignore", DeprecationWarning)
        return ray.get_runtime_context().was_current_actor_reconstructed


def _in_ray_actor() -> bool:
    """True in a Ray actor's process (tests also build a ``ReplicaActor`` in their own process)."""
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def replica_actor_name(replica_id: str) -> str:
    """The Ray actor name of a replica (namespace ``NAMESPACE``); a restarted coordinator finds it by it."""
    return f"ttdist-{replica_id}"


@dataclass(frozen=True)
class StartedReplica:
    pid: int
    node_id: str
    address: str
    kv_pages_total: int
    memory: ReplicaMemory | None = None   # KV budget and chip DRAM from the backend's ledger (model engines)
    start_s: float = 0.0                  # how long ``start`` took (engine built and launched, server up)


def build_engine(setup: ReplicaSetup, weights) -> ServingEngine:
    """The engine a replica serves (not started): a scripted one, the model's engine in a process
    of its own (``EngineProcess``, the default), or with ``engine_process=False`` the model's
    ``AsyncEngine`` in this process (the serving benchmark builds its in-process baseline so).
    Blocking (the in-process engine builds its model here): a replica calls it off its loop."""
    s = setup
    if s.engine == "scripted":
        return ScriptedEngine(replace(s.scripted, faults=s.faults))
    from ttdist.engine import AsyncEngine
    from ttdist.engine.tokenizer import Tokenizer

    if not s.engine_process:
        return AsyncEngine.around(build_core(s, weights), measure_memory=core_memory)
    tokenizer = Tokenizer.from_dir_if_present(s.model_dir) if s.model_dir else None
    return EngineProcess(build_core, (s, _node_local(weights)), measure_memory=core_memory, tokenizer=tokenizer)


EngineFactory = Callable[[ReplicaSetup, Any], ServingEngine]   # (setup, weights) -> the engine, not started


def _node_local(weights):
    """Weights the engine process can open by itself: shards fetched through Ray land in this
    node's cache first (the child is no Ray worker)."""
    from ttdist.runtime.remote_shards import WeightSource

    if isinstance(weights, WeightSource) and weights.remote is not None:
        return WeightSource(entry=str(weights.remote.fetch()), precision=weights.precision)
    return weights


class ReplicaActor:
    """A thin shell over the ``ServingEngine`` that ``engine_factory`` builds (``build_engine`` by
    default; tests hand in their own, as Ray Serve LLM takes its ``engine_cls``)."""

    def __init__(self, setup: ReplicaSetup, engine_factory: EngineFactory = build_engine) -> None:
        self.setup = setup
        self.engine_factory = engine_factory
        self.engine: ServingEngine | None = None
        self.memory = None
        self.server = None
        self.tracing = None
        self._beats: asyncio.Task | None = None
        self.latency = ReplicaLatency()
        self._prefix = PrefixSender()   # heartbeats carry what changed in the cached page hashes
        self._changed: asyncio.Event | None = None
        self.address = ""
        self._engine_ok = True
        self._constructed = time.time()
        if setup.devices:
            # before anything can open the chips: this replica sees only its own
            os.environ["TT_VISIBLE_DEVICES"] = ",".join(str(d) for d in setup.devices)
        if _in_ray_actor():
            # what Ray's plain worker lacks, set here rather than by a runtime_env of the replica's own
            # (which costs a fresh worker process); before the engine process inherits it
            os.environ["OMP_NUM_THREADS"] = str(setup.cpu_threads)
        self.nice_level = os.getpriority(os.PRIO_PROCESS, 0)
        if setup.niceness is not None and _in_ray_actor():
            done, self.nice_level = priority.set_level(setup.niceness)
            if not done:
                print(f"ttdist: {setup.replica_id} could not set itself {setup.niceness} nice levels below Ray "
                      f"(needs CAP_SYS_NICE); it runs at nice {self.nice_level}", file=sys.stderr)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def placed(self) -> Placed:
        """Its node, and when its worker process started and the actor was constructed (cold-start timing)."""
        return Placed(self.node_id(), process_start_time(), self._constructed)

    def served_model(self) -> str:
        """The served model whose pool this replica is in (a restarted coordinator adopts it there)."""
        return self.setup.card.model_id

    def ping(self) -> int:
        return os.getpid()

    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    async def start(self, weights) -> StartedReplica:
        started = time.perf_counter()
        self.engine = await asyncio.to_thread(self.engine_factory, self.setup, weights)
        await self.engine.launch()
        host = self.setup.host or ray.util.get_node_ip_address()
        self._changed = asyncio.Event()
        self.tracing = make_tracing(self.setup.tracing, "ttdist-replica")
        self.server = await start_replica_server(
            self.engine, self.setup.card, self.setup.replica_id, self._entry, host,
            latency=self.latency, on_change=self._changed.set, token=self.setup.cluster_token, tracing=self.tracing,
        )
        self.address = f"{host}:{self.server.port}"
        self._beats = asyncio.get_running_loop().create_task(self._heartbeats())
        total = (await self.engine.read_stats()).total_pages
        self.memory = self.engine.memory()
        return StartedReplica(os.getpid(), self.node_id(), self.address, total, self.memory,
                              time.perf_counter() - started)

    async def _entry(self) -> ReplicaEntry:
        """This replica's registry entry now (its GetClusterStatus answer)."""
        stats = await self.engine.read_stats()
        live = self.engine.liveness()
        if not live.alive:
            state = ReplicaState.FAILED
        elif live.stalled(self.setup.stall_after_s):
            state = ReplicaState.UNHEALTHY
        else:
            state = ReplicaState.READY
        return ReplicaEntry(
            self.setup.replica_id, "", state, os.getpid(), self.node_id(), self.setup.mesh,
            backend_label(self.setup.backend, self.setup.emulate),
            stats.total_pages, stats.free_pages, stats.running, stats.waiting, stats.tokens_per_second,
            kv_user_groups=stats.user_groups, kv_pages_free_per_group=tuple(stats.free_pages_per_group),
            kv_tiers=stats.kv_tiers,
        )

    async def engine_stats(self) -> EngineStats:
        """The engine's own ``EngineStats`` (step counts, token totals), for benchmarks and tests."""
        return await self.engine.read_stats()

    async def heartbeat(self) -> Heartbeat:
        st = await self.engine.read_stats()
        hashes = frozenset(await self.engine.read_prefix_hashes())
        tiers = frozenset(await self.engine.read_tier_hashes()) if st.kv_tiers.enabled else frozenset()
        ttft, inter_token = self.latency.snapshot()
        return Heartbeat(
            running=st.running, waiting=st.waiting, free_pages=st.free_pages, total_pages=st.total_pages,
            prefix_hit_rate=st.prefix_hit_rate, tokens_per_second=st.tokens_per_second,
            prompt_tokens_total=st.prompt_tokens_total, generation_tokens_total=st.generation_tokens_total,
            requests_finished_total=st.requests_finished_total,
            prefix_delta=self._prefix.delta(hashes, tiers), memory=self.memory,
            kv_user_groups=st.user_groups, kv_pages_free_per_group=tuple(st.free_pages_per_group), kv_tiers=st.kv_tiers,
            ttft_histogram=ttft, inter_token_histogram=inter_token,
            pid=os.getpid(), node_id=self.node_id(), address=self.address, engine=self.engine.liveness(),
        )

    async def _publish_health(self, beat: Heartbeat) -> None:
        """grpc.health.v1 on the internal port follows the engine: NOT_SERVING while its step loop
        is dead or stuck with work, SERVING again once it steps."""
        ok = beat.engine.alive and not beat.engine.stalled(self.setup.stall_after_s)
        if ok != self._engine_ok and self.server is not None:
            self._engine_ok = ok
            await self.server.set_serving(ok)

    async def inject_fault(self, faults: EngineFaults) -> None:
        """Cause ``faults`` in this replica's engine from now on (tests: stall or crash it for real)."""
        await self.engine.inject_faults(faults)

    async def _heartbeats(self) -> None:
        coordinator = None
        while True:
            self._changed.clear()
            try:
                if coordinator is None:   # a call to Ray's control store: not on the loop that streams tokens
                    coordinator = await asyncio.to_thread(ray.get_actor, COORDINATOR_NAME, namespace=NAMESPACE)
                report = await self.heartbeat()
                await self._publish_health(report)
                beat = coordinator.heartbeat.remote(self.setup.replica_id, report)
                self._prefix.acked(await asyncio.wait_for(beat, BEAT_TIMEOUT_S))
            except (ValueError, asyncio.TimeoutError, ray.exceptions.RayError):
                # the coordinator is restarting (or gone): keep serving, look it up again
                coordinator = None
                await asyncio.sleep(self.setup.heartbeat_s)
                continue
            await asyncio.sleep(MIN_BEAT_GAP_S)
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, self.setup.heartbeat_s - MIN_BEAT_GAP_S))
            except asyncio.TimeoutError:
                pass

    async def drain(self, timeout_s: float) -> int:
        """Health NOT_SERVING, then wait (up to ``timeout_s``) until no request runs or waits;
        returns how many still do (``stop`` cuts them, and the router moves them elsewhere)."""
        if self.server is None:
            return 0
        span = None if self.tracing is None else self.tracing.start("replica.drain", attributes={
            "ttdist.replica_id": self.setup.replica_id, "ttdist.drain_timeout_s": timeout_s})
        await self.server.set_serving(False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            st = await self.engine.read_stats()
            if st.running + st.waiting == 0 or loop.time() >= deadline:
                if span is not None:
                    span.set_attribute("ttdist.streams_left", st.running + st.waiting)
                    span.end()
                return st.running + st.waiting
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._beats is not None:
            self._beats.cancel()
        if self.server is not None:
            await self.server.stop(0.5)
        if self.engine is not None:
            await self.engine.stop()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)
