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
from ttdist.planner.capacity import Memory, memory
from ttdist.mesh.precision import GROUPS, Precision
from ttdist.planner.catalog import PlanError, System, parse_system, resolve_model, resolve_precision
from ttdist.planner.hardware import TT_TRANSFORMERS, WORMHOLE, DecodeKernels, Hardware
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
    kernels: DecodeKernels = TT_TRANSFORMERS   # whose decode op latencies the step is timed with
    sampling: str = "device"                   # where decode tokens are sampled: "device" or "host"

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
            "layout": self.layout, "decode_kernels": self.kernels.name, "sampling": self.sampling,
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


IMPLEMENTATIONS = ("auto", "galaxy-demo", "tt-transformers")
SAMPLING = ("device", "host")


def plan(model: str, system: str, *, precision: str = "performance", batch: int = 32, context: int = 128,
         input_len: int = 128, replicas: int | None = None, page_size: int = 32, prefill_chunk: int | None = None,
         kv_dtype: str | None = None, prefetch: bool | None = None, hardware: Hardware = WORMHOLE,
         reserve_fraction: float | None = None, implementation: str = "auto", sampling: str = "device") -> Plan:
    """Size and time ``model`` on ``system``; raises ``PlanError`` naming the bad input.

    ``implementation`` "auto" times what tt-metal runs fastest there: the Galaxy demo (fused
    decode ops, weight prefetch) on 2D meshes, tt_transformers on 1xN meshes; "tt-transformers"
    on a 2D mesh times tt_transformers' generic Galaxy path (all-reduce by gather, interleaved
    weights, no prefetch). ``sampling`` "host" reads every user's logits back each step, as
    tt_transformers' demo did at batch > 1 before it sampled on the device. ``prefetch`` None:
    what the implementation does. ``prefill_chunk`` None: the largest power-of-two chunk (up to
    the prompt) whose activations fit beside the weights and one user's KV cache.
    """
    if implementation not in IMPLEMENTATIONS:
        raise PlanError("implementation", f"{implementation!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    if sampling not in SAMPLING:
        raise PlanError("sampling", f"{sampling!r} is not one of {', '.join(SAMPLING)}")
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
    if input_len > config.max_position_embeddings:
        raise PlanError("input-len", f"{input_len} is beyond the model's {config.max_position_embeddings} positions")
    layout = Layout(config, sys_.mesh)
    sizing = dict(context=context, batch=batch, page_size=page_size, reserve_fraction=reserve_fraction)
    if prefill_chunk is None:
        chunk, mem = _largest_chunk(layout, prec, input_len, sizing)
    else:
        chunk = _positive("prefill-chunk", prefill_chunk)
        mem = memory(layout, prec, prefill_chunk=chunk, **sizing)
    if mem.max_users < 1:
        need = (mem.weights + mem.activations + mem.reserve + mem.kv_per_user) / 2**30
        raise PlanError("system", f"{name} does not fit on {sys_.mesh.name} ({sys_.mesh.shape_str}) at {prec.name}: "
                                  f"each chip needs {need:.1f} GiB for weights, activations, reserve and one user's KV "
                                  f"at context {context}, and has {mem.dram_per_chip / 2**30:.0f} GiB")
    users = min(batch, mem.max_users)
    if implementation == "galaxy-demo" and layout.one_d:
        raise PlanError("implementation", f"the Galaxy demo runs on 2D meshes; {sys_.mesh.name} is {sys_.mesh.shape_str}")
    fused = not layout.one_d and implementation != "tt-transformers"
    pre = fused if prefetch is None else prefetch
    builder = StepBuilder(layout, prec, page_size=page_size, host_sampling=sampling == "host")
    ops = step_ops(builder, sys_.mesh, users=users, context=context, input_len=input_len, chunk=chunk,
                   prefetch=pre, hardware=hardware, fused=fused)
    decode, prefill = ops.time(hardware)
    return Plan(name, sys_, prec, layout.describe(), batch, context, input_len, replicas, mem, decode, prefill, users,
                ops.kernels(hardware), sampling)


def row_options(row: dict) -> dict:
    """``plan()`` keywords for a published measurement's configuration: its ``impl`` and ``sampling``."""
    return {"implementation": row.get("impl", "auto"), "sampling": row.get("sampling", "device")}


@dataclass(frozen=True)
class StepOps:
    """The op lists of one decode step and of a prompt's prefill chunks, ready to be timed."""

    mesh: MeshSpec
    decode: list
    prefill: list             # one op list per chunk
    prefetch: bool
    fused: bool               # the Galaxy demo's fused decode (2D meshes) or tt_transformers' unfused one
    two_d: bool = False       # a 2D layout (tt_transformers runs its generic Galaxy path there)

    def kernels(self, hw: Hardware) -> DecodeKernels:
        if self.fused:
            return hw.fused_decode
        return hw.generic_2d_decode if self.two_d else hw.unfused_decode

    def time(self, hw: Hardware) -> tuple[StepTime, StepTime]:
        k = self.kernels(hw)
        decode = step_time(self.decode, self.mesh, hw, kernels=k, decode=True, prefetch=self.prefetch)
        parts = [step_time(ops, self.mesh, hw, kernels=k, decode=False) for ops in self.prefill]
        return decode, _summed(parts)


def step_ops(builder: StepBuilder, mesh: MeshSpec, *, users: int, context: int, input_len: int, chunk: int,
             prefetch: bool, hardware: Hardware, fused: bool | None = None) -> StepOps:
    """Decode at ``users`` (a fixed-shape trace runs its full rows) and the prompt's prefill in
    chunks, each after the ones before it (the host dispatches prefill; no prefetcher overlaps it).
    ``fused`` None: the Galaxy demo on 2D meshes."""
    two_d = not builder.lay.one_d
    fused = two_d if fused is None else fused
    kernels = StepOps(mesh, [], [], prefetch, fused, two_d).kernels(hardware)
    decode = builder.decode(max(users, kernels.trace_rows), context, active=users)
    prefill, start = [], 0
    while start < input_len:
        tokens = min(chunk, input_len - start)
        prefill.append(builder.prefill(tokens, start))
        start += tokens
    return StepOps(mesh, decode, prefill, prefetch, fused, two_d)


def _summed(parts: list[StepTime]) -> StepTime:
    if len(parts) == 1:
        return parts[0]
    fields = StepTime.__dataclass_fields__
    summed = {f: sum(getattr(p, f) for p in parts) for f in fields if f != "prefetch"}
    return StepTime(**{**summed, "prefetch": False})


def _largest_chunk(layout: Layout, prec: Precision, input_len: int, sizing: dict) -> tuple[int, Memory]:
    """The largest power-of-two prefill chunk (at most the prompt, at least 128) that leaves room
    for one user's KV cache; the smallest if none does (the caller reports the misfit)."""
    chunk = 128
    while chunk < input_len:
        chunk *= 2
    chunk = min(chunk, input_len) if input_len >= 128 else input_len
    while True:
        mem = memory(layout, prec, prefill_chunk=chunk, **sizing)
        if mem.max_users >= 1 or chunk <= 128:
            return chunk, mem
        chunk = max(128, 1 << ((chunk - 1).bit_length() - 1))


@dataclass(frozen=True)
class KvPlan:
    num_pages: int            # KV pages per replica (every user group's pool)
    max_batch: int            # users that fit at the context, capped by the requested batch


def kv_plan(model: "str | LlamaConfig", system: "str | MeshSpec", *, precision: "str | Precision" = "performance",
            context: int, page_size: int = 32, batch: int = 32, reserve_fraction: float | None = None) -> KvPlan:
    """KV pages and decode batch for one replica: what a coordinator sizes its KV budget with
    (it may pass its own ``LlamaConfig``, ``MeshSpec`` and ``Precision``)."""
    p = plan(model, system, precision=precision, batch=batch, context=context, input_len=min(context, 128),
             page_size=page_size, reserve_fraction=reserve_fraction)
    return KvPlan(p.memory.kv_pages * p.memory.user_groups, p.users)
