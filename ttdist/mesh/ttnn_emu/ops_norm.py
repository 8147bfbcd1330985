"""RMS norms and embedding (``ttnn/operations/normalization.py``, ``embedding.py``).

* ``rms_norm`` (golden ``_golden_function`` for ``ttnn.rms_norm``): ``x * rsqrt(mean(x^2) + eps)``
  over the logical width, in float32, times ``weight.reshape(-1)[:W]`` (the weight is read as
  a flat vector, e.g. row-major ``[1, 1, W/32, 32]``).
* ``rms_norm_pre_all_gather`` (``_golden_function_rms_norm_pre_all_gather``): a one-tile-wide
  stats tensor ``[..., 32]`` whose column 0 holds ``sum(x^2)``; the other 31 columns are not
  defined (poison here).
* ``rms_norm_post_all_gather`` (``_golden_function_rms_norm_post_all_gather``): the stats of
  ``n = stats.shape[-1] / 32`` devices, column 0 of each tile-wide block summed, divided by
  ``W * n``; ``x * rsqrt(that + eps) * weight``.
* ``embedding`` (golden: ``torch.nn.functional.embedding``): ids ``[B, T]`` (uint32 or int32,
  row-major) index rows of a row-major BFLOAT16 table ``[.., V, H]`` (the only table dtype ttnn
  0.81.1 takes: ``embedding_device_operation.cpp``, checked on mocked chips); the output ``[B, 1, T, H]`` in
  ``layout`` (default ROW_MAJOR) and ``dtype`` (default the table's). An id outside the
  table reads memory past it: poison.
"""

from __future__ import annotations

import numpy as np

from ttdist.mesh.ttnn_emu import kernel as kn
from ttdist.mesh.ttnn_emu import storage
from ttdist.mesh.ttnn_emu.types import TILE, DataType, Layout

_NORM_TYPES = frozenset({DataType.BFLOAT16, DataType.BFLOAT8_B, DataType.FLOAT32})


def _weight_row(op: str, weight, width: int):
    """A norm weight as the kernel reads it: a flat vector of at least ``width`` values."""
    if weight is None:
        return None
    if int(np.prod(weight.shape)) < width:
        raise kn.fatal(op, f"weight has {int(np.prod(weight.shape))} values for a width of {width}")
    if weight.layout is Layout.ROW_MAJOR and weight.shape[-1] != TILE:
        raise kn.fatal(op, f"a row-major weight must be [.., W/{TILE}, {TILE}], got {list(weight.shape)}")
    return weight


def _flat_weight(weight, width: int):
    v = kn.read(weight).astype(np.float32, copy=False)
    return v.reshape(v.shape[:2] + (-1,))[..., :width]


def _check_input(op: str, x, extra: dict) -> None:
    kn.no_extra(op, extra)
    kn.require_layout(op, x, Layout.TILE)
    kn.require_dtype(op, x, _NORM_TYPES)


def _expand(v: np.ndarray, rank: int) -> np.ndarray:
    """A per-chip vector ``[R', C', W]`` broadcastable against ``[R', C', *rows, W]``."""
    return v.reshape(v.shape[:2] + (1,) * (rank - 1) + v.shape[2:])


def rms_norm(x, *, epsilon: float = 1e-12, weight=None, bias=None, residual_input_tensor=None, memory_config=None,
             program_config=None, compute_kernel_config=None, **extra):
    op = "rms_norm"
    _check_input(op, x, dict(extra, bias=bias, residual_input_tensor=residual_input_tensor, program_config=program_config))
    width = x.shape[-1]
    weight = _weight_row(op, weight, width)
    device = kn.device_of(op, x, *([weight] if weight is not None else []))
    out = kn.output(device, x.shape, x.dtype, Layout.TILE, memory_config or x.memory_config())
    rank = len(x.shape)

    def run():
        v = kn.read(x).astype(np.float32, copy=False)
        y = v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + epsilon)
        if weight is not None:
            y = y * _expand(_flat_weight(weight, width), rank)
        kn.write(out, y)

    device.launch(op, [x] + ([weight] if weight is not None else []), [out], run, (epsilon,))
    return out


def rms_norm_pre_all_gather(x, *, dtype: DataType = DataType.BFLOAT16, residual_input_tensor=None, compute_kernel_config=None,
                            program_config=None, memory_config=None, **extra):
    op = "rms_norm_pre_all_gather"
    _check_input(op, x, dict(extra, residual_input_tensor=residual_input_tensor, program_config=program_config))
    device = kn.device_of(op, x)
    shape = list(x.shape[:-1]) + [TILE]
    out = kn.output(device, shape, dtype, Layout.TILE, memory_config or x.memory_config())

    def run():
        v = kn.read(x).astype(np.float32, copy=False)
        stats = storage.poisoned(v.shape[:-1] + (TILE,), DataType.FLOAT32)
        stats[..., 0] = np.sum(v * v, axis=-1)
        kn.write(out, stats)

    device.launch(op, [x], [out], run, (dtype,))
    return out


def rms_norm_post_all_gather(x, stats, *, epsilon: float = 1e-12, weight=None, bias=None, dtype=None, compute_kernel_config=None,
                             program_config=None, memory_config=None, **extra):
    op = "rms_norm_post_all_gather"
    _check_input(op, x, dict(extra, bias=bias, program_config=program_config))
    kn.require_layout(op, stats, Layout.TILE, "stats")
    if stats.shape[-1] % TILE or list(stats.shape[:-1]) != list(x.shape[:-1]):
        raise kn.fatal(op, f"stats {list(stats.shape)} must be [.., {TILE} x devices] over the rows of {list(x.shape)}")
    width = x.shape[-1]
    weight = _weight_row(op, weight, width)
    devices = stats.shape[-1] // TILE
    device = kn.device_of(op, x, stats, *([weight] if weight is not None else []))
    out = kn.output(device, x.shape, dtype or x.dtype, Layout.TILE, memory_config or x.memory_config())
    rank = len(x.shape)

    def run():
        v = kn.read(x).astype(np.float32, copy=False)
        s = kn.read(stats).astype(np.float32, copy=False)
        ex2 = np.sum(s[..., ::TILE], axis=-1, keepdims=True) / (width * devices)
        y = v / np.sqrt(ex2 + epsilon)
        if weight is not None:
            y = y * _expand(_flat_weight(weight, width), rank)
        kn.write(out, y)

    device.launch(op, [x, stats] + ([weight] if weight is not None else []), [out], run, (epsilon,))
    return out


def embedding(input_tensor, weight, *, memory_config=None, output_tensor=None, padding_idx=None, layout: Layout = Layout.ROW_MAJOR,
              embeddings_type=None, dtype=None, **extra):
    op = "embedding"
    kn.no_extra(op, dict(extra, output_tensor=output_tensor, padding_idx=padding_idx, embeddings_type=embeddings_type))
    device = kn.device_of(op, input_tensor, weight)
    kn.require_dtype(op, input_tensor, kn.INDEX_TYPES, "the index tensor")
    kn.require_layout(op, input_tensor, Layout.ROW_MAJOR, "the index tensor")
    kn.require_layout(op, weight, Layout.ROW_MAJOR, "the weight")
    kn.require_dtype(op, weight, {DataType.BFLOAT16}, "the weight")  # ttnn 0.81.1: TT_FATAL for a FLOAT32 table
    if len(input_tensor.shape) != 2:
        raise kn.fatal(op, f"the index tensor must be [batch, tokens], got {list(input_tensor.shape)}")
    batch, tokens = input_tensor.shape
    vocab, hidden = int(np.prod(weight.shape[:-1])), weight.shape[-1]
    out = kn.output(device, (batch, tokens, hidden), dtype or weight.dtype, layout, memory_config or input_tensor.memory_config())

    def run():
        ids = kn.read(input_tensor).astype(np.int64)
        table = kn.read(weight)
        table = table.reshape(table.shape[:2] + (vocab, hidden))
        valid = (ids >= 0) & (ids < vocab)
        safe = np.where(valid, ids, 0)
        lead = np.broadcast_shapes(ids.shape[:2], table.shape[:2])
        r, c = np.arange(lead[0])[:, None], np.arange(lead[1])[None, :]
        chip_ids = safe[r % ids.shape[0], c % ids.shape[1]]  # [R, C, B, T]
        rows = table[(r % table.shape[0])[..., None, None], (c % table.shape[1])[..., None, None], chip_ids]  # [R, C, B, T, H]
        ok = valid[r % ids.shape[0], c % ids.shape[1]]
        kn.write(out, np.where(ok[..., None], rows, storage.settings.float_poison()))

    device.launch(op, [input_tensor, weight], [out], run, (layout, out.dtype))
    return out
