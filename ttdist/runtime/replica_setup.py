"""What a replica builds its engine from, importable without Ray.

``ReplicaSetup`` (one replica's settings, from the coordinator) and ``build_core`` (the model's
``EngineCore`` from them), kept apart from the actor: a replica's engine process imports
``build_core`` by name and unpickles its setup, and importing Ray (and the actor's gRPC server)
there cost it about half a second of its start for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ttdist.engine.faults import NO_FAULTS, EngineFaults
from ttdist.engine.kv_tiers.config import KvTierConfig
from ttdist.engine.kv_tiers.node_tier import DEFAULT_ROOT as DEFAULT_NODE_DIR
from ttdist.model.kv_budget import ReplicaMemory, replica_memory
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.scripted_engine import ScriptedEngineConfig
from ttdist.tracing.config import TracingConfig


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
    cpu_threads: int = 1          # torch threads (and ``OMP_NUM_THREADS``) of the engine
    niceness: int | None = None   # nice levels below Ray this replica sets itself to (None: as Ray started it)
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
