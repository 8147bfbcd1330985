"""Small helpers for tests and scripts that drive the emulated ``ttnn`` directly."""

from __future__ import annotations

import numpy as np

from ttdist.mesh.ttnn_emu import namespace


def fresh_ttnn():
    """An emulated ``ttnn`` module (not installed in ``sys.modules``)."""
    return namespace.build()["ttnn"]


def open_mesh(ttnn, rows: int, cols: int, *, trace_region_size: int = 1 << 20, fabric=None):
    """An emulated mesh with the fabric a multi-chip system needs (FABRIC_1D unless told)."""
    ttnn.set_fabric_config(fabric or ttnn.FabricConfig.FABRIC_1D)
    return ttnn.open_mesh_device(ttnn.MeshShape(rows, cols), trace_region_size=trace_region_size)


def upload(ttnn, device, array, dims=(None, None), *, dtype=None, layout=None, memory_config=None):
    """``array`` onto ``device``: ``dims[a]`` is the tensor dim sharded over mesh axis ``a`` (None: replicated)."""
    placements = [ttnn.PlacementReplicate() if d is None else ttnn.PlacementShard(d) for d in dims]
    mapper = ttnn.create_mesh_mapper(device, ttnn.MeshMapperConfig(placements))
    array = np.ascontiguousarray(array)
    host = ttnn.Tensor(array, dtype or ttnn.float32, None, layout or ttnn.TILE_LAYOUT, mesh_mapper=mapper)
    return host.to(device, memory_config or ttnn.DRAM_MEMORY_CONFIG)


def per_chip(ttnn, tensor) -> np.ndarray:
    """Every chip's logical values, ``[R, C, *shape]`` (bfloat16 read through a float32 typecast)."""
    if tensor.dtype == ttnn.bfloat16:
        tensor = ttnn.typecast(tensor, ttnn.float32)
    rows, cols = tensor.device().shape_tuple
    pieces = [p.cpu().to_numpy() for p in ttnn.get_device_tensors(tensor)]
    return np.stack(pieces).reshape((rows, cols) + pieces[0].shape)
