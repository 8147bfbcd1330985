"""Time of a step from its ops: DRAM traffic, collectives over Ethernet, dispatched ops.

* A matmul streams its weights from DRAM and does its flops; it takes the longer of the two
  (``bytes / (peak DRAM bandwidth x dram_efficiency)`` vs ``flops / peak at its fidelity``).
* Attention reads the KV cache at the same DRAM rate.
* A collective moves ``accounting``'s bytes for its op and topology, spread over the chips of
  its axis and their links (each chip sends ``bytes / D`` over ``links`` links at the link
  bandwidth), plus one hop latency per step of the algorithm (``D - 1`` for an all-gather or
  reduce-scatter, twice that for an all-reduce). A collective over one chip is free, as
  ttnn's are.
* Every other op costs at least a short kernel, or its activation bytes at NOC rate.
* Every op pays the traced op-to-op gap.

Serial execution (tt-metal's ``tt_transformers`` demos on N150/N300/T3000) adds it all up.
With ``prefetch`` (the Galaxy demo ``llama3_70b_galaxy``: a DRAM prefetcher on its own
sub-device streams the next weights into L1 while the current ops and collectives run) the
weight stream overlaps the rest, so a step takes the longer of the two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ttdist.mesh.accounting import all_gather_bytes, all_reduce_bytes, reduce_scatter_bytes
from ttdist.mesh.spec import MeshSpec
from ttdist.planner.hardware import Hardware
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
    matmul_compute_s: float   # matmul flops beyond what the weight stream hides (serial), or all of them (prefetch)
    kv_cache_s: float         # reading and writing the KV cache
    ccl_transfer_s: float     # collective bytes over Ethernet links
    ccl_latency_s: float      # collective hops
    ops_s: float              # element-wise and data-movement ops
    dispatch_s: float         # op-to-op gaps
    total_s: float
    prefetch: bool
    num_ops: int
    num_collectives: int
    weight_bytes: float       # per chip per step
    kv_bytes: float
    ccl_bytes: float          # accounting's bytes moved, summed over the step

    def to_json(self) -> dict:
        return asdict(self)


def step_time(ops: list[Op], spec: MeshSpec, hw: Hardware, *, prefetch: bool) -> StepTime:
    dram_bw = spec.dram_bandwidth_gbps * 1e9 * hw.dram_efficiency
    weights = compute = extra = kv = xfer = hops = other = 0.0
    weight_bytes = kv_bytes = ccl_bytes = 0.0
    dispatched = collectives = 0
    for op in ops:
        if op.kind == "ccl":
            d = spec.shape[op.axis]
            if d == 1:
                continue
            moved = ccl_bytes_moved(op, spec)
            ccl_bytes += moved
            xfer += moved / (d * spec.links[op.axis] * spec.link_bandwidth_gbps * 1e9)
            hops += _CCL_STEPS[op.name] * (d - 1) * hw.hop_latency_s
            collectives += 1
        elif op.kind == "matmul":
            stream = op.weight_bytes / dram_bw
            flops = op.flops / hw.matmul_flops(op.weight_dtype)
            weights += stream
            compute += flops
            extra += max(0.0, flops - stream)
            weight_bytes += op.weight_bytes
        else:
            kv += op.kv_bytes / dram_bw
            kv_bytes += op.kv_bytes
            other += max(hw.op_kernel_s + op.flops / hw.matmul_flops(None), op.act_bytes / hw.noc_bytes_per_s)
        dispatched += 1
    dispatch = dispatched * hw.op_gap_s
    if prefetch:
        rest = compute + kv + xfer + hops + other + dispatch
        total = max(weights, rest)
        matmul = compute
    else:
        total = weights + extra + kv + xfer + hops + other + dispatch
        matmul = extra
    return StepTime(weights, matmul, kv, xfer, hops, other, dispatch, total, prefetch, dispatched, collectives,
                    weight_bytes, kv_bytes, ccl_bytes)
