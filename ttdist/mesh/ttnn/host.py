"""Host-side helpers of the ttnn backend: the per-chip host buffers a per-device upload is made
of (``host_shards``), assembling per-device pieces into the global tensor (``to_host``) and
reading the first chip's copy of a replicated tensor (``first_device``).
Sampling runs on the chips (``ttdist.mesh.sampling``); only the sampled ids are read back.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import ttnn

from ttdist.mesh.placement import Partial, Placements, Shard

BF16 = np.dtype(ml_dtypes.bfloat16)


def host_shards(pieces: np.ndarray, mesh_shape: tuple[int, int], dtype, layout) -> ttnn.Tensor:
    """The multi-device host tensor of ``pieces`` ``[R', C', *piece4]``: chip (r, c)'s host buffer
    is made from ``pieces[r % R', c % C']`` alone, in the target ttnn ``dtype`` and ``layout``; a
    piece shared along a replicated axis is made once and handed to each of its chips. No
    whole-tensor array is built (``ttnn.from_host_shards`` aggregates the buffers as they are)."""
    rows, cols = mesh_shape
    made: dict[tuple[int, int], ttnn.Tensor] = {}
    shards = []
    for r in range(rows):
        for c in range(cols):
            key = (r % pieces.shape[0], c % pieces.shape[1])
            if key not in made:
                made[key] = ttnn.Tensor(_readable(pieces[key]), dtype, None, layout)
            shards.append(made[key])
    return ttnn.from_host_shards(shards, ttnn.MeshShape(rows, cols))


def _readable(piece: np.ndarray) -> np.ndarray:
    """One piece as ``ttnn.Tensor`` reads it: bf16 (which it does not take) widened to float32
    one piece at a time, other floats as float32, ints as they are; ``ttnn.Tensor`` takes only
    writeable C-order arrays, so a read-only piece (a memory-mapped cache entry) is copied."""
    if piece.dtype == BF16 or (piece.dtype.kind == "f" and piece.dtype != np.float32):
        return piece.astype(np.float32)
    return piece if piece.flags.c_contiguous and piece.flags.writeable else piece.copy()


def assemble(pieces: list[np.ndarray], mesh_shape: tuple[int, int], placements: Placements) -> np.ndarray:
    """The global tensor from row-major per-device pieces: shards concatenated, partials summed."""
    rows, cols = mesh_shape
    grid = [[pieces[r * cols + c] for c in range(cols)] for r in range(rows)]
    line = []
    for r in range(rows):
        line.append(_combine(grid[r], placements[1]))
    return _combine(line, placements[0])


def _combine(parts: list[np.ndarray], placement) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    if isinstance(placement, Shard):
        return np.concatenate(parts, axis=placement.dim)
    if isinstance(placement, Partial):
        return np.sum(parts, axis=0)
    return parts[0]


def first_device(t: ttnn.Tensor) -> np.ndarray:
    """The first chip's piece of ``t`` as numpy (bf16 widened to float32 on device first)."""
    if t.dtype == ttnn.bfloat16:
        t = ttnn.typecast(t, ttnn.float32)
    return np.asarray(ttnn.get_device_tensors(t)[0].cpu().to_numpy())
