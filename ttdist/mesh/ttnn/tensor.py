"""The ttnn backend's tensor: one ttnn mesh tensor with the protocol's view of it.

A ``TtnnTensor`` holds the per-device shape, the placement per mesh axis, the dtype and a
``kind`` that says how the data lies on the chips:

* ``rows``   token-major activations and matmul weights, ``[1, 1, T, W]`` on device;
* ``vector`` norm weights ``[W]``, row-major ``[1, 1, W/32, 32]``;
* ``table``  the embedding table, row-major ``[1, 1, V, H]``;
* ``heads_prefill`` ``[1, heads, T, hd]`` and ``heads_decode`` ``[1, B, heads(32), hd]``
  (height-sharded, one user per core) from ``create_qkv_heads``;
* ``cache``  paged KV ``[pages, kv_heads, page_size, hd]``;
* ``stats``  distributed-norm statistics ``[1, 1, T, 32 * n]``;
* ``input``  a persistent step input (``input_tensor``), rewritten in place.

A host array given to ``from_host`` waits as ``Pending`` (one given to ``from_host_per_device``
as ``PendingPieces``, one piece per chip) until the first op that reads it decides its
on-chip layout.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

from ttdist.mesh.accounting import tile_padded_bytes
from ttdist.mesh.placement import Placements
from ttdist.mesh.precision import DType
from ttdist.mesh.ttnn import configs as cfg

ROWS, VECTOR, TABLE, HEADS_PREFILL, HEADS_DECODE, CACHE, STATS, INPUT = (
    "rows", "vector", "table", "heads_prefill", "heads_decode", "cache", "stats", "input")


@dataclass
class Pending:
    """A host array waiting for its first consumer: 4D global data and the mesh dim per axis."""

    array: np.ndarray
    mesh_dims: tuple[int | None, int | None]

    def reshaped(self, shape4) -> "Pending":
        return Pending(self.array.reshape(shape4), self.mesh_dims)

    def tile_rows(self) -> "Pending":
        """``[.., 1, W] -> [.., W/32, 32]``; a mesh dim on the width moves to the rows."""
        return Pending(self.array.reshape(*self.array.shape[:-2], -1, cfg.TILE), tuple(2 if d == 3 else d for d in self.mesh_dims))


@dataclass
class PendingPieces:
    """Per-device host data waiting for its first consumer: ``[R', C', *piece4]``, chip (r, c)'s
    own 4D piece at ``[r % R', c % C']`` (an axis of one entry is shared by all its chips);
    uploaded one host buffer per chip, never merged into a whole-tensor array."""

    pieces: np.ndarray

    def reshaped(self, shape4) -> "PendingPieces":
        return PendingPieces(self.pieces.reshape(self.pieces.shape[:2] + tuple(shape4)))

    def tile_rows(self) -> "PendingPieces":
        """Each piece ``[.., 1, W] -> [.., W/32, 32]``."""
        return PendingPieces(self.pieces.reshape(*self.pieces.shape[:-2], -1, cfg.TILE))


class TtnnTensor:
    """Made by a ``TtnnBackend`` (``backend``), whose DRAM ledger counts it while it lives."""

    __slots__ = ("value", "pending", "shape", "placements", "dtype", "name", "kind", "heads", "_free", "__weakref__")

    def __init__(self, backend, value, shape, placements: Placements, dtype: DType, name: str,
                 kind: str = ROWS, heads: int = 0, pending: Pending | PendingPieces | None = None):
        self.value = value
        self.pending = pending
        self.shape = tuple(int(s) for s in shape)
        self.placements = placements
        self.dtype = dtype
        self.name = name
        self.kind = kind
        self.heads = heads
        nbytes = tile_padded_bytes(self.shape, dtype)
        backend.dram.allocate(name, nbytes)
        backend._live.add(self)
        self._free = weakref.finalize(self, backend.dram.free, name, nbytes)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def rows(self) -> int:
        """Token rows (1 for a vector)."""
        return self.shape[0] if self.ndim >= 2 else 1

    def local_view(self, piece: np.ndarray) -> np.ndarray:
        """This tensor's local data from one chip's device tensor read back as numpy."""
        if self.kind == HEADS_PREFILL:
            return piece[0, : self.heads].transpose(1, 0, 2)[: self.shape[0]]
        if self.kind == HEADS_DECODE:
            return piece[0, : self.shape[0], : self.heads]
        if self.kind == STATS:
            return piece[0, 0, : self.shape[0], :: cfg.TILE][:, : self.shape[1]]
        if self.kind in (VECTOR, TABLE):
            return piece.reshape(-1)[: math.prod(self.shape)].reshape(self.shape)
        return piece.reshape(self.shape)

    def __repr__(self) -> str:
        return f"TtnnTensor({self.name!r}, local={self.shape}, {self.placements}, {self.dtype.value}, {self.kind})"
