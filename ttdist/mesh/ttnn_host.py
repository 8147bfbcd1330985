"""Host-side helpers of the ttnn backend, numpy only: assembling per-device pieces into the
global tensor (``to_host``). Sampling runs on the chips (``ttdist.mesh.sampling``); only the
sampled ids are read back.
"""

from __future__ import annotations

import numpy as np

from ttdist.mesh.placement import Partial, Placements, Shard



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
