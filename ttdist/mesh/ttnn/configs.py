"""Program and memory configs for the ttnn backend, as small functions of the shapes.

Every function takes per-device sizes in elements (rows ``m``, contraction ``k``,
output width ``n``) and the worker grid, and returns the ttnn object the op needs:

* decode (``m`` <= one tile of rows): DRAM-sharded matmuls. The weight is width-sharded
  over the 12 DRAM banks (width padded to 12 tiles), the activation is width-sharded in
  L1 over ``decode_cores(k)`` cores, the output comes back width-sharded in L1.
* prefill: 2D multicast matmuls over the whole grid; sequences longer than
  ``PREFILL_ROW_CHUNK`` rows are folded into a batch of chunks so one matmul fits L1.
* math fidelity follows the weight format (tt-metal LLM guide): bfloat4_b -> LoFi,
  bfloat8_b -> HiFi2, bfloat16 / float32 -> HiFi4.
"""

from __future__ import annotations

from dataclasses import dataclass

import ttnn

from ttdist.mesh.precision import DType

TILE = 32
DRAM_BANKS = 12
DECODE_MAX_ROWS = TILE
PREFILL_ROW_CHUNK = 1024
MAX_DECODE_CORES = 64
L1_MAX_WIDTH = 2048


@dataclass(frozen=True)
class Grid:
    """A rectangle of worker cores, ``x`` columns by ``y`` rows."""

    x: int
    y: int

    @property
    def cores(self) -> int:
        return self.x * self.y


def tiles(n: int) -> int:
    return -(-n // TILE)


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit`` (at least 1)."""
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


_TTNN_DTYPES = {
    DType.float32: "float32",
    DType.bfloat16: "bfloat16",
    DType.bfloat8_b: "bfloat8_b",
    DType.bfloat4_b: "bfloat4_b",
    DType.uint32: "uint32",
    DType.int32: "int32",
}


def ttnn_dtype(dtype: DType) -> ttnn.DataType:
    return getattr(ttnn, _TTNN_DTYPES[dtype])


def dtype_of(value_dtype) -> DType | None:
    """The ``DType`` a device tensor holds (None for a format the backend does not name, e.g. uint16)."""
    return next((d for d, name in _TTNN_DTYPES.items() if value_dtype == getattr(ttnn, name)), None)


def side_dtype(dtype: DType, activations: DType) -> DType:
    """The format of a tensor an op reads beside float32 or bf16 activations (norm weights, RoPE
    tables, norm statistics): float32 where it and the activations are float32, else bf16."""
    return DType.float32 if dtype is DType.float32 and activations is DType.float32 else DType.bfloat16


# SDPA (prefill, chunked, paged decode) reads Q, K and V only in these formats (TT_FATAL otherwise)
CACHE_DTYPES = (DType.bfloat16, DType.bfloat8_b, DType.bfloat4_b)


def cache_dtype(dtype: DType) -> DType:
    """The KV cache format ttnn can attend over for a requested ``dtype``: float32 is held in bf16
    (the nearest format SDPA accepts); the block floats and bf16 as asked."""
    if dtype in CACHE_DTYPES:
        return dtype
    if dtype is DType.float32:
        return DType.bfloat16
    raise ValueError(f"a ttnn KV cache holds {', '.join(d.value for d in CACHE_DTYPES)}, not {dtype.value}")


# ---------------------------------------------------------------------- math fidelity
def matmul_compute(weight_dtype: DType) -> ttnn.WormholeComputeKernelConfig:
    """Fidelity matched to the weight format; fp32 accumulation only for full-precision weights."""
    fidelity = {
        DType.bfloat4_b: ttnn.MathFidelity.LoFi,
        DType.bfloat8_b: ttnn.MathFidelity.HiFi2,
    }.get(weight_dtype, ttnn.MathFidelity.HiFi4)
    return ttnn.WormholeComputeKernelConfig(
        math_fidelity=fidelity,
        math_approx_mode=False,
        fp32_dest_acc_en=weight_dtype is DType.float32,
        packer_l1_acc=True,
    )


def precise_compute() -> ttnn.WormholeComputeKernelConfig:
    """Norms, softmax and attention: HiFi4 with fp32 accumulation."""
    return ttnn.WormholeComputeKernelConfig(
        math_fidelity=ttnn.MathFidelity.HiFi4, math_approx_mode=False, fp32_dest_acc_en=True, packer_l1_acc=False
    )


# ---------------------------------------------------------------------- decode: DRAM-sharded matmul
def dram_sharded_fits(k: int, n: int) -> bool:
    return k % TILE == 0 and n % TILE == 0


def dram_sharded_weight_memory(k: int, n: int) -> ttnn.MemoryConfig:
    """``[k, n]`` weight width-sharded over the DRAM banks, each shard a whole number of tiles."""
    padded = -(-n // (TILE * DRAM_BANKS)) * TILE * DRAM_BANKS
    banks = ttnn.CoreRangeSet({ttnn.CoreRange(ttnn.CoreCoord(0, 0), ttnn.CoreCoord(DRAM_BANKS - 1, 0))})
    spec = ttnn.ShardSpec(banks, (k, padded // DRAM_BANKS), ttnn.ShardOrientation.ROW_MAJOR)
    return ttnn.MemoryConfig(ttnn.TensorMemoryLayout.WIDTH_SHARDED, ttnn.BufferType.DRAM, spec)


def decode_cores(k: int, grid: Grid) -> int:
    """Cores the activation is width-sharded over: the most that split ``k`` into whole tiles."""
    return largest_divisor(tiles(k), min(grid.cores, MAX_DECODE_CORES))


def decode_input_memory(m: int, k: int, grid: Grid) -> ttnn.MemoryConfig:
    cores = decode_cores(k, grid)
    core_set = ttnn.num_cores_to_corerangeset(cores, ttnn.CoreCoord(grid.x, grid.y), True)
    return ttnn.create_sharded_memory_config(
        (tiles(m) * TILE, k // cores), core_set, ttnn.ShardStrategy.WIDTH, ttnn.ShardOrientation.ROW_MAJOR,
        use_height_and_width_as_shard_shape=True,
    )


def dram_sharded_program(m: int, k: int, n: int, grid: Grid) -> ttnn.MatmulMultiCoreReuseMultiCastDRAMShardedProgramConfig:
    cores = decode_cores(k, grid)
    return ttnn.MatmulMultiCoreReuseMultiCastDRAMShardedProgramConfig(
        in0_block_w=largest_divisor(tiles(k) // cores, 8),
        per_core_M=tiles(m),
        per_core_N=-(-tiles(n) // cores),
        fused_activation=None,
    )


# ---------------------------------------------------------------------- prefill: 2D matmul
def prefill_row_chunk(m: int) -> int:
    """Rows per matmul after the long-sequence reshape (``m`` itself when it fits)."""
    if m <= PREFILL_ROW_CHUNK or m % PREFILL_ROW_CHUNK:
        return m
    return PREFILL_ROW_CHUNK


def out_subblock_w(per_core_n: int, limit: int = 4) -> int:
    return largest_divisor(per_core_n, limit)


def prefill_program(m: int, k: int, n: int, grid: Grid) -> ttnn.MatmulMultiCoreReuseMultiCastProgramConfig:
    """2D multicast matmul: rows over the grid's y, output columns over its x."""
    rows = min(grid.y, tiles(m))
    cols = min(grid.x, tiles(n))
    per_core_m = -(-tiles(m) // rows)
    per_core_n = -(-tiles(n) // cols)
    return ttnn.MatmulMultiCoreReuseMultiCastProgramConfig(
        compute_with_storage_grid_size=(cols, rows),
        in0_block_w=largest_divisor(tiles(k), 4),
        out_subblock_h=1,
        out_subblock_w=out_subblock_w(per_core_n),
        per_core_M=per_core_m,
        per_core_N=per_core_n,
        transpose_mcast=False,
        fused_activation=None,
        fuse_batch=False,
    )


# ---------------------------------------------------------------------- attention
def sdpa_chunk(seq: int) -> int:
    """Q/K chunk for prefill SDPA: the largest of 256/128/64/32 dividing the tile-padded length."""
    padded = tiles(seq) * TILE
    for chunk in (256, 128, 64, 32):
        if padded % chunk == 0:
            return chunk
    return TILE


def sdpa_prefill_program(seq: int, grid: Grid) -> ttnn.SDPAProgramConfig:
    chunk = sdpa_chunk(seq)
    return ttnn.SDPAProgramConfig(
        compute_with_storage_grid_size=(grid.x, grid.y), q_chunk_size=chunk, k_chunk_size=chunk, exp_approx_mode=False
    )


def sdpa_chunked_program(seq: int, page_size: int, grid: Grid, start: int = 0) -> ttnn.SDPAProgramConfig:
    """Chunked (paged) prefill SDPA: K chunks must not straddle a page, and the chunk's start
    (a page boundary, so a whole number of tiles) must be a multiple of the Q chunk."""
    q_chunk = sdpa_chunk(seq)
    while start % q_chunk:
        q_chunk //= 2
    k_chunk = largest_divisor(page_size // TILE, 8) * TILE
    return ttnn.SDPAProgramConfig(
        compute_with_storage_grid_size=(grid.x, grid.y), q_chunk_size=q_chunk, k_chunk_size=k_chunk, exp_approx_mode=False
    )


def sdpa_decode_program(page_size: int, grid: Grid) -> ttnn.SDPAProgramConfig:
    k_chunk = largest_divisor(page_size // TILE, 8) * TILE
    return ttnn.SDPAProgramConfig(
        compute_with_storage_grid_size=(grid.x, grid.y), q_chunk_size=TILE, k_chunk_size=k_chunk, exp_approx_mode=False
    )


def heads_decode_memory(batch: int, heads: int, head_dim: int, grid: Grid) -> ttnn.MemoryConfig:
    """Decode head tensors ``[1, B, heads(padded to a tile), hd]``: one user per core."""
    core_set = ttnn.num_cores_to_corerangeset(batch, ttnn.CoreCoord(grid.x, grid.y), True)
    return ttnn.create_sharded_memory_config(
        (tiles(heads) * TILE, head_dim), core_set, ttnn.ShardStrategy.HEIGHT, ttnn.ShardOrientation.ROW_MAJOR,
        use_height_and_width_as_shard_shape=True,
    )


# ---------------------------------------------------------------------- storage
def activation_memory(m: int, width: int = 0) -> ttnn.MemoryConfig:
    """Decode-sized activations live in L1, prefill and wide ones in DRAM.

    Wide rows stay out of L1 because single-row ops (norms) size their circular buffers
    by the full width and would collide with L1 tensors.
    """
    small = m <= DECODE_MAX_ROWS and width <= L1_MAX_WIDTH
    return ttnn.L1_MEMORY_CONFIG if small else ttnn.DRAM_MEMORY_CONFIG


def interleaved_bytes(pages: int, page_bytes: int, banks: int = DRAM_BANKS) -> int:
    """Interleaved buffers spread pages round-robin; every bank reserves the same page count."""
    return -(-pages // banks) * banks * page_bytes
