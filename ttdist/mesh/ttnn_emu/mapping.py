"""Spreading host data over a mesh and taking it apart again (``ttnn/distributed``).

``create_mesh_mapper(device, MeshMapperConfig([p_rows, p_cols]))``: per mesh axis,
``PlacementShard(dim)`` splits ``dim`` into equal pieces, chip ``(r, c)`` taking piece ``r``
(rows axis) / ``c`` (cols axis); ``PlacementReplicate()`` gives every chip on the axis the
same data (stored once). ``from_host_shards(tensors, MeshShape)`` joins per-chip host
tensors, row-major; ``get_device_tensors`` returns the per-chip tensors, row-major.
"""

from __future__ import annotations

import numpy as np

from ttdist.mesh.ttnn_emu.tensor import Tensor
from ttdist.mesh.ttnn_emu.types import MeshMapperConfig, PlacementReplicate, PlacementShard


class MeshMapper:
    def __init__(self, mesh_shape: tuple, placements: tuple):
        if len(placements) != len(mesh_shape):
            raise RuntimeError(f"TT_FATAL create_mesh_mapper: {len(placements)} placements for a {len(mesh_shape)}-d mesh")
        for p in placements:
            if not isinstance(p, (PlacementShard, PlacementReplicate)):
                raise TypeError(f"create_mesh_mapper: placement {p!r} is not PlacementShard or PlacementReplicate")
        self.mesh_shape = tuple(mesh_shape)
        self.placements = tuple(placements)

    def split(self, array: np.ndarray) -> np.ndarray:
        """``array`` -> ``[R', C', *piece]`` (an axis replicated keeps one entry)."""
        pieces = array[None, None]
        for axis, (p, n) in enumerate(zip(self.placements, self.mesh_shape)):
            if isinstance(p, PlacementReplicate) or n == 1:
                continue
            dim = p.dim % array.ndim
            if array.shape[dim] % n:
                raise RuntimeError(f"TT_FATAL mesh mapper: dim {dim} of size {array.shape[dim]} does not split over the {n} "
                                   f"devices of mesh axis {axis}")
            parts = np.split(pieces, n, axis=2 + dim)
            pieces = np.concatenate(parts, axis=axis)
        return pieces


def create_mesh_mapper(device, config: MeshMapperConfig, *args, **kwargs) -> MeshMapper:
    if args or kwargs:
        raise NotImplementedError("create_mesh_mapper: only (device, MeshMapperConfig) is modeled by the emulator")
    return MeshMapper(device.shape_tuple, config.placements)


def from_host_shards(tensors, mesh_shape) -> Tensor:
    """One multi-device host tensor from per-chip host tensors (row-major over the mesh)."""
    rows, cols = int(mesh_shape[0]), int(mesh_shape[1])
    if len(tensors) != rows * cols:
        raise RuntimeError(f"TT_FATAL from_host_shards: {len(tensors)} shards for a {rows}x{cols} mesh")
    first = tensors[0]
    for t in tensors:
        t._check_alive()
        if t._buffer is not None or t._host.shape[:2] != (1, 1):
            raise RuntimeError("from_host_shards: every shard must be a single-device host tensor")
        if (t.shape, t.dtype, t.layout) != (first.shape, first.dtype, first.layout):
            raise RuntimeError(f"TT_FATAL from_host_shards: shards differ ({list(t.shape)} {t.dtype} vs {list(first.shape)} {first.dtype})")
    grid = [[tensors[r * cols + c] for c in range(cols)] for r in range(rows)]
    same_cols = all(grid[r][c] is grid[r][0] for r in range(rows) for c in range(cols))
    same_rows = all(grid[r][c] is grid[0][c] for r in range(rows) for c in range(cols))
    pick_r, pick_c = (1 if same_rows else rows), (1 if same_cols else cols)
    data = np.stack([np.stack([grid[r][c]._host[0, 0] for c in range(pick_c)]) for r in range(pick_r)])
    return Tensor._make(first.shape, first.dtype, first.layout, host=data, mesh_shape=(rows, cols))


def get_device_tensors(tensor: Tensor) -> list:
    """The per-chip tensors of a mesh tensor, row-major (device tensors stay on their chip)."""
    tensor._check_alive()
    if tensor._buffer is None:
        host = tensor._host
        rows, cols = tensor._mesh_shape or (1, 1)
        return [Tensor._make(tensor.shape, tensor.dtype, tensor.layout, host=host[r % host.shape[0], c % host.shape[1]][None, None])
                for r in range(rows) for c in range(cols)]
    rows, cols = tensor._buffer.device.shape_tuple
    out = []
    for r in range(rows):
        for c in range(cols):
            t = Tensor._make(tensor.shape, tensor.dtype, tensor.layout, buffer=tensor._buffer)
            t._chip = (r, c)
            out.append(t)
    return out
