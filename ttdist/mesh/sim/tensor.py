"""The simulator's tensor: ONE torch tensor ``[R', C', *local]`` plus a placement per mesh axis.

A mesh axis whose placement is ``Replicate`` is stored once (``R'`` or ``C'`` is 1) and
broadcast: every device along it holds the same data by definition. Sharded and partial axes
are stored in full (``R' = R``). Every tensor counts its tile-padded bytes against each chip's
DRAM while it lives.
"""

from __future__ import annotations

import weakref

import torch

from ttdist.mesh.accounting import DramLedger, tile_padded_bytes
from ttdist.mesh.placement import Placements
from ttdist.mesh.precision import DType


class SimTensor:
    __slots__ = ("data", "placements", "dtype", "name", "_free", "__weakref__")

    def __init__(self, dram: DramLedger, data: torch.Tensor, placements: Placements, dtype: DType, name: str):
        self.data = data
        self.placements = placements
        self.dtype = dtype
        self.name = name
        nbytes = tile_padded_bytes(data.shape[2:], dtype)
        dram.allocate(name, nbytes)
        self._free = weakref.finalize(self, dram.free, name, nbytes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[2:])

    @property
    def ndim(self) -> int:
        return self.data.dim() - 2

    def __repr__(self) -> str:
        return f"SimTensor({self.name!r}, local={self.shape}, {self.placements}, {self.dtype.value})"


def per_row(w: SimTensor, ndim: int) -> torch.Tensor:
    """A ``[R', C', width]`` weight viewed to broadcast over ``ndim``-d local activations."""
    return w.data.reshape(w.data.shape[0], w.data.shape[1], *([1] * (ndim - 1)), w.shape[-1])
