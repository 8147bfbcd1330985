"""Head shuffles and rotary (``ttnn.experimental``; their docs in the wheel are the spec, and
``ttnn/operations/transformer.py`` holds the goldens of the plain versions).

* ``nlp_create_qkv_heads``: ``[B, 1, S, (nh + 2 nkv) hd]`` -> Q ``[B, nh, S, hd]``, K ``[B, nkv, S, hd]``
  (``[B, nkv, hd, S]`` with ``transpose_k_heads``), V ``[B, nkv, S, hd]`` (the split of
  ``split_query_key_value_and_split_heads``' golden: Q columns first, then K, then V).
* ``nlp_create_qkv_heads_decode``: ``[1, 1, B, (nh + 2 nkv) hd]`` (B <= 32) -> Q ``[1, B, nh, hd]``,
  K/V ``[1, B, nkv, hd]``; the heads dim is tile-padded to 32 and the padded heads are not
  written (poison); height-sharded, one user per core.
* ``nlp_concat_heads``: ``[B, nh, S, hd]`` -> ``[B, 1, S, nh hd]`` (``concatenate_heads``' golden).
* ``nlp_concat_heads_decode``: ``[1, B, nh(32), hd]`` height-sharded -> ``[1, 1, 32, num_heads hd]``
  width-sharded: the batch is a full tile of users; rows past B are not written (poison).
* ``rotary_embedding_hf``: ``x * cos + rotate_half(x) * sin`` (``rotary_embedding``'s golden,
  rotate-half of Hugging Face), cos/sin ``[1, 1, S, hd]`` (prefill) or ``[1, B, 1, hd]`` per user
  (decode, height-sharded); head_dim 32 or a multiple of 64; TILE device tensors.
"""

from __future__ import annotations

import numpy as np

from ttdist.mesh.ttnn_emu import kernel as kn
from ttdist.mesh.ttnn_emu import storage
from ttdist.mesh.ttnn_emu.types import (TILE, BufferType, CoreCoord, Layout, MemoryConfig, ShardOrientation, ShardSpec,
                                        TensorMemoryLayout, num_cores_to_corerangeset)


def _split(op: str, x, num_heads: int, num_kv_heads):
    nkv = num_heads if num_kv_heads is None else num_kv_heads
    width = x.shape[-1]
    if width % (num_heads + 2 * nkv):
        raise kn.fatal(op, f"width {width} does not split into {num_heads} + 2 x {nkv} heads")
    return nkv, width // (num_heads + 2 * nkv)


def _pieces(v: np.ndarray, nh: int, nkv: int, hd: int):
    """Q, K, V ``[..., heads, hd]`` from fused rows ``[..., (nh + 2 nkv) hd]``."""
    lead = v.shape[:-1]
    q = v[..., : nh * hd].reshape(lead + (nh, hd))
    kv = v[..., nh * hd:].reshape(lead + (2 * nkv, hd))
    return q, kv[..., :nkv, :], kv[..., nkv:, :]


def _heads_sharded(device, batch: int, hd: int) -> MemoryConfig:
    grid = device.compute_with_storage_grid_size()
    cores = num_cores_to_corerangeset(batch, CoreCoord(grid.x, grid.y), True)
    return MemoryConfig(TensorMemoryLayout.HEIGHT_SHARDED, BufferType.L1, ShardSpec(cores, (TILE, hd), ShardOrientation.ROW_MAJOR))


def nlp_create_qkv_heads(x, input_kv=None, *, num_heads: int, num_kv_heads=None, transpose_k_heads: bool = True,
                         memory_config=None, **extra):
    op = "nlp_create_qkv_heads"
    kn.no_extra(op, dict(extra, input_kv=input_kv))
    device = kn.device_of(op, x)
    kn.require_layout(op, x, Layout.TILE)
    kn.require_rank(op, x, 4)
    if x.shape[1] != 1:
        raise kn.fatal(op, f"the input must be [B, 1, S, width], got {list(x.shape)}")
    nkv, hd = _split(op, x, num_heads, num_kv_heads)
    if hd % TILE:
        raise kn.fatal(op, f"head_dim {hd} must be a multiple of {TILE}")
    b, _, s, _ = x.shape
    mem = memory_config or x.memory_config()
    q = kn.output(device, (b, num_heads, s, hd), x.dtype, Layout.TILE, mem)
    kshape = (b, nkv, hd, s) if transpose_k_heads else (b, nkv, s, hd)
    k = kn.output(device, kshape, x.dtype, Layout.TILE, mem)
    v = kn.output(device, (b, nkv, s, hd), x.dtype, Layout.TILE, mem)

    def run():
        qv, kv, vv = _pieces(kn.read(x)[:, :, :, 0], num_heads, nkv, hd)  # [R', C', B, S, heads, hd]
        kn.write(q, np.swapaxes(qv, 3, 4))
        kn.write(k, np.transpose(kv, (0, 1, 2, 4, 5, 3)) if transpose_k_heads else np.swapaxes(kv, 3, 4))
        kn.write(v, np.swapaxes(vv, 3, 4))

    device.launch(op, [x], [q, k, v], run, (num_heads, nkv, transpose_k_heads))
    return q, k, v


def nlp_create_qkv_heads_decode(x, *, num_heads: int, num_kv_heads=None, overlap_qk_coregrid=None, batch_offset=None,
                                slice_size=None, memory_config=None, **extra):
    op = "nlp_create_qkv_heads_decode"
    kn.no_extra(op, dict(extra, batch_offset=batch_offset, slice_size=slice_size))
    device = kn.device_of(op, x)
    kn.require_layout(op, x, Layout.TILE)
    kn.require_rank(op, x, 4)
    if x.shape[:2] != (1, 1) or x.shape[2] > TILE:
        raise kn.fatal(op, f"the input must be [1, 1, B <= {TILE}, width], got {list(x.shape)}")
    nkv, hd = _split(op, x, num_heads, num_kv_heads)
    if num_heads > TILE or nkv > TILE:
        raise kn.fatal(op, f"at most {TILE} heads, got {num_heads} query and {nkv} KV heads")
    batch = x.shape[2]
    if memory_config is not None and memory_config.memory_layout is not TensorMemoryLayout.HEIGHT_SHARDED:
        raise kn.fatal(op, "the outputs are height-sharded (one user per core)")
    mem = _heads_sharded(device, batch, hd)
    outs = [kn.output(device, (1, batch, n, hd), x.dtype, Layout.TILE, mem) for n in (num_heads, nkv, nkv)]

    def run():
        for out, piece in zip(outs, _pieces(kn.read(x)[:, :, 0, 0], num_heads, nkv, hd)):
            kn.write(out, piece[:, :, None])  # [R', C', 1, B, heads, hd]

    device.launch(op, [x], outs, run, (num_heads, nkv))
    return tuple(outs)


def nlp_concat_heads(x, *, memory_config=None, **extra):
    op = "nlp_concat_heads"
    kn.no_extra(op, extra)
    device = kn.device_of(op, x)
    kn.require_layout(op, x, Layout.TILE)
    kn.require_rank(op, x, 4)
    b, nh, s, hd = x.shape
    out = kn.output(device, (b, 1, s, nh * hd), x.dtype, Layout.TILE, memory_config or x.memory_config())

    def run():
        v = np.swapaxes(kn.read(x), 3, 4)  # [R', C', B, S, nh, hd]
        kn.write(out, v.reshape(v.shape[:3] + (1, s, nh * hd)))

    device.launch(op, [x], [out], run)
    return out


def nlp_concat_heads_decode(x, *, num_heads: int, memory_config=None, sub_core_grids=None, **extra):
    op = "nlp_concat_heads_decode"
    kn.no_extra(op, dict(extra, sub_core_grids=sub_core_grids))
    device = kn.device_of(op, x)
    kn.require_layout(op, x, Layout.TILE)
    kn.require_rank(op, x, 4)
    if x.memory_config().memory_layout is not TensorMemoryLayout.HEIGHT_SHARDED:
        raise kn.fatal(op, "the input must be height-sharded (one user per core)")
    _, batch, heads, hd = x.shape
    if num_heads > x.padded_shape[2]:
        raise kn.fatal(op, f"num_heads {num_heads} exceeds the {x.padded_shape[2]} padded heads")
    grid = device.compute_with_storage_grid_size()
    cores = num_cores_to_corerangeset(num_heads, CoreCoord(grid.x, grid.y), True)
    mem = memory_config or MemoryConfig(TensorMemoryLayout.WIDTH_SHARDED, BufferType.L1,
                                        ShardSpec(cores, (TILE, hd), ShardOrientation.ROW_MAJOR))
    out = kn.output(device, (1, 1, TILE, num_heads * hd), x.dtype, Layout.TILE, mem)

    def run():
        v = kn.read_padded(x)[:, :, 0, :batch, :num_heads, :hd]  # [R', C', B, heads, hd]
        rows = storage.poisoned(v.shape[:2] + (TILE, num_heads * hd), x.dtype)
        rows[:, :, :batch] = v.reshape(v.shape[:2] + (batch, num_heads * hd))
        kn.write(out, rows[:, :, None, None])

    device.launch(op, [x], [out], run, (num_heads,))
    return out


def _rotate_half(v: np.ndarray) -> np.ndarray:
    half = v.shape[-1] // 2
    return np.concatenate([-v[..., half:], v[..., :half]], axis=-1)


def rotary_embedding_hf(x, cos_cache, sin_cache, *, is_decode_mode: bool = False, memory_config=None, compute_kernel_config=None,
                        **extra):
    op = "rotary_embedding_hf"
    kn.no_extra(op, extra)
    device = kn.device_of(op, x, cos_cache, sin_cache)
    for t, name in ((x, "input"), (cos_cache, "cos"), (sin_cache, "sin")):
        kn.require_layout(op, t, Layout.TILE, name)
        kn.require_rank(op, t, 4, name)
    hd = x.padded_shape[-1]
    if not (hd == TILE or hd % (2 * TILE) == 0):
        raise kn.fatal(op, f"head_dim {hd} must be {TILE} or a multiple of {2 * TILE}")
    if is_decode_mode:
        want = (1, x.shape[1], 1, x.shape[-1])
        sharded = all(t.memory_config().memory_layout is TensorMemoryLayout.HEIGHT_SHARDED for t in (x, cos_cache, sin_cache))
        if not sharded:
            raise kn.fatal(op, "decode mode needs height-sharded input, cos and sin")
    else:
        want = (1, 1, x.shape[2], x.shape[-1])
    for t, name in ((cos_cache, "cos"), (sin_cache, "sin")):
        if tuple(t.shape) != want:
            raise kn.fatal(op, f"{name} must be {list(want)} for input {list(x.shape)}, got {list(t.shape)}")
    out = kn.output(device, x.shape, x.dtype, Layout.TILE, memory_config or x.memory_config())

    def run():
        v = kn.read(x).astype(np.float32, copy=False)
        kn.write(out, v * kn.read(cos_cache) + _rotate_half(v) * kn.read(sin_cache))

    device.launch(op, [x, cos_cache, sin_cache], [out], run, (is_decode_mode,))
    return out
