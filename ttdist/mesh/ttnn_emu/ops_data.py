"""Data movement and creation (``ttnn/operations/data_movement.py``, ``core.py``,
``creation.py``; goldens: torch ``reshape``, ``permute``, slicing, ``cat``, ``zeros``).

``reshape``/``permute``/``slice``/``concat`` move logical values and keep the layout (a
TILE output gets fresh, poisoned padding). Memory moves (``to_memory_config``,
``sharded_to_interleaved``, ``interleaved_to_sharded``) keep values and change where they
live; a sharded target needs a shard spec whose shards cover the tensor, as ttnn checks.
``zeros`` fills the whole buffer, padding included.
"""

from __future__ import annotations

import builtins

import numpy as np

from ttdist.mesh.ttnn_emu import kernel as kn
from ttdist.mesh.ttnn_emu import storage
from ttdist.mesh.ttnn_emu.tensor import Tensor
from ttdist.mesh.ttnn_emu.types import (DRAM_MEMORY_CONFIG, TILE, DataType, Layout, MemoryConfig, TensorMemoryLayout)


def reshape(x, shape, *args, memory_config=None, **extra):
    if args:
        raise NotImplementedError("ttnn emulator: reshape with a padded shape argument is not modeled")
    kn.no_extra("reshape", extra)
    device = kn.device_of("reshape", x)
    shape = [int(s) for s in shape]
    if shape.count(-1) == 1:
        known = int(np.prod([s for s in shape if s != -1]))
        shape[shape.index(-1)] = int(np.prod(x.shape)) // max(known, 1)
    if int(np.prod(shape)) != int(np.prod(x.shape)):
        raise kn.fatal("reshape", f"cannot reshape {list(x.shape)} to {shape}")
    out = kn.output(device, shape, x.dtype, x.layout, memory_config or x.memory_config())

    def run():
        v = kn.read(x)
        kn.write(out, v.reshape(v.shape[:2] + tuple(shape)))

    device.launch("reshape", [x], [out], run, (tuple(shape),))
    return out


def permute(x, dims, *, memory_config=None, pad_value=None, **extra):
    kn.no_extra("permute", extra)
    device = kn.device_of("permute", x)
    rank = len(x.shape)
    dims = [kn.normalize_dim("permute", d, rank) for d in dims]
    if sorted(dims) != list(range(rank)):
        raise kn.fatal("permute", f"{dims} is not a permutation of {rank} dims")
    out = kn.output(device, [x.shape[d] for d in dims], x.dtype, x.layout, memory_config or x.memory_config())

    def run():
        kn.write(out, np.transpose(kn.read(x), [0, 1] + [2 + d for d in dims]))

    device.launch("permute", [x], [out], run, tuple(dims))
    return out


def slice(x, starts, ends, steps=None, *, memory_config=None, **extra):  # noqa: A001
    kn.no_extra("slice", extra)
    device = kn.device_of("slice", x)
    rank = len(x.shape)
    steps = list(steps) if steps is not None else [1] * rank
    if len(starts) != rank or len(ends) != rank or len(steps) != rank:
        raise kn.fatal("slice", f"starts/ends/steps must have {rank} entries")
    index = []
    for s, e, st, n in zip(starts, ends, steps, x.shape):
        if not (0 <= s < e <= n) or st < 1:
            raise kn.fatal("slice", f"slice {list(starts)}:{list(ends)} is out of range for {list(x.shape)}")
        index.append(builtins.slice(s, e, st))
    shape = [len(range(s, e, st)) for s, e, st in zip(starts, ends, steps)]
    out = kn.output(device, shape, x.dtype, x.layout, memory_config or x.memory_config())
    where = (builtins.slice(None), builtins.slice(None)) + tuple(index)

    def run():
        kn.write(out, kn.read(x)[where])

    device.launch("slice", [x], [out], run, (tuple(starts), tuple(ends), tuple(steps)))
    return out


def concat(tensors, dim: int = 0, *, memory_config=None, **extra):
    kn.no_extra("concat", extra)
    tensors = list(tensors)
    device = kn.device_of("concat", *tensors)
    first = tensors[0]
    rank = len(first.shape)
    d = kn.normalize_dim("concat", dim, rank)
    for t in tensors:
        if (t.dtype, t.layout, len(t.shape)) != (first.dtype, first.layout, rank):
            raise kn.fatal("concat", "all tensors must have the same dtype, layout and rank")
        if any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != d):
            raise kn.fatal("concat", f"shapes {list(t.shape)} and {list(first.shape)} differ outside dim {d}")
    shape = list(first.shape)
    shape[d] = sum(t.shape[d] for t in tensors)
    out = kn.output(device, shape, first.dtype, first.layout, memory_config or first.memory_config())

    def run():
        parts = [kn.read(t) for t in tensors]
        lead = np.broadcast_shapes(*(p.shape[:2] for p in parts))
        kn.write(out, np.concatenate([np.broadcast_to(p, lead + p.shape[2:]) for p in parts], axis=2 + d))

    device.launch("concat", tensors, [out], run, (d,))
    return out


def _check_shards(op: str, x: Tensor, memory_config: MemoryConfig) -> None:
    """A sharded target must carry a shard spec whose shards cover the tensor's padded rows and width."""
    spec = memory_config.shard_spec
    if spec is None:
        raise kn.fatal(op, f"a {memory_config.memory_layout.name} memory config needs a shard spec")
    height = int(np.prod(x.padded_shape[:-1]))
    width = x.padded_shape[-1]
    cores = spec.num_cores()
    sh, sw = spec.shape
    if x.layout is Layout.TILE and (sh % TILE or sw % TILE):
        raise kn.fatal(op, f"shard shape {list(spec.shape)} must be whole tiles for a TILE tensor")
    layout = memory_config.memory_layout
    if layout is TensorMemoryLayout.WIDTH_SHARDED and (sh < height or sw * cores < width):
        raise kn.fatal(op, f"width shards {list(spec.shape)} x {cores} cores do not cover {height}x{width}")
    if layout is TensorMemoryLayout.HEIGHT_SHARDED and (sw != width or sh * cores < height):
        raise kn.fatal(op, f"height shards {list(spec.shape)} x {cores} cores do not cover {height}x{width}")


def _move(op: str, x, memory_config: MemoryConfig, dtype=None):
    device = kn.device_of(op, x)
    if memory_config.is_sharded():
        _check_shards(op, x, memory_config)
    out = kn.output(device, x.shape, dtype or x.dtype, x.layout, memory_config)

    def run():
        if out.dtype is x.dtype:  # the same values elsewhere: share the array (in-place writers copy shared buffers first)
            out._buffer.data = x._buffer.data
            out._buffer.shared = x._buffer.shared = True
        else:
            kn.write(out, kn.read(x))

    device.launch(op, [x], [out], run, (memory_config, out.dtype))
    return out


def to_memory_config(x, memory_config: MemoryConfig, dtype=None, **extra):
    kn.no_extra("to_memory_config", extra)
    return _move("to_memory_config", x, memory_config, dtype)


def sharded_to_interleaved(x, memory_config: MemoryConfig = DRAM_MEMORY_CONFIG, output_dtype=None, **extra):
    kn.no_extra("sharded_to_interleaved", extra)
    if not x.memory_config().is_sharded():
        raise kn.fatal("sharded_to_interleaved", "the input tensor must be sharded")
    if memory_config.is_sharded():
        raise kn.fatal("sharded_to_interleaved", "the output memory config must be interleaved")
    return _move("sharded_to_interleaved", x, memory_config, output_dtype)


def interleaved_to_sharded(x, memory_config: MemoryConfig, output_dtype=None, **extra):
    kn.no_extra("interleaved_to_sharded", extra)
    if x.memory_config().is_sharded():
        raise kn.fatal("interleaved_to_sharded", "the input tensor must be interleaved")
    return _move("interleaved_to_sharded", x, memory_config, output_dtype)


def zeros(shape, dtype: DataType = DataType.BFLOAT16, layout: Layout = Layout.ROW_MAJOR, device=None, memory_config=None, **extra):
    return full(shape, 0.0, dtype=dtype, layout=layout, device=device, memory_config=memory_config, **extra)


def ones(shape, dtype: DataType = DataType.BFLOAT16, layout: Layout = Layout.ROW_MAJOR, device=None, memory_config=None, **extra):
    return full(shape, 1.0, dtype=dtype, layout=layout, device=device, memory_config=memory_config, **extra)


def full(shape, fill_value, dtype: DataType = DataType.BFLOAT16, layout: Layout = Layout.ROW_MAJOR, device=None,
         memory_config=None, **extra):
    """A tensor of ``fill_value`` (padding too); on ``device`` when one is given, else on the host."""
    kn.no_extra("full", extra)
    storage.check_layout(dtype, layout, "full")
    shape = tuple(int(s) for s in shape)
    padded = storage.padded_shape(shape, layout)
    values = np.full((1, 1) + padded, fill_value, dtype=np.float32 if dtype.is_float else dtype.numpy)
    if device is None:
        return Tensor._make(shape, dtype, layout, host=storage.round_to(values, dtype))
    out = kn.output(device, shape, dtype, layout, memory_config or DRAM_MEMORY_CONFIG)

    def run():
        kn.write_padded(out, values)

    device.launch("full", [], [out], run, (float(fill_value),))
    return out
