"""Host-side helpers of the ttnn backend, numpy only: ledger bytes, assembling per-device
pieces into the global tensor, and the final draw of sampled users' tokens.

Sampling: greedy users never leave the device (``ttnn.argmax``). For users with a
temperature, the device returns each user's top-k candidates (``ttnn.topk``) and the host
draws among them with the user's own generator, seeded from ``(seed, step)`` exactly as
the simulator seeds it, so a seeded request is reproducible whatever batch it runs in.
``ttnn.sampling`` takes one seed per batch, which cannot give that guarantee.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ttdist.mesh.backend import SamplingBatch
from ttdist.mesh.placement import Partial, Placements, Shard
from ttdist.mesh.precision import DType

TILE = 32
MAX_DEVICE_TOP_K = 32


def tile_padded_bytes(local_shape: Sequence[int], dtype: DType) -> float:
    """Bytes one chip holds for a tensor stored in 32x32 tiles (the simulator's DRAM ledger rule)."""
    dims = list(local_shape) or [1]
    if len(dims) == 1:
        dims = [1] + dims
    dims[-1] = -(-dims[-1] // TILE) * TILE
    dims[-2] = -(-dims[-2] // TILE) * TILE
    return math.prod(dims) * dtype.bytes_per_element


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


class HostSampler:
    """Temperature / top-k / top-p draws over device-chosen candidates."""

    @staticmethod
    def candidates(params: SamplingBatch, users: np.ndarray, vocab: int) -> int:
        """How many top candidates the device must return (0: the users need full rows)."""
        ks = np.asarray(params.top_k)[users]
        if np.all((ks > 0) & (ks <= MAX_DEVICE_TOP_K)) and vocab >= TILE:
            return int(min(ks.max(), vocab))
        return 0

    @staticmethod
    def draw(params: SamplingBatch, users: np.ndarray, values: np.ndarray, indices: np.ndarray | None) -> np.ndarray:
        out = np.zeros(len(users), dtype=np.int64)
        for i, b in enumerate(users):
            row = np.asarray(values[b], dtype=np.float64) / float(params.temperature[b])
            ids = np.arange(row.size) if indices is None else np.asarray(indices[b], dtype=np.int64)
            k = int(params.top_k[b])
            if 0 < k < row.size:
                kth = np.sort(row)[-k]
                row = np.where(row < kth, -np.inf, row)
            p = float(params.top_p[b])
            if 0 < p < 1:
                order = np.argsort(-row, kind="stable")
                probs = _softmax(row[order])
                drop = (np.cumsum(probs) - probs) >= p
                row = row.copy()
                row[order[drop]] = -np.inf
            probs = _softmax(row)
            seed = int(params.seed[b])
            rng = np.random.default_rng((seed * 1_000_003 + int(params.step[b])) % (2**63) if seed >= 0 else None)
            out[i] = ids[int(rng.choice(row.size, p=probs))]
        return out


def _softmax(row: np.ndarray) -> np.ndarray:
    shifted = np.exp(row - np.max(row))
    return shifted / shifted.sum()
