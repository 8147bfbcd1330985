"""The one configuration object of a cluster, checked once where it enters (CLI or spec file).

A cluster serves one or more models (``ModelConfig``: a served name, a checkpoint, a precision,
a routing policy, a chat template and its own groups of replicas). The one-model form keeps
those settings at the top level of ``ClusterConfig`` (``models`` empty); ``served`` gives the
models either way. Each group says how many
replicas, on which mesh and backend, which Ray resources each one needs (``tt_chips`` and
a system kind on real hosts) and, where one host's chips are split between replicas, which
device ids each replica owns (set as ``TT_VISIBLE_DEVICES`` in that replica).

Ray starts its worker processes 15 nice levels below its own, so on a busy host they lose
the CPU to every ordinary process. The data plane (replicas and the router) starts
``niceness`` levels below Ray instead (0 by default: Ray's own priority); the coordinator
keeps Ray's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ttdist.engine.kv_tiers.config import KvTierConfig
from ttdist.engine.kv_tiers.node_tier import DEFAULT_ROOT as DEFAULT_NODE_DIR
from ttdist.engine.logprobs import LOGPROBS_MODES
from ttdist.mesh.precision import Precision
from ttdist.mesh.spec import MeshSpecError, parse_mesh
from ttdist.runtime.api_config import ApiConfig, ApiConfigError
from ttdist.runtime.autoscale.config import AutoscaleConfig, AutoscaleConfigError
from ttdist.runtime.scripted_engine import ScriptedEngineConfig
from ttdist.tracing.config import TracingConfig, TracingConfigError

BACKENDS = ("sim", "ttnn")
AUTO_DTYPE = "auto"
# What ``dtype: auto`` (the default) means on each backend: float32 on the simulator (the reference
# math), tt_transformers' ``accuracy`` preset on ttnn (bf16 attention and KV, bfp8 MLP and LM head)
DEFAULT_PRECISION = {"sim": "float32", "ttnn": "accuracy"}
DISPATCH_CORES = ("auto", "worker_row", "worker_col", "eth_row", "eth_col")   # ttnn: see mesh/ttnn/device.py
NICENESS_ENV = "RAY_worker_niceness"   # read by Ray when it starts a worker with this env
ENGINES = ("model", "scripted")


def backend_label(backend: str, emulate: bool) -> str:
    """How status, events and the dashboard name a replica's backend."""
    return f"{backend} (emulated)" if emulate else backend


class ClusterConfigError(ValueError):
    """A cluster setting that cannot work; the message names the field."""


@dataclass(frozen=True)
class ReplicaGroup:
    count: int = 1
    mesh: str = "1x1"
    backend: str = "sim"
    resources: dict[str, float] = field(default_factory=dict)
    devices: tuple[tuple[int, ...], ...] = ()   # one device-id list per replica, or empty
    dispatch_core: str = "auto"                 # ttnn: cores that dispatch; auto = what the platform recommends
    command_queues: int = 0                     # ttnn: 1 or 2 (KV page transfers on the second); 0 = auto (2 on chips)
    emulate: bool = False                       # ttnn on emulated chips of ``mesh`` (ttdist.mesh.ttnn_emu), no ttnn needed

    @property
    def label(self) -> str:
        """The backend as status shows it: ``sim``, ``ttnn`` or ``ttnn (emulated)``."""
        return backend_label(self.backend, self.emulate)

    def check(self, where: str) -> None:
        if self.count < 1:
            raise ClusterConfigError(f"{where}.count must be >= 1, got {self.count}")
        try:
            spec = parse_mesh(self.mesh)
        except MeshSpecError as err:
            raise ClusterConfigError(f"{where}.mesh: {err}") from None
        if self.backend not in BACKENDS:
            raise ClusterConfigError(f"{where}.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.emulate is not True and self.emulate is not False:
            raise ClusterConfigError(f"{where}.emulate must be true or false, got {self.emulate!r}")
        if self.emulate and self.backend != "ttnn":
            raise ClusterConfigError(f"{where}.emulate runs the ttnn backend on emulated chips: it needs backend ttnn, "
                                     f"not {self.backend!r} (the simulator needs no chips)")
        if self.command_queues not in (0, 1, 2):
            raise ClusterConfigError(f"{where}.command_queues must be 1, 2 or 0 (auto), got {self.command_queues!r}")
        if self.dispatch_core not in DISPATCH_CORES:
            raise ClusterConfigError(f"{where}.dispatch_core must be one of {', '.join(DISPATCH_CORES)}, got {self.dispatch_core!r}")
        if self.devices and len(self.devices) != self.count:
            raise ClusterConfigError(f"{where}.devices lists {len(self.devices)} device sets for {self.count} replicas")
        for ids in self.devices:
            if any(d < 0 for d in ids) or len(set(ids)) != len(ids):
                raise ClusterConfigError(f"{where}.devices: {list(ids)} must be distinct device ids >= 0")
            if len(ids) != spec.num_chips:
                raise ClusterConfigError(f"{where}.devices: {list(ids)} is not {spec.num_chips} chips for mesh {self.mesh}")
        for name, amount in self.resources.items():
            if amount < 0:
                raise ClusterConfigError(f"{where}.resources.{name} must be >= 0, got {amount}")


def _precision_of(dtype: str, backend: str) -> str:
    return DEFAULT_PRECISION[backend] if dtype == AUTO_DTYPE else dtype


@dataclass(frozen=True)
class ModelConfig:
    """One served model: the name requests give in ``model``, its checkpoint, precision, routing
    policy, chat template and replica pool; ``autoscale``: the pool follows its load (one group,
    its count from ``AutoscaleConfig``; None: each group's fixed count)."""

    name: str = ""                               # "" = the checkpoint's own name (folder name, or smollm2)
    model: str = "smollm2"                       # a checkpoint directory or "smollm2"
    dtype: str = AUTO_DTYPE
    groups: tuple[ReplicaGroup, ...] = (ReplicaGroup(),)
    policy: str = "round_robin"
    chat_template: str | None = None             # a jinja file that replaces the checkpoint's chat template
    autoscale: AutoscaleConfig | None = None

    @property
    def served_name(self) -> str:
        """The id clients name it by: ``name``, else the checkpoint folder's name (or smollm2)."""
        if self.name:
            return self.name
        return self.model if self.model == "smollm2" else Path(self.model).expanduser().resolve().name

    @property
    def num_replicas(self) -> int:
        """The replicas started at launch: every group's count, or the autoscaled pool's initial count."""
        if self.autoscale is not None:
            return self.autoscale.start_replicas
        return sum(g.count for g in self.groups)

    def check(self, where: str = "") -> None:
        """``where`` prefixes field names (``models[1].``; empty in the one-model form)."""
        if not self.groups:
            raise ClusterConfigError(f"{where}replicas: at least one replica group is needed")
        for i, group in enumerate(self.groups):
            group.check(f"{where}replicas[{i}]")
        if not isinstance(self.name, str) or any(c.isspace() for c in self.name):
            raise ClusterConfigError(f"{where}name must be a name without spaces, got {self.name!r}")
        try:
            Precision.parse(self.precision_of("sim"))   # auto, a dtype for every matmul, or a preset
        except ValueError as err:
            auto = ", ".join(f"{p} on {b}" for b, p in DEFAULT_PRECISION.items())
            raise ClusterConfigError(f"{where}dtype: {err}, or auto ({auto})") from None
        if self.chat_template is not None and not Path(self.chat_template).is_file():
            raise ClusterConfigError(f"{where}chat_template: no such file {self.chat_template}")
        if self.autoscale is not None:
            self._check_autoscale(where)

    def _check_autoscale(self, where: str) -> None:
        if len(self.groups) != 1:
            raise ClusterConfigError(f"{where}autoscale scales one replica pool: give one replica group, not {len(self.groups)}")
        if self.groups[0].devices:
            raise ClusterConfigError(f"{where}autoscale: {where}replicas[0].devices cannot list device ids for replicas "
                                     f"yet to start; give resources (tt_chips) and let Ray place them")
        try:
            self.autoscale.check(f"{where}autoscale")
        except AutoscaleConfigError as err:
            raise ClusterConfigError(str(err)) from None

    def check_model(self, engine: str) -> None:
        """The checkpoint folder exists here (where the coordinator runs); checked at launch, not
        when a spec is read, so a spec for other hosts still loads."""
        if engine != "model" or self.model == "smollm2":
            return
        path = Path(self.model).expanduser()
        field_name = f"model {self.name}" if self.name else "model"
        if not path.is_dir():
            raise ClusterConfigError(f"{field_name}: no checkpoint directory at {path} (give a folder with config.json "
                                     f"and *.safetensors, or 'smollm2')")
        if not (path / "config.json").is_file():
            raise ClusterConfigError(f"{field_name}: {path} has no config.json: not a Hugging Face checkpoint folder")

    def precision_of(self, backend: str) -> str:
        """The precision a replica on ``backend`` runs at: ``dtype``, or that backend's default for ``auto``."""
        return _precision_of(self.dtype, backend)

    def convert_precision(self, mesh: str) -> str:
        """The precision to convert ``mesh``'s weights at: one entry serves every group on it, so the
        float32 one where a group needs float32 storage."""
        wanted = [self.precision_of(g.backend) for g in self.groups if g.mesh == mesh] or [self.precision_of("sim")]
        return next((p for p in wanted if Precision.parse(p).needs_float32_storage), wanted[0])


@dataclass(frozen=True)
class HealthConfig:
    heartbeat_s: float = 0.5          # replica -> coordinator stats interval (and probe interval)
    unhealthy_after_s: float = 2.0    # no heartbeat for this long: ready -> unhealthy
    failed_after_s: float = 8.0       # unhealthy for this long: -> failed (then restarted)
    start_timeout_s: float = 300.0    # a replica that has not started by then has failed
    restart: bool = True              # restart failed replicas (False: they stay failed)
    restart_delay_s: float = 2.0      # a failed replica stays visibly failed this long before its restart
    stall_after_s: float = 5.0        # engine has work but made no step for this long: -> unhealthy
    restart_backoff_max_s: float = 60.0   # the restart delay doubles per failure in a row, up to this (or restart_delay_s)
    crash_loop_failures: int = 5      # this many failures in a row: "failed (crash loop)", no more restarts
    stable_after_s: float = 30.0      # ready this long: the failures-in-a-row count starts again

    def check(self) -> None:
        for name in ("heartbeat_s", "unhealthy_after_s", "failed_after_s", "start_timeout_s"):
            if not getattr(self, name) > 0:
                raise ClusterConfigError(f"health.{name} must be > 0 seconds, got {getattr(self, name)}")
        if not self.restart_delay_s >= 0:
            raise ClusterConfigError(f"health.restart_delay_s must be >= 0 seconds, got {self.restart_delay_s}")
        for name in ("stall_after_s", "stable_after_s"):
            if not getattr(self, name) > 0:
                raise ClusterConfigError(f"health.{name} must be > 0 seconds, got {getattr(self, name)}")
        if not self.restart_backoff_max_s >= 0:
            raise ClusterConfigError(f"health.restart_backoff_max_s must be >= 0 seconds, got {self.restart_backoff_max_s}")
        if not (isinstance(self.crash_loop_failures, int) and self.crash_loop_failures >= 1):
            raise ClusterConfigError(f"health.crash_loop_failures must be an integer >= 1, got {self.crash_loop_failures!r}")


@dataclass(frozen=True)
class ClusterConfig:
    model: str = "smollm2"                      # a checkpoint directory or "smollm2"
    groups: tuple[ReplicaGroup, ...] = (ReplicaGroup(),)
    policy: str = "round_robin"
    host: str = "127.0.0.1"                      # where the router (public API) and dashboard listen
    replica_host: str = "127.0.0.1"              # where replicas listen; "" = their node's IP (multi-host)
    port: int = 50051
    dashboard_port: int | None = 8480           # None = no dashboard
    dtype: str = AUTO_DTYPE                      # a preset or dtype for every group; auto: DEFAULT_PRECISION[backend]
    page_size: int = 32
    max_batch: int = 32
    max_kv_pages: int = 512                      # pool cap per replica (simulated caches live in host RAM)
    max_context: int | None = None
    default_max_tokens: int = 256
    routers: int = 1                             # router actors serving the one public port (SO_REUSEPORT)
    stream_interval: int = 1                     # chunks to clients: at most one per this many tokens...
    stream_interval_ms: int = 0                  # ...or per this many ms (0 = no time bound); requests may override
    ready_wait_s: float = 30.0                   # router: a request waits this long for a ready replica (no deadline)
    engine: str = "model"                        # "scripted": no model, fixed token rule (tests, benchmarks)
    scripted: ScriptedEngineConfig = field(default_factory=ScriptedEngineConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    weights_cache: str | None = None
    cpu_threads: int = 1                         # torch threads per simulated replica
    niceness: int | None = 0                     # replica and router nice levels below Ray (None: Ray's 15)
    api: ApiConfig = field(default_factory=ApiConfig)   # HTTP port, API keys, TLS, chat template
    cluster_token: str = field(default="", repr=False)  # replicas accept only callers with it; deploy makes one
    logprobs_mode: str = "raw"                   # logprobs of generated tokens: raw, or processed (after temperature)
    generation_config: str = "auto"              # auto: sampling defaults from the checkpoint's generation_config.json; vllm: none
    models: tuple[ModelConfig, ...] = ()         # several models; empty: the one model of the fields above
    tracing: TracingConfig = field(default_factory=TracingConfig)   # OTLP traces (off by default)
    autoscale: AutoscaleConfig | None = None     # the one-model form's pool follows its load (with models: per model)

    @property
    def served(self) -> tuple[ModelConfig, ...]:
        """Every model the cluster serves, in spec order (the first is the default of a request
        that names none); the one-model form as one ``ModelConfig``."""
        if self.models:
            return self.models
        return (ModelConfig(model=self.model, dtype=self.dtype, groups=self.groups, policy=self.policy,
                            chat_template=self.api.chat_template, autoscale=self.autoscale),)
    kv_host_bytes: str = "auto"                  # each replica's host-memory KV tier: bytes, 8GiB, 10%, auto (10 % of RAM), 0 = off
    kv_node_bytes: str = "0"                     # the node KV tier the replicas of a host share (0 = off)
    kv_node_dir: str = DEFAULT_NODE_DIR          # where the node tier keeps its files (memory: /dev/shm)

    def check(self) -> None:
        if self.models:
            for i, m in enumerate(self.models):
                m.check(f"models[{i}].")
        else:
            self.served[0].check()
        names = [m.served_name for m in self.served]
        for name in names:
            if names.count(name) > 1:
                raise ClusterConfigError(f"models: two models are named {name!r}; give each its own name")
        if not 0 <= self.port <= 65535:
            raise ClusterConfigError(f"port must be in 0..65535, got {self.port}")
        if self.dashboard_port is not None and not 0 <= self.dashboard_port <= 65535:
            raise ClusterConfigError(f"dashboard_port must be in 0..65535, got {self.dashboard_port}")
        self.health.check()
        try:
            self.api.check(self.host)
        except ApiConfigError as err:
            raise ClusterConfigError(str(err)) from None
        if self.engine not in ENGINES:
            raise ClusterConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.niceness is not None and not 0 <= self.niceness <= 19:
            raise ClusterConfigError(f"niceness must be in 0..19 or null, got {self.niceness}")
        for name in ("page_size", "max_batch", "max_kv_pages", "default_max_tokens", "cpu_threads"):
            if getattr(self, name) < 1:
                raise ClusterConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_context is not None and self.max_context < 2:
            raise ClusterConfigError(f"max_context must be >= 2 tokens or null (the model's), got {self.max_context}")
        if not 1 <= self.routers <= 64:
            raise ClusterConfigError(f"routers must be in 1..64, got {self.routers}")
        if not 1 <= self.stream_interval <= 4096:
            raise ClusterConfigError(f"stream_interval must be in 1..4096 tokens, got {self.stream_interval}")
        if not 0 <= self.stream_interval_ms <= 60000:
            raise ClusterConfigError(f"stream_interval_ms must be in 0..60000, got {self.stream_interval_ms}")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ClusterConfigError(f"logprobs_mode must be one of {', '.join(LOGPROBS_MODES)}, got {self.logprobs_mode!r}")
        if self.generation_config not in ("auto", "vllm"):
            raise ClusterConfigError(f"generation_config must be auto or vllm, got {self.generation_config!r}")
        for name, sizes in (("kv_host_bytes", (self.kv_host_bytes, 0)), ("kv_node_bytes", (0, self.kv_node_bytes))):
            try:   # each size as the tier it sizes (the error names that tier)
                KvTierConfig.from_sizes(*sizes)
            except ValueError as err:
                raise ClusterConfigError(f"{name}: {err}") from None
        if not self.ready_wait_s >= 0:
            raise ClusterConfigError(f"ready_wait_s must be >= 0 seconds, got {self.ready_wait_s}")
        try:
            self.tracing.check()
        except TracingConfigError as err:
            raise ClusterConfigError(str(err)) from None
        if self.models and self.autoscale is not None:
            raise ClusterConfigError("autoscale is set per model under models:, not at the top level")

    def check_model(self) -> None:
        """Every served checkpoint folder exists here (where the coordinator runs)."""
        for m in self.served:
            m.check_model(self.engine)

    def precision_of(self, backend: str) -> str:
        """The one-model form's precision on ``backend`` (see ``ModelConfig.precision_of``)."""
        return _precision_of(self.dtype, backend)

    def convert_precision(self, mesh: str) -> str:
        """The one-model form's conversion precision for ``mesh`` (see ``ModelConfig.convert_precision``)."""
        return self.served[0].convert_precision(mesh)

    @property
    def num_replicas(self) -> int:
        """The replicas started at launch, every model's (an autoscaled pool: its initial count)."""
        return sum(m.num_replicas for m in self.served)
