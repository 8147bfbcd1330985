"""The constants of the step-time model, each with where it comes from.

Per-chip DRAM capacity and peak bandwidth, Ethernet link bandwidth and link counts are the
mesh's own figures (``ttdist.mesh.spec.MeshSpec``: 12 GiB and 288 GB/s per Wormhole chip,
100 Gb/s = 12.5 GB/s per Ethernet link direction, 4 links along a Galaxy's rows and 3 along
its columns). The rest is here, in three groups:

* published hardware figures (DRAM efficiency, matmul peaks, NOC rate, DRAM-interleaved rate);
* the Galaxy demo's measured decode kernels (``decode_kernels=GALAXY_DEMO``): a traced, fused
  decode whose per-op kernel and op-to-op gap tt-metal publishes;
* nine constants FITTED ONCE, together, over every published row that the tests hold
  (``bench/fit_planner.py`` over ``tests/planner/published.json``): the shortest device time of
  an unfused decode op and of a collective in tt_transformers (which publishes no per-op
  figures), the rate at which paged SDPA decode walks one user's context for one KV head,
  prefill matmul efficiency, the rate of prefill attention scores, the shortest prefill op, the
  host's dispatch of an untraced prefill op, the time of one read from a chip back to the host
  and the rate at which the host takes in logits when it samples. No constant is fitted per
  model or per system.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ttdist.mesh.precision import DType


@dataclass(frozen=True)
class DecodeKernels:
    """The shortest time of one traced decode op, of one collective, and the gap between ops."""

    name: str
    op_s: float
    ccl_s: float
    gap_s: float
    trace_rows: int = 1      # decode slots the traced step always runs (a fixed-shape trace)
    traced_prefill: bool = False   # prefill chunks replayed from captured traces (no host dispatch per op)
    ring_collectives: bool = False  # collectives use both directions of a ring axis
    # How a 2D mesh's all-reduce runs: as one collective (reduce-scatter + all-gather), or as an
    # all-gather of every chip's partial then a local sum (``gather_all_reduce``), with
    # ``all_reduce_ops`` data-movement ops of its own around it (dtype casts, memory moves, the sum).
    gather_all_reduce: bool = False
    all_reduce_ops: int = 0
    interleaved_weights: bool = False   # decode weights DRAM-interleaved (read at ~190 GB/s), not DRAM-sharded
    reads_every_chip: bool = False      # the host reads each step's tokens back from every chip of the mesh


# llama3_70b_galaxy's decoder perf targets (tests/decoder_perf_targets_6u.json): fused rotary
# 2.2 us, silu-mul 2.4 us, op_to_op 0.6-0.9 us; AllReduceAsync over an 8-chip line 13.3 us, of
# which the hops are counted apart (14 x hop_latency_s), leaving ~0 fixed. Its decode trace has a
# fixed shape of 32 users (README: "up to 32 users per batch"; PERF.md: batch 1 and 32 decode at
# the same 14.0 ms), so a step costs a full batch's ops whatever the users.
# Its generator also captures a trace per prefill length (tt/generator.py _capture_trace_prefill),
# so its prefill ops pay the same op-to-op gap instead of a host dispatch each.
# Its collectives run as rings in both directions (PERF.md: fabric_config FABRIC_1D_RING).
GALAXY_DEMO = DecodeKernels("llama3_70b_galaxy", op_s=2.2e-6, ccl_s=0.0, gap_s=0.7e-6, trace_rows=32,
                            traced_prefill=True, ring_collectives=True)
# tt_transformers (N150, N300, T3000): traced but unfused; no per-op figures are published, so the
# shortest op and collective are FITTED (bench/fit_planner.py); the gap is the Galaxy's measured one.
# Its collectives are timed as lines (one direction per link), even on the T3000's ring axis: its
# published T3000 long-prompt TTFTs leave no room for a second direction.
TT_TRANSFORMERS = DecodeKernels("tt_transformers", op_s=23.06e-6, ccl_s=0.0, gap_s=0.7e-6, reads_every_chip=True)
# tt_transformers' generic path on a Galaxy (PERF.md rows "TG", no TTFT published): the same unfused
# ops, but its 2D all-reduce (tt/ccl.py ``tt_all_reduce``, branch "TG: all_reduce") casts the partial
# to the CCL dtype in L1, moves it to DRAM, all-gathers every chip's partial along the axis
# (all_gather_async, Linear topology) and sums them locally (fast_reduce_nc): three ops beside the
# gather, and each chip receives D - 1 whole partials instead of 2 (D - 1) / D of one. Its weights
# on a Galaxy are DRAM-interleaved (tt/mlp.py: ``DRAM_MEMORY_CONFIG if is_galaxy``); no prefetcher.
TT_TRANSFORMERS_2D = replace(TT_TRANSFORMERS, name="tt_transformers_2d", gather_all_reduce=True, all_reduce_ops=3,
                             interleaved_weights=True)


@dataclass(frozen=True)
class Hardware:
    # Streaming weights out of DRAM: a DRAM-sharded decode matmul reads ~240 GB/s of the chip's
    # 288 GB/s peak (tt-metal LLM guide, section 4.3 "DRAM-sharded matmul"; DESIGN.md).
    dram_efficiency: float = 240.0 / 288.0
    # DRAM-interleaved reads and writes (prefill matmuls, element-wise ops on large tensors, and
    # the paged KV cache, whose pages are interleaved over the banks): ~190 GB/s (tt-metal LLM
    # guide; DESIGN.md "Hardware facts").
    dram_interleaved_bytes_per_s: float = 190e9
    # Matmul peak per chip by math fidelity (Wormhole n150 spec sheet: 262 TFLOPS at FP8 / LoFi,
    # 148 TFLOPS at BLOCKFP8 / HiFi2, 74 TFLOPS at FP16 / HiFi4). tt-metal's Llama configs run
    # bfp4 weights at LoFi, bfp8 at HiFi2 and bf16 at HiFi4 (tt_transformers PERF.md fidelity_cfg).
    tflops_lofi: float = 262.0
    tflops_hifi2: float = 148.0
    tflops_hifi4: float = 74.0
    # One step of a collective over an Ethernet hop: the Galaxy demo's all-reduce of a decode
    # activation over an 8-chip line (14 hops: reduce-scatter + all-gather) takes 13.3 us
    # (models/demos/llama3_70b_galaxy/tests/decoder_perf_targets_6u.json, AllReduceAsync).
    hop_latency_s: float = 1.0e-6
    # Element-wise and data-movement ops of a decode step run on small tensors on a few cores;
    # they move data at about one NOC link's rate: 32 bytes per cycle at the 1 GHz AI clock.
    noc_bytes_per_s: float = 32e9
    # FITTED (bench/fit_planner.py, once over every held row): paged SDPA decode walks one
    # user's context for one KV head (K and V of every position) at this many positions per
    # second; streams of different users and KV heads run side by side on their own cores.
    sdpa_decode_positions_per_s: float = 1.433e8
    # FITTED: prefill matmuls reach this fraction of the fidelity's peak (2D-interleaved
    # matmuls on a whole prompt; tt_transformers and the Galaxy demo alike).
    prefill_matmul_efficiency: float = 0.2237
    # FITTED: causal prefill attention (flash SDPA) handles this many query-key scores per
    # second per chip (scores = query rows x keys attended x query heads on the chip).
    sdpa_prefill_scores_per_s: float = 5.205e10
    # FITTED: prefill is not traced in tt_transformers: the host dispatches each op of a chunk.
    prefill_dispatch_s: float = 49.46e-6
    # FITTED: the shortest device time of a prefill op (programs sized for a whole prompt).
    prefill_op_s: float = 28.73e-6
    # FITTED: sampling on the host (tt_transformers' demo before on-device sampling at batch > 1)
    # reads every user's logits back over PCIe each decode step, untilizes them and argmaxes them in
    # torch: this many logit bytes per second, all of it together.
    host_logits_bytes_per_s: float = 1.455e9
    # FITTED: one read of a tensor from one chip back to the host (a PCIe round trip, tunnelled over
    # Ethernet for chips without their own PCIe link). tt_transformers' decode reads its sampled
    # tokens back from every chip of the mesh each step (tt/model.py ``concat_host_output``:
    # ``ttnn.to_torch`` of each of ``ttnn.get_device_tensors``), or one chip's logits when it
    # samples on the host (``process_output_decode``: ``get_device_tensors(tt_out)[0]``).
    host_read_s: float = 118.1e-6
    # Whose decode op latencies a step is timed with: the Galaxy demo's fused ops on 2D meshes
    # (with the prefetcher), tt_transformers' unfused ones on 1xN meshes, and tt_transformers'
    # generic path where it is asked for on a 2D mesh.
    fused_decode: DecodeKernels = GALAXY_DEMO
    unfused_decode: DecodeKernels = TT_TRANSFORMERS
    generic_2d_decode: DecodeKernels = TT_TRANSFORMERS_2D

    def matmul_flops(self, weight: DType | None) -> float:
        if weight is DType.bfloat4_b:
            return self.tflops_lofi * 1e12
        if weight is DType.bfloat8_b:
            return self.tflops_hifi2 * 1e12
        return self.tflops_hifi4 * 1e12


WORMHOLE = Hardware()
