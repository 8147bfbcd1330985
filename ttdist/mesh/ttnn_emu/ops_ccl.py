"""Collectives over the mesh (``ttnn/operations/ccl.py``: ``_golden_function_all_gather``,
``_golden_function_reduce_scatter``, ``_golden_function_all_reduce``).

The devices are grouped along ``cluster_axis`` (every other mesh coordinate fixed; all
devices row-major when it is None). ``all_gather`` concatenates the group's tensors along
``dim`` on every member; ``all_reduce`` sums them on every member; ``reduce_scatter`` sums
them and gives member ``i`` chunk ``i`` of ``dim``. Sums of BFLOAT16/BFLOAT8_B run in
BFLOAT16 (ttnn's doc: "the reduction is performed in BFLOAT16"), device by device in group
order, rounding after each add; FLOAT32 sums in float32. An axis of more than one device
needs the fabric (``set_fabric_config`` before ``open_mesh_device``), as on chips.

An all-gather along a tile dim whose size is not whole tiles takes ttnn's composite path
(its doc), whose output lands in DRAM interleaved whatever ``memory_config`` asks (as ttnn
0.81.1 reports on mock chips).
"""

from __future__ import annotations

import numpy as np

from ttdist.mesh.ttnn_emu import kernel as kn
from ttdist.mesh.ttnn_emu import storage
from ttdist.mesh.ttnn_emu.types import DRAM_MEMORY_CONFIG, TILE, DataType, FabricConfig, Layout

_REDUCE_TYPES = frozenset({DataType.BFLOAT16, DataType.BFLOAT8_B, DataType.FLOAT32})


def _axes(op: str, device, cluster_axis) -> tuple:
    """The mesh axes a collective runs over and the group size."""
    rows, cols = device.shape_tuple
    if cluster_axis is None:
        axes = (0, 1)
    elif cluster_axis in (0, 1, -1, -2):
        axes = (cluster_axis % 2,)
    else:
        raise kn.fatal(op, f"cluster_axis {cluster_axis} is invalid for a 2-d mesh")
    n = int(np.prod([device.shape_tuple[a] for a in axes]))
    if n > 1 and device.fabric is FabricConfig.DISABLED:
        raise kn.fatal(op, "the fabric is off: call ttnn.set_fabric_config(...) before open_mesh_device")
    return axes, n


def _members(v: np.ndarray, axes: tuple, shape: tuple) -> list:
    """The group's per-device values in group order (row-major over ``axes``), as full arrays."""
    full = np.broadcast_to(v, tuple(shape) + v.shape[2:])
    if axes == (0, 1):
        return [full[r, c][None, None] for r in range(shape[0]) for c in range(shape[1])]
    a = axes[0]
    return [np.take(full, [i], axis=a) for i in range(shape[a])]


def _sum(parts: list, dtype: DataType) -> np.ndarray:
    total = parts[0].astype(np.float32)
    for p in parts[1:]:
        total = total + p
        if dtype is not DataType.FLOAT32:
            total = storage.round_to(total, DataType.BFLOAT16)
    return total


def _common(op: str, x, extra: dict):
    kn.no_extra(op, extra)
    device = kn.device_of(op, x)
    if len(x.shape) < 2:
        raise kn.fatal(op, "the input must be rank 2 or greater")
    return device


def all_gather(x, dim: int, *, cluster_axis=None, memory_config=None, num_links=None, topology=None, output_tensor=None,
               subdevice_id=None, sub_core_grids=None, **extra):
    op = "all_gather"
    device = _common(op, x, dict(extra, output_tensor=output_tensor, subdevice_id=subdevice_id, sub_core_grids=sub_core_grids))
    d = kn.normalize_dim(op, dim, len(x.shape))
    axes, n = _axes(op, device, cluster_axis)
    shape = list(x.shape)
    shape[d] *= n
    composite = x.layout is Layout.TILE and d >= len(x.shape) - 2 and x.shape[d] % TILE
    mem = DRAM_MEMORY_CONFIG if composite else memory_config or x.memory_config()
    out = kn.output(device, shape, x.dtype, x.layout, mem)
    mesh = device.shape_tuple

    def run():
        parts = _members(kn.read(x), axes, mesh)
        gathered = np.concatenate(parts, axis=2 + d)  # the grouped axes collapse to one entry: every member holds it
        kn.write(out, gathered)

    device.launch(op, [x], [out], run, (d, axes))
    return out


def all_reduce(x, *, cluster_axis=None, memory_config=None, num_links=None, topology=None, subdevice_id=None, **extra):
    op = "all_reduce"
    device = _common(op, x, dict(extra, subdevice_id=subdevice_id))
    kn.require_dtype(op, x, _REDUCE_TYPES)
    axes, _ = _axes(op, device, cluster_axis)
    out = kn.output(device, x.shape, x.dtype, x.layout, memory_config or x.memory_config())
    mesh = device.shape_tuple

    def run():
        kn.write(out, _sum(_members(kn.read(x), axes, mesh), x.dtype))

    device.launch(op, [x], [out], run, (axes,))
    return out


def reduce_scatter(x, dim: int, *, cluster_axis=None, memory_config=None, num_links=None, topology=None, subdevice_id=None,
                   intermediate_memory_config=None, output_tensor=None, compute_kernel_config=None, **extra):
    op = "reduce_scatter"
    device = _common(op, x, dict(extra, subdevice_id=subdevice_id, output_tensor=output_tensor))
    kn.require_dtype(op, x, _REDUCE_TYPES)
    d = kn.normalize_dim(op, dim, len(x.shape))
    axes, n = _axes(op, device, cluster_axis)
    if x.shape[d] % n:
        raise kn.fatal(op, f"dim {d} of size {x.shape[d]} does not divide over {n} devices")
    shape = list(x.shape)
    shape[d] //= n
    out = kn.output(device, shape, x.dtype, x.layout, memory_config or x.memory_config())
    mesh = device.shape_tuple

    def run():
        total = _sum(_members(kn.read(x), axes, mesh), x.dtype)
        chunks = np.split(total, n, axis=2 + d)
        if axes == (0, 1):
            scattered = np.stack([np.concatenate([chunks[r * mesh[1] + c][0, 0][None] for c in range(mesh[1])])
                                  for r in range(mesh[0])])
        else:
            scattered = np.concatenate(chunks, axis=axes[0])
        kn.write(out, scattered)

    device.launch(op, [x], [out], run, (d, axes))
    return out



