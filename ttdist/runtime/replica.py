"""The replica actor: one engine + model on one mesh, serving ``Generation`` on an internal port.

A thin shell: the coordinator creates it with a ``ReplicaSetup``, asks which node it landed
on, then calls ``start`` with the weights (a converted-weight cache path on the
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
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import ray

from ttdist.engine.faults import NO_FAULTS, EngineFaults
from ttdist.engine.kv_tiers.config import KvTierConfig
from ttdist.engine.kv_tiers.node_tier import DEFAULT_ROOT as DEFAULT_NODE_DIR
from ttdist.engine.process import EngineProcess
from ttdist.engine.serving import ServingEngine
from ttdist.engine.stats import EngineStats
from ttdist.model.kv_budget import ReplicaMemory, replica_memory
from ttdist.runtime.autoscale.cold_start import Placed, process_start_time
from ttdist.runtime.config import backend_label
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.prefix_delta import PrefixSender
from ttdist.runtime.registry import Heartbeat
from ttdist.runtime.replica_latency import ReplicaLatency
from ttdist.runtime.replica_service import start_replica_server
from ttdist.runtime.scripted_engine import ScriptedEngine, ScriptedEngineConfig
from ttdist.dashboard.replica_state import ReplicaState
from ttdist.runtime.routing_table import ReplicaEntry
from ttdist.tracing import TracingConfig, make_tracing

COORDINATOR_NAME = "ttdist-coordinator"
NAMESPACE = "ttdist"
MIN_BEAT_GAP_S = 0.05     # prompt heartbeats (on a request's start or end) come at most this often
BEAT_TIMEOUT_S = 30.0     # a heartbeat call that takes longer (coordinator gone for good) is retried


def restarted_by_ray() -> bool:
    """True in an actor process that Ray started again after the previous one died."""
    with warnings.catch_warnings():   # Ray 2.60 warns about an attribute it reads itself
        warnings.simplefilter("ignore", DeprecationWarning)
        return ray.get_runtime_context().was_current_actor_reconstructed


def replica_actor_name(replica_id: str) -> str:
    """The Ray actor name of a replica (namespace ``NAMESPACE``); a restarted coordinator finds it by it."""
    return f"ttdist-{replica_id}"


@dataclass(frozen=True)
class ReplicaSetup:
    replica_id: str
    mesh: str
    backend: str
    card: ModelCard
    emulate: bool = False         # ttnn backend on emulated chips (ttdist.mesh.ttnn_emu installed in the engine's process)
    model_dir: str = ""
    devices: tuple[int, ...] = ()
    engine: str = "model"
    scripted: ScriptedEngineConfig = field(default_factory=ScriptedEngineConfig)
    num_pages: int = 256          # model engine: 0 sizes the cache from the backend's DRAM ledger,
    max_pages: int | None = None  # at most this many pages (a simulated cache lives in host RAM)
    max_batch: int = 32
    default_max_tokens: int = 256
    heartbeat_s: float = 0.5
    cpu_threads: int = 1
    host: str = "127.0.0.1"    # "" = this node's IP
    cluster_token: str = field(default="", repr=False)   # callers of the internal port must present it
    dispatch_core: str = "auto"   # ttnn backend: which cores dispatch (ReplicaGroup.dispatch_core)
    command_queues: int = 0       # ttnn backend: 1 or 2 command queues, 0 = auto (ReplicaGroup.command_queues)
    stall_after_s: float = 5.0    # the engine has work but made no step for this long: health NOT_SERVING
    engine_process: bool = True   # model engine: its step loop in a process of its own (EngineProcess)
    faults: EngineFaults = NO_FAULTS   # faults caused on purpose (tests)
    logprobs_mode: str = "raw"    # logprobs of generated tokens: raw, or processed (after temperature)
    tracing: TracingConfig = TracingConfig()   # OTLP spans of sampled requests (off by default)
    kv_host_bytes: str = "0"      # KV kept off the chips (``KvTierConfig.from_sizes``): read where the replica runs
    kv_node_bytes: str = "0"
    kv_node_dir: str = DEFAULT_NODE_DIR


@dataclass(frozen=True)
class StartedReplica:
    pid: int
    node_id: str
    address: str
    kv_pages_total: int
    memory: ReplicaMemory | None = None   # KV budget and chip DRAM from the backend's ledger (model engines)
    start_s: float = 0.0                  # how long ``start`` took (engine built and launched, server up)


def build_core(setup: ReplicaSetup, weights):
    """The model's ``EngineCore`` on its mesh from ``weights`` (a converted-weight cache path, a
    ``WeightSource`` or the ``ShardedWeights``), with ``cpu_threads`` torch threads on the simulator
    (the ttnn backend never imports torch). Runs where the step loop will run."""
    from ttdist.engine.core import EngineCore
    from ttdist.engine.config import EngineConfig
    from ttdist.engine.tokenizer import Tokenizer
    from ttdist.model.runner import MeshModelRunner
    from ttdist.runtime.remote_shards import open_weights

    s = setup
    options = None
    if s.backend == "sim":
        import torch

        torch.set_num_threads(s.cpu_threads)
    else:
        if s.emulate:   # before the ttnn backend is imported: ``import ttnn`` is the emulator from here on
            from ttdist.mesh import ttnn_emu

            ttnn_emu.install()
        options = {"dispatch_core": s.dispatch_core, "command_queues": s.command_queues or None}
    sharded = open_weights(weights)
    runner = MeshModelRunner.from_sharded(
        sharded, backend=s.backend, page_size=s.card.page_size, num_pages=s.num_pages or None, max_pages=s.max_pages,
        max_batch=s.max_batch, max_context=s.card.max_context, backend_options=options, logprobs_mode=s.logprobs_mode,
    )
    tokenizer = Tokenizer.from_dir_if_present(s.model_dir) if s.model_dir else None
    config = EngineConfig(max_batch=s.max_batch, default_max_tokens=s.default_max_tokens, faults=s.faults,
                          kv_tiers=KvTierConfig.from_sizes(s.kv_host_bytes, s.kv_node_bytes, s.kv_node_dir))
    return EngineCore(runner, tokenizer, config)


def core_memory(core) -> ReplicaMemory | None:
    """The KV budget and chip DRAM of a built engine's runner (its backend's ledger)."""
    return replica_memory(core.runner)


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
        ttft, inter_token = self.latency.snapshot()
        return Heartbeat(
            running=st.running, waiting=st.waiting, free_pages=st.free_pages, total_pages=st.total_pages,
            prefix_hit_rate=st.prefix_hit_rate, tokens_per_second=st.tokens_per_second,
            prompt_tokens_total=st.prompt_tokens_total, generation_tokens_total=st.generation_tokens_total,
            requests_finished_total=st.requests_finished_total,
            prefix_delta=self._prefix.delta(hashes), memory=self.memory,
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
