"""Time of a step from its ops: DRAM traffic, compute, collectives, fixed per-op latency, dispatch.

Decode (traced; ``kernels`` gives the implementation's shortest op, collective and op-to-op gap):

* a matmul streams its weights from DRAM (``bytes / (288 GB/s x dram_efficiency)``) or does its
  flops at the fidelity's peak, whichever is longer, and never less than the shortest op;
* paged SDPA decode reads the KV cache at the interleaved DRAM rate (pages are interleaved), but one (user, KV head) stream walks its
  context at ``sdpa_decode_positions_per_s``: at batch 1 and long context the walk, not DRAM,
  is the bound (streams of different users and heads run side by side);
* a collective is bandwidth-optimal: each chip receives ``(D - 1) / D`` of the full tensor per
  phase (one for an all-gather or reduce-scatter, two for an all-reduce) over its ``links`` links
  at the link bandwidth, in both directions on a ring where the implementation runs ring
  collectives (``accounting``'s bytes moved are reported
  beside it, as the simulator records them), plus one hop latency per step of the algorithm (``D - 1`` for an all-gather or reduce-scatter,
  twice that for an all-reduce), plus the implementation's fixed collective latency; free on an
  axis of one chip, as ttnn's are;
* every other op costs at least the shortest op, or its activation bytes at NOC rate;
* every op pays the op-to-op gap;
* where an implementation all-reduces by gathering (tt_transformers on a 2D mesh), each chip
  receives ``D - 1`` whole partials over the line and the implementation's own ops around the
  gather (cast, move to DRAM, local sum) each cost at least the shortest op;
* sampling on the host (``host`` ops) reads the logits back at ``host_logits_bytes_per_s``;
* where the implementation reads each step's tokens back from every chip (tt_transformers), the
  step pays ``host_read_s`` per chip (one read of one chip's logits when it samples on the host).

Prefill (``decode`` False; the host dispatches each op unless the implementation traces prefill): matmuls do their flops at
``prefill_matmul_efficiency`` of the fidelity's peak or stream their weights from interleaved
DRAM, attention computes its causal scores at ``sdpa_prefill_scores_per_s``, element-wise ops
move their bytes at the interleaved DRAM rate, every op takes at least ``prefill_op_s`` on the
device, collectives as in decode; each op pays the host dispatch ``prefill_dispatch_s`` (or the
op-to-op gap where the implementation replays a captured prefill trace).

Serial execution (tt_transformers on N150/N300/T3000) adds it all up. With ``prefetch`` (the
Galaxy demo: a DRAM prefetcher on its own sub-device streams the next weights into L1 while the
current ops and collectives run) the weight stream overlaps the rest: a step takes the longer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ttdist.mesh.accounting import all_gather_bytes, all_reduce_bytes, reduce_scatter_bytes
from ttdist.mesh.spec import MeshSpec, Topology
from ttdist.planner.hardware import DecodeKernels, Hardware
from ttdist.planner.step import Op

_CCL_BYTES = {"all_gather": all_gather_bytes, "reduce_scatter": reduce_scatter_bytes, "all_reduce": all_reduce_bytes}
_CCL_STEPS = {"all_gather": 1, "reduce_scatter": 1, "all_reduce": 2}


def ccl_bytes_moved(op: Op, spec: MeshSpec) -> float:
    """The bytes the simulator's ledger records for this collective."""
    return _CCL_BYTES[op.name](op.full_bytes, spec.shape[op.axis], spec.topology[op.axis])


@dataclass(frozen=True)
class StepTime:
    """Where a step's time goes, in seconds (``total_s`` is the step)."""

    weights_s: float          # streaming matmul weights from DRAM
    matmul_compute_s: float   # matmul time beyond the weight stream (serial), or all of it (prefetch)
    kv_cache_s: float         # attention: reading and writing the KV cache, SDPA
    ccl_transfer_s: float     # collective bytes over Ethernet links
    ccl_latency_s: float      # collective hops and fixed collective latency
    ops_s: float              # element-wise and data-movement ops
    dispatch_s: float         # op-to-op gaps (decode) or host dispatch (prefill)
    host_s: float             # logits read back and sampled on the host (0 when sampling on the mesh)
    total_s: float
    prefetch: bool
    num_ops: int
    num_collectives: int
    weight_bytes: float       # per chip per step
    kv_bytes: float
    ccl_bytes: float          # accounting's bytes moved, summed over the step

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class _Sums:
    weights: float = 0.0
    extra: float = 0.0        # matmul time beyond its weight stream
    compute: float = 0.0      # matmul time that is not the weight stream (prefetch: all of it)
    kv: float = 0.0
    xfer: float = 0.0
    hops: float = 0.0
    other: float = 0.0
    host: float = 0.0
    weight_bytes: float = 0.0
    kv_bytes: float = 0.0
    ccl_bytes: float = 0.0
    dispatched: int = 0
    collectives: int = 0


def _collective(op: Op, spec: MeshSpec, hw: Hardware, k: DecodeKernels, decode: bool, s: _Sums) -> None:
    d = spec.shape[op.axis]
    if d == 1:
        return
    s.ccl_bytes += ccl_bytes_moved(op, spec)
    # bandwidth-optimal: each chip receives (D - 1) / D of the tensor per phase (reduce-scatter,
    # all-gather; an all-reduce is both), over its links, in both directions on a ring
    directions = 2 if k.ring_collectives and spec.topology[op.axis] is Topology.RING else 1
    phases = _CCL_STEPS[op.name]
    per_chip = phases * op.full_bytes * (d - 1) / d
    if op.name == "all_reduce" and k.gather_all_reduce:
        phases, per_chip = 1, op.full_bytes * (d - 1)   # every chip gathers the D - 1 other partials
        _gather_sum_ops(op.full_bytes, d, hw, k, decode, s)
    s.xfer += per_chip / (directions * spec.links[op.axis] * spec.link_bandwidth_gbps * 1e9)
    s.hops += phases * (d - 1) * hw.hop_latency_s + (k.ccl_s if decode else 0.0)
    s.collectives += 1


def _gather_sum_ops(full: float, d: int, hw: Hardware, k: DecodeKernels, decode: bool, s: _Sums) -> None:
    """The ops an all-reduce-by-gather runs beside its gather: cast and move the partial (its bytes
    each), then sum the ``d`` gathered partials (read from DRAM); each at least the shortest op."""
    shortest = k.op_s if decode else hw.prefill_op_s
    moved = [full] * (k.all_reduce_ops - 1) + [d * full] if k.all_reduce_ops else []
    for nbytes in moved:
        s.other += max(shortest, nbytes / hw.dram_interleaved_bytes_per_s)
    s.dispatched += len(moved)


def _matmul(op: Op, stream: float, busy: float, s: _Sums) -> None:
    """A matmul streams its weights (``stream``) and is busy ``busy`` otherwise: serially it costs
    the longer; with a prefetcher the stream overlaps and ``busy`` is all of it."""
    s.weights += stream
    s.compute += busy
    s.extra += max(0.0, busy - stream)
    s.weight_bytes += op.weight_bytes


def _decode_op(op: Op, dram_bw: float, hw: Hardware, k: DecodeKernels, s: _Sums) -> None:
    if op.kind == "host":
        s.host += op.act_bytes / hw.host_logits_bytes_per_s
        return
    if op.kind == "matmul":
        _matmul(op, op.weight_bytes / dram_bw, max(op.flops / hw.matmul_flops(op.weight_dtype), k.op_s), s)
        return
    s.kv_bytes += op.kv_bytes
    paged = op.kv_bytes / hw.dram_interleaved_bytes_per_s
    if op.positions:
        s.kv += max(paged, op.positions / hw.sdpa_decode_positions_per_s, k.op_s)
    elif op.kv_bytes:
        s.kv += max(paged, k.op_s)
    else:
        s.other += max(k.op_s + op.flops / hw.matmul_flops(None), op.act_bytes / hw.noc_bytes_per_s)


def _prefill_op(op: Op, hw: Hardware, s: _Sums) -> None:
    rate = hw.dram_interleaved_bytes_per_s
    if op.kind == "host":
        s.host += op.act_bytes / hw.host_logits_bytes_per_s
        return
    if op.kind == "matmul":
        busy = max(op.flops / (hw.matmul_flops(op.weight_dtype) * hw.prefill_matmul_efficiency),
                   op.act_bytes / rate, hw.prefill_op_s)
        _matmul(op, op.weight_bytes / rate, busy, s)
        return
    s.kv_bytes += op.kv_bytes
    if op.scores:
        s.kv += max(op.scores / hw.sdpa_prefill_scores_per_s, (op.kv_bytes + op.act_bytes) / rate, hw.prefill_op_s)
    elif op.kv_bytes:
        s.kv += max((op.kv_bytes + op.act_bytes) / rate, hw.prefill_op_s)
    else:
        s.other += max(op.act_bytes / rate, hw.prefill_op_s)


def step_time(ops: list[Op], spec: MeshSpec, hw: Hardware, *, kernels: DecodeKernels, decode: bool,
              prefetch: bool = False) -> StepTime:
    """A decode step or a prefill chunk of the implementation ``kernels`` (its op latencies, its
    collectives, whether its prefill is traced)."""
    dram_bw = hw.dram_interleaved_bytes_per_s if kernels.interleaved_weights else \
        spec.dram_bandwidth_gbps * 1e9 * hw.dram_efficiency
    s = _Sums()
    for op in ops:
        if op.kind == "ccl":
            _collective(op, spec, hw, kernels, decode, s)
            continue
        if decode:
            _decode_op(op, dram_bw, hw, kernels, s)
        else:
            _prefill_op(op, hw, s)
        if op.kind != "host":
            s.dispatched += 1
    if decode and kernels.reads_every_chip:
        s.host += (1 if s.host else spec.num_chips) * hw.host_read_s
    traced = decode or kernels.traced_prefill
    dispatch = s.dispatched * (kernels.gap_s if traced else hw.prefill_dispatch_s)
    if prefetch:
        total = max(s.weights, s.compute + s.kv + s.xfer + s.hops + s.other + dispatch) + s.host
        matmul = s.compute
    else:
        total = s.weights + s.extra + s.kv + s.xfer + s.hops + s.other + dispatch + s.host
        matmul = s.extra
    return StepTime(s.weights, matmul, s.kv, s.xfer, s.hops, s.other, dispatch, s.host, total, prefetch, s.dispatched,
                    s.collectives, s.weight_bytes, s.kv_bytes, s.ccl_bytes)
