"""``ttnn.matmul`` / ``ttnn.linear`` (``ttnn/operations/matmul.py``; golden: ``a @ b`` (+ bias)).

Both operands must be TILE. The kernel multiplies whole tiles as the chips do: the
contraction runs over the padded K, so garbage in one operand's K padding is harmless only
where the other's is zero (host uploads tilize with zeros). Accumulation is float32, the
result is rounded to ``dtype`` (default: A's). The output is TILE with A's batch dims and
B's width, in ``memory_config`` (default DRAM interleaved). Math fidelity is accepted and not
modeled (the values are exact products).

Program configs are checked as ttnn validates them:

* ``MatmulMultiCoreReuseMultiCastDRAMShardedProgramConfig``: A width-sharded in L1, B
  width-sharded in DRAM, a width-sharded output, ``per_core_M`` = A's tile rows,
  ``in0_block_w`` dividing each core's K tiles, ``per_core_N`` x A's cores covering N;
* ``MatmulMultiCoreReuseMultiCastProgramConfig`` (2D): the grid fits the device, its cores
  cover M and N, ``in0_block_w`` divides K's tiles, the out-subblock divides the per-core
  block and has at most 8 tiles (4 with fp32 accumulation);
* ``MatmulMultiCoreReuseMultiCast1DProgramConfig``: the grid fits and covers M x N.
"""

from __future__ import annotations

import numpy as np

from ttdist.mesh.ttnn_emu import kernel as kn
from ttdist.mesh.ttnn_emu.types import (DRAM_MEMORY_CONFIG, TILE, BufferType, Layout, MatmulMultiCoreReuseMultiCast1DProgramConfig,
                                        MatmulMultiCoreReuseMultiCastDRAMShardedProgramConfig,
                                        MatmulMultiCoreReuseMultiCastProgramConfig, TensorMemoryLayout)


def _tiles(n: int) -> int:
    return -(-n // TILE)


def _output_shape(op: str, a, b) -> list:
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise NotImplementedError(f"ttnn emulator: {op} on 1-d operands is not modeled")
    if a.shape[-1] != b.shape[-2]:
        raise kn.fatal(op, f"the inner dims do not match: {list(a.shape)} x {list(b.shape)}")
    batch_a, batch_b = list(a.shape[:-2]), list(b.shape[:-2])
    if any(s != 1 for s in batch_b) and any(s != 1 for s in batch_a) and batch_a != batch_b:
        raise kn.fatal(op, f"batch dims {batch_a} and {batch_b} must match or be all ones")
    rank = max(len(a.shape), len(b.shape))
    pad_a = [1] * (rank - len(a.shape)) + list(a.shape)
    pad_b = [1] * (rank - len(b.shape)) + list(b.shape)
    return [max(x, y) for x, y in zip(pad_a[:-2], pad_b[:-2])] + [a.shape[-2], b.shape[-1]]


def _check_dram_sharded(op: str, a, b, cfg, out_mem, device) -> None:
    am, bm = a.memory_config(), b.memory_config()
    if am.memory_layout is not TensorMemoryLayout.WIDTH_SHARDED or am.buffer_type is not BufferType.L1:
        raise kn.fatal(op, "a DRAM-sharded matmul needs input A width-sharded in L1")
    if bm.memory_layout is not TensorMemoryLayout.WIDTH_SHARDED or bm.buffer_type is not BufferType.DRAM:
        raise kn.fatal(op, "a DRAM-sharded matmul needs input B width-sharded in DRAM")
    if out_mem.memory_layout is not TensorMemoryLayout.WIDTH_SHARDED:
        raise kn.fatal(op, "a DRAM-sharded matmul writes a width-sharded output")
    cores = am.shard_spec.num_cores()
    mt = _tiles(int(np.prod(a.padded_shape[:-1])))
    kt, nt = a.padded_shape[-1] // TILE, b.padded_shape[-1] // TILE
    if cfg.per_core_M != mt:
        raise kn.fatal(op, f"per_core_M {cfg.per_core_M} must equal A's {mt} tile rows")
    if (kt // cores) % cfg.in0_block_w or kt % cores:
        raise kn.fatal(op, f"in0_block_w {cfg.in0_block_w} must divide the {kt // cores} K tiles per core")
    if cfg.per_core_N * cores < nt:
        raise kn.fatal(op, f"per_core_N {cfg.per_core_N} x {cores} cores does not cover {nt} N tiles")


def _program_grid(op: str, cfg, device) -> tuple[int, int]:
    """The program config's core grid (columns, rows), checked against the device's worker grid."""
    size = cfg.compute_with_storage_grid_size
    gx, gy = (size.x, size.y) if hasattr(size, "x") else size
    grid = device.compute_with_storage_grid_size()
    if gx > grid.x or gy > grid.y:
        raise kn.fatal(op, f"program grid {gx}x{gy} exceeds the device's {grid.x}x{grid.y} worker grid")
    return gx, gy


def _check_2d(op: str, a, b, cfg, compute, device) -> None:
    gx, gy = _program_grid(op, cfg, device)
    mt, kt, nt = a.padded_shape[-2] // TILE, a.padded_shape[-1] // TILE, b.padded_shape[-1] // TILE
    rows, cols = (gx, gy) if cfg.transpose_mcast else (gy, gx)
    if cfg.per_core_M * rows < mt or cfg.per_core_N * cols < nt:
        raise kn.fatal(op, f"per-core blocks {cfg.per_core_M}x{cfg.per_core_N} on {gx}x{gy} cores do not cover {mt}x{nt} tiles")
    if kt % cfg.in0_block_w:
        raise kn.fatal(op, f"in0_block_w {cfg.in0_block_w} must divide the {kt} K tiles")
    _check_subblock(op, cfg, compute)


def _check_subblock(op: str, cfg, compute) -> None:
    h, w = cfg.out_subblock_h, cfg.out_subblock_w
    if cfg.per_core_M % h or cfg.per_core_N % w:
        raise kn.fatal(op, f"out_subblock {h}x{w} must divide the per-core block {cfg.per_core_M}x{cfg.per_core_N}")
    limit = 4 if compute is not None and compute.fp32_dest_acc_en else 8
    if h * w > limit:
        raise kn.fatal(op, f"out_subblock {h}x{w} exceeds {limit} tiles")


def _check_1d(op: str, a, b, cfg, compute, device) -> None:
    gx, gy = _program_grid(op, cfg, device)
    mt = _tiles(int(np.prod(a.padded_shape[:-1]))) if cfg.fuse_batch else a.padded_shape[-2] // TILE
    nt = b.padded_shape[-1] // TILE
    blocks = (-(-mt // cfg.per_core_M)) * (-(-nt // cfg.per_core_N))
    if blocks > gx * gy:
        raise kn.fatal(op, f"{blocks} output blocks do not fit {gx}x{gy} cores")
    _check_subblock(op, cfg, compute)


_CHECKS = {MatmulMultiCoreReuseMultiCastDRAMShardedProgramConfig: None, MatmulMultiCoreReuseMultiCastProgramConfig: _check_2d,
           MatmulMultiCoreReuseMultiCast1DProgramConfig: _check_1d}


def _matmul(op: str, a, b, bias=None, *, transpose_a=False, transpose_b=False, memory_config=None, dtype=None,
            program_config=None, compute_kernel_config=None, core_grid=None, activation=None, **extra):
    kn.no_extra(op, dict(extra, core_grid=core_grid, activation=activation, bias=bias))
    if transpose_a or transpose_b:
        raise NotImplementedError(f"ttnn emulator: {op} with transposed operands is not modeled")
    tensors = [a, b]
    device = kn.device_of(op, *tensors)
    for t, name in ((a, "input A"), (b, "input B")):
        kn.require_layout(op, t, Layout.TILE, name)
        kn.require_dtype(op, t, kn.FLOAT_TYPES, name)
    shape = _output_shape(op, a, b)
    out_mem = memory_config or DRAM_MEMORY_CONFIG
    if program_config is not None:
        if type(program_config) not in _CHECKS:
            raise NotImplementedError(f"ttnn emulator: {op} program config {type(program_config).__name__} is not modeled")
        if isinstance(program_config, MatmulMultiCoreReuseMultiCastDRAMShardedProgramConfig):
            _check_dram_sharded(op, a, b, program_config, out_mem, device)
        else:
            _CHECKS[type(program_config)](op, a, b, program_config, compute_kernel_config, device)
    out = kn.output(device, shape, dtype or a.dtype, Layout.TILE, out_mem)
    rank = len(shape)

    def run():
        pa, pb = kn.read_padded(a), kn.read_padded(b)
        pa = pa.reshape(pa.shape[:2] + (1,) * (rank - len(a.shape)) + pa.shape[2:])
        pb = pb.reshape(pb.shape[:2] + (1,) * (rank - len(b.shape)) + pb.shape[2:])
        with np.errstate(over="ignore", invalid="ignore"):
            y = np.matmul(pa, pb)
        kn.write_padded(out, y)

    device.launch(op, tensors, [out], run, (repr(program_config), repr(compute_kernel_config), out.dtype))
    return out


def matmul(a, b, **kwargs):
    return _matmul("matmul", a, b, **kwargs)


def linear(a, b, *, bias=None, **kwargs):
    return _matmul("linear", a, b, bias, **kwargs)
