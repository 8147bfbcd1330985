"""The constants of the roofline, each with where it comes from.

Per-chip DRAM capacity and peak bandwidth, Ethernet link bandwidth and link counts are the
mesh's own figures (``ttdist.mesh.spec.MeshSpec``: 12 GiB and 288 GB/s per Wormhole chip,
100 Gb/s = 12.5 GB/s per Ethernet link direction, 4 links along a Galaxy's rows and 3 along
its columns). The rest is here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttdist.mesh.precision import DType


@dataclass(frozen=True)
class Hardware:
    # Streaming weights out of DRAM: a DRAM-sharded decode matmul reads ~240 GB/s of the chip's
    # 288 GB/s peak (tt-metal LLM guide, section 4.3 "DRAM-sharded matmul"; DESIGN.md).
    dram_efficiency: float = 240.0 / 288.0
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
    # Gap between two device ops in a traced decode step: 0.6-0.9 us
    # (decoder_perf_targets_6u.json, "op_to_op" of every decoder op).
    op_gap_s: float = 0.7e-6
    # Shortest kernel of a decode element-wise op: 2.2 us (fused rotary) and 2.4 us (silu-mul)
    # in decoder_perf_targets_6u.json; every non-matmul op pays at least this.
    op_kernel_s: float = 2.2e-6
    # Element-wise and data-movement ops of a decode step (norms, heads, rotary, adds, silu)
    # run on small tensors on a few cores; they move data at about one NOC link's rate:
    # 32 bytes per cycle at the 1 GHz AI clock (Wormhole NOC, tt-metal docs).
    noc_bytes_per_s: float = 32e9

    def matmul_flops(self, weight: DType) -> float:
        if weight is DType.bfloat4_b:
            return self.tflops_lofi * 1e12
        if weight is DType.bfloat8_b:
            return self.tflops_hifi2 * 1e12
        return self.tflops_hifi4 * 1e12


WORMHOLE = Hardware()
