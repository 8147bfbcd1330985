"""``plan()``: a model on a system at a precision, batch and context, sized and timed.

    from ttdist.planner import plan
    p = plan("llama-3.1-70b", "tg", batch=32, context=128, input_len=128)
    p.decode.tokens_per_s_per_user, p.memory.max_users, p.to_json()

``kv_plan()`` is the part the coordinator needs: KV pages per replica and the largest decode
batch that fits at a context.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttdist.mesh.spec import MeshSpec
from ttdist.model.config import LlamaConfig
from ttdist.model.layout import Layout
from ttdist.planner.capacity import RESERVE_FRACTION, Memory, memory
from ttdist.mesh.precision import GROUPS, Precision
from ttdist.planner.catalog import PlanError, System, parse_system, resolve_model, resolve_precision
from ttdist.planner.hardware import WORMHOLE, Hardware
from ttdist.planner.roofline import StepTime, step_time
from ttdist.planner.step import StepBuilder


@dataclass(frozen=True)
class Plan:
    model: str
    system: System
    precision: Precision
    layout: str
    batch: int
    context: int
    input_len: int
    replicas: int
    memory: Memory
    decode: StepTime
    prefill: StepTime
    users: int                  # decode users per replica: the batch, or fewer if KV runs out

    @property
    def tokens_per_s_per_user(self) -> float:
        return 1.0 / self.decode.total_s

    @property
    def ttft_s(self) -> float:
        return self.prefill.total_s

    @property
    def replica_tokens_per_s(self) -> float:
        return self.users * self.tokens_per_s_per_user

    @property
    def cluster_tokens_per_s(self) -> float:
        return self.replicas * self.replica_tokens_per_s

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "system": {"name": self.system.name, "mesh": self.system.mesh.name, "shape": self.system.mesh.shape_str,
                       "chips_per_replica": self.system.mesh.num_chips, "count": self.system.count},
            "precision": {"name": self.precision.name, **{g: getattr(self.precision, g).value for g in GROUPS}},
            "layout": self.layout,
            "batch": self.batch, "context": self.context, "input_len": self.input_len,
            "replicas": self.replicas, "users_per_replica": self.users,
            "memory": self.memory.to_json(),
            "decode": {**self.decode.to_json(), "tokens_per_s_per_user": self.tokens_per_s_per_user},
            "prefill": {**self.prefill.to_json(), "ttft_s": self.ttft_s},
            "throughput": {"replica_tokens_per_s": self.replica_tokens_per_s,
                           "cluster_tokens_per_s": self.cluster_tokens_per_s},
        }


def _positive(field: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PlanError(field, f"must be an integer >= {low}, got {value!r}")
    return value


def plan(model: str, system: str, *, precision: str = "performance", batch: int = 32, context: int = 128,
         input_len: int = 128, replicas: int | None = None, page_size: int = 32, prefill_chunk: int | None = None,
         kv_dtype: str | None = None, prefetch: bool | None = None, hardware: Hardware = WORMHOLE,
         reserve_fraction: float = RESERVE_FRACTION) -> Plan:
    """Size and time ``model`` on ``system``; raises ``PlanError`` naming the bad input.

    ``prefetch`` None means what tt-metal's own implementation does there: weight prefetch on
    2D meshes (the Galaxy demo), serial execution on 1xN meshes.
    """
    name, config = resolve_model(model)
    sys_ = parse_system(system)
    prec = resolve_precision(precision, kv_dtype)
    batch = _positive("batch", batch)
    context = _positive("context", context)
    input_len = _positive("input-len", input_len)
    page_size = _positive("page-size", page_size)
    replicas = sys_.count if replicas is None else _positive("replicas", replicas)
    if context > config.max_position_embeddings:
        raise PlanError("context", f"{context} is beyond the model's {config.max_position_embeddings} positions")
    chunk = _positive("prefill-chunk", prefill_chunk if prefill_chunk is not None else input_len)
    layout = Layout(config, sys_.mesh)
    mem = memory(layout, prec, context=context, batch=batch, page_size=page_size, prefill_chunk=chunk,
                 reserve_fraction=reserve_fraction)
    if mem.max_users < 1:
        need = (mem.weights + mem.activations + mem.reserve + mem.kv_per_user) / 2**30
        raise PlanError("system", f"{name} does not fit on {sys_.mesh.name} ({sys_.mesh.shape_str}) at {prec.name}: "
                                  f"each chip needs {need:.1f} GiB for weights, activations, reserve and one user's KV "
                                  f"at context {context}, and has {mem.dram_per_chip / 2**30:.0f} GiB")
    users = min(batch, mem.max_users)
    pre = sys_.mesh.rows > 1 if prefetch is None else prefetch
    builder = StepBuilder(layout, prec, page_size=page_size)
    decode = step_time(builder.decode(users, context), sys_.mesh, hardware, prefetch=pre)
    prefill = _prefill_time(builder, input_len, chunk, sys_, hardware)
    return Plan(name, sys_, prec, layout.describe(), batch, context, input_len, replicas, mem, decode, prefill, users)


def _prefill_time(builder: StepBuilder, input_len: int, chunk: int, sys_: System, hw: Hardware) -> StepTime:
    """Prefill of one user's prompt in chunks (serial: prefill is not overlapped with a prefetcher)."""
    parts = []
    start = 0
    while start < input_len:
        tokens = min(chunk, input_len - start)
        parts.append(step_time(builder.prefill(tokens, start), sys_.mesh, hw, prefetch=False))
        start += tokens
    if len(parts) == 1:
        return parts[0]
    fields = StepTime.__dataclass_fields__
    summed = {f: sum(getattr(p, f) for p in parts) for f in fields if f != "prefetch"}
    return StepTime(**{**summed, "prefetch": False})


@dataclass(frozen=True)
class KvPlan:
    num_pages: int            # KV pages per replica (every user group's pool)
    max_batch: int            # users that fit at the context, capped by the requested batch


def kv_plan(model: "str | LlamaConfig", system: "str | MeshSpec", *, precision: "str | Precision" = "performance",
            context: int, page_size: int = 32, batch: int = 32, reserve_fraction: float = RESERVE_FRACTION) -> KvPlan:
    """KV pages and decode batch for one replica: what a coordinator sizes its KV budget with
    (it may pass its own ``LlamaConfig``, ``MeshSpec`` and ``Precision``)."""
    p = plan(model, system, precision=precision, batch=batch, context=context, input_len=min(context, 128),
             page_size=page_size, reserve_fraction=reserve_fraction)
    return KvPlan(p.memory.kv_pages * p.memory.user_groups, p.users)
