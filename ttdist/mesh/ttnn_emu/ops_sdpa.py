"""Paged KV cache writes and scaled dot-product attention (``ttnn/operations/transformer_golden.py``).

* ``experimental.paged_update_cache(cache [P, nkv, ps, hd], x [1, B, nkv(32), hd], update_idxs_tensor=[B],
  page_table=[B, W])``: user ``b`` at position ``p >= 0`` writes its ``nkv`` heads into row
  ``p % ps`` of page ``page_table[b, p // ps]``; ``p < 0`` skips the user. ``x`` must be
  FLOAT32 or BFLOAT16 and height-sharded; the op repacks into the cache's dtype (its doc).
* ``experimental.paged_fill_cache(cache, x [1, nkv, S, hd], page_table [B, W], batch_idx=b)``: a raw
  tile copy (its doc): every tile row of ``x``'s padded S goes to row ``t % ps`` of page
  ``page_table[b, t // ps]``, so rows past S carry ``x``'s padding; ``x.dtype`` must equal the cache's.
* ``transformer.scaled_dot_product_attention`` (``scaled_dot_product_attention_golden``): causal
  (or not) attention ``[b, nh, s, d]`` with KV heads repeated to the query heads.
* ``transformer.chunked_scaled_dot_product_attention`` (``chunked_scaled_dot_product_attention_golden``):
  Q ``[b, nh, s, d]`` at ``chunk_start_idx`` against the pages of ``page_table``, causal from there.
* ``transformer.paged_scaled_dot_product_attention_decode``
  (``paged_scaled_dot_product_attention_decode_golden``): Q ``[1, B, nh, d]``, user ``b`` attends
  positions ``0..cur_pos[b]`` of its pages; the output is ``[1, B, nh, d]`` like Q (ttnn 0.81.1 on
  mock chips reports Q's logical shape, padded to a tile of heads). A user at
  position -1 is skipped (its doc): its output rows are not written (poison; the golden writes zeros).

Every SDPA reads Q, K and V (or the caches) in BFLOAT16 / BFLOAT8_B / BFLOAT4_B only: ttnn 0.81.1
raises TT_FATAL for a FLOAT32 Q, K or V (``sdpa_device_operation.cpp``, ``sdpa_decode_device_operation.cpp``;
checked on mocked chips), so float32 activations are cast to bf16 before attention.

Softmax and products run in float32; outputs are rounded to Q's dtype.
"""

from __future__ import annotations

import numpy as np

from ttdist.mesh.ttnn_emu import kernel as kn
from ttdist.mesh.ttnn_emu import storage
from ttdist.mesh.ttnn_emu.types import TILE, DataType, Layout, TensorMemoryLayout

_SDPA_TYPES = frozenset({DataType.BFLOAT16, DataType.BFLOAT8_B, DataType.BFLOAT4_B})
_UPDATE_TYPES = frozenset({DataType.FLOAT32, DataType.BFLOAT16})


def _check_cache(op: str, cache) -> None:
    kn.require_layout(op, cache, Layout.TILE, "the cache")
    kn.require_rank(op, cache, 4, "the cache")


def _check_index(op: str, t, what: str) -> None:
    kn.require_dtype(op, t, kn.INDEX_TYPES, what)
    kn.require_layout(op, t, Layout.ROW_MAJOR, what)


def _page_rows(op: str, table: np.ndarray, pages: int) -> np.ndarray:
    """The page table rows as ints, every entry a page of the cache (the goldens raise otherwise)."""
    table = table.astype(np.int64)
    if table.size and (table.min() < 0 or table.max() >= pages):
        raise kn.fatal(op, f"page table entries must lie in [0, {pages}), got {table.min()}..{table.max()}")
    return table


def paged_update_cache(cache, x, *, update_idxs=None, update_idxs_tensor=None, page_table=None, batch_offset: int = 0,
                       compute_kernel_config=None, **extra):
    op = "paged_update_cache"
    kn.no_extra(op, dict(extra, update_idxs=update_idxs or None))
    if update_idxs_tensor is None or page_table is None:
        raise NotImplementedError("ttnn emulator: paged_update_cache is modeled with update_idxs_tensor and page_table")
    device = kn.device_of(op, cache, x, update_idxs_tensor, page_table)
    _check_cache(op, cache)
    kn.require_dtype(op, x, _UPDATE_TYPES)
    if x.memory_config().memory_layout is not TensorMemoryLayout.HEIGHT_SHARDED:
        raise kn.fatal(op, "the input must be height-sharded (one user per core)")
    _check_index(op, update_idxs_tensor, "update_idxs_tensor")
    _check_index(op, page_table, "page_table")
    _, batch, heads, hd = x.shape
    if (heads, hd) != (cache.shape[1], cache.shape[3]):
        raise kn.fatal(op, f"input heads {heads} x {hd} do not match the cache {list(cache.shape)}")
    page_size, pages = cache.shape[2], cache.shape[0]

    def run():
        pos = kn.read(update_idxs_tensor).astype(np.int64)[..., :batch]
        table = kn.read(page_table).astype(np.int64)
        rows = kn.read(x)[:, :, 0]  # [R', C', B, heads, hd]
        lead = np.broadcast_shapes(pos.shape[:2], table.shape[:2], rows.shape[:2], cache._buffer.data.shape[:2])
        pos = np.broadcast_to(pos, lead + pos.shape[2:])
        valid = pos >= 0
        logical = np.where(valid, pos, 0) // page_size
        table = np.broadcast_to(table, lead + table.shape[2:])[..., :batch, :]
        if (logical[valid] >= table.shape[-1]).any():
            raise kn.fatal(op, f"a position needs more than the page table's {table.shape[-1]} pages")
        page = _page_rows(op, np.take_along_axis(table, np.minimum(logical, table.shape[-1] - 1)[..., None], -1)[..., 0][valid], pages)
        rr, cc, bb = np.nonzero(valid)
        data = _writable(cache, lead)
        data[rr, cc, page, :, pos[valid] % page_size, :] = storage.round_to(np.broadcast_to(rows, lead + rows.shape[2:])[rr, cc, bb], cache.dtype)

    device.launch(op, [cache, x, update_idxs_tensor, page_table], [], run, (batch_offset,), writes=[cache])
    return cache   # in place; ttnn returns the cache it wrote


def _writable(cache, lead: tuple) -> np.ndarray:
    """The cache's buffer as a per-chip array it may be written in place (expanded once to ``lead`` chips)."""
    buf = cache._buffer
    if buf.data.shape[:2] != lead or buf.shared or not buf.data.flags.writeable:
        buf.data, buf.shared = np.broadcast_to(buf.data, lead + buf.data.shape[2:]).copy(), False
    return buf.data


def _at(v: np.ndarray, r: int, c: int) -> np.ndarray:
    return v[r % v.shape[0], c % v.shape[1]]


def paged_fill_cache(cache, x, page_table, *, batch_idx: int = 0, batch_idx_tensor=None, **extra):
    op = "paged_fill_cache"
    kn.no_extra(op, dict(extra, batch_idx_tensor=batch_idx_tensor))
    device = kn.device_of(op, cache, x, page_table)
    _check_cache(op, cache)
    kn.require_layout(op, x, Layout.TILE)
    if x.dtype is not cache.dtype:
        raise kn.fatal(op, f"input dtype {x.dtype.name} must match the cache's {cache.dtype.name} (a raw tile copy)")
    _check_index(op, page_table, "page_table")
    if x.shape[0] != 1 or (x.shape[1], x.shape[3]) != (cache.shape[1], cache.shape[3]):
        raise kn.fatal(op, f"input {list(x.shape)} must be [1, {cache.shape[1]}, S, {cache.shape[3]}]")
    page_size, pages = cache.shape[2], cache.shape[0]
    rows_padded = x.padded_shape[2]
    if page_size % TILE:
        raise kn.fatal(op, f"page size {page_size} must be whole tiles")

    def run():
        table = kn.read(page_table).astype(np.int64)
        src = kn.read_padded(x)[:, :, 0]  # [R', C', heads, S_padded, hd]
        lead = np.broadcast_shapes(table.shape[:2], src.shape[:2], cache._buffer.data.shape[:2])
        data = _writable(cache, lead)
        for r in range(lead[0]):
            for c in range(lead[1]):
                row = _at(table, r, c)[batch_idx]
                used = _page_rows(op, row[: -(-rows_padded // page_size)], pages)
                s = _at(src, r, c)
                for i, page in enumerate(used):
                    chunk = s[:, i * page_size: (i + 1) * page_size]
                    data[r, c, page, :, : chunk.shape[1]] = chunk

    device.launch(op, [cache, x, page_table], [], run, (batch_idx,), writes=[cache])
    return cache   # in place; ttnn returns the cache it wrote


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """Softmax attention ``q [.., nh, s, d]`` over ``k, v [.., nkv, t, d]`` (KV heads repeated), ``mask [s, t]``."""
    groups = q.shape[-3] // k.shape[-3]
    k = np.repeat(k, groups, axis=-3)
    v = np.repeat(v, groups, axis=-3)
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
    scores = np.where(mask, scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.matmul(weights, v)


def _causal(s: int, t: int, start: int) -> np.ndarray:
    return np.arange(t)[None, :] <= (start + np.arange(s))[:, None]


def _check_heads(op: str, q, kv_heads: int) -> None:
    if q.shape[1] % kv_heads:
        raise kn.fatal(op, f"{q.shape[1]} query heads do not group over {kv_heads} KV heads")


def scaled_dot_product_attention(q, k, v, *, attn_mask=None, is_causal: bool = True, scale=None, memory_config=None,
                                 program_config=None, compute_kernel_config=None, sliding_window_size=None, attention_sink=None,
                                 **extra):
    op = "scaled_dot_product_attention"
    kn.no_extra(op, dict(extra, attn_mask=attn_mask, sliding_window_size=sliding_window_size, attention_sink=attention_sink))
    device = kn.device_of(op, q, k, v)
    for t, name in ((q, "Q"), (k, "K"), (v, "V")):
        kn.require_dtype(op, t, _SDPA_TYPES, name)
        kn.require_layout(op, t, Layout.TILE, name)
        kn.require_rank(op, t, 4, name)
    _check_heads(op, q, k.shape[1])
    if k.shape[2] != q.shape[2] or v.shape[2] != q.shape[2]:
        raise kn.fatal(op, f"Q {list(q.shape)}, K {list(k.shape)} and V {list(v.shape)} must share the sequence length")
    out = kn.output(device, q.shape, q.dtype, Layout.TILE, memory_config or q.memory_config())
    s = q.shape[2]
    mask = _causal(s, s, 0) if is_causal else np.ones((s, s), bool)
    sc = q.shape[-1] ** -0.5 if scale is None else float(scale)

    def run():
        kn.write(out, _attend(kn.read(q).astype(np.float32, copy=False), kn.read(k).astype(np.float32, copy=False), kn.read(v).astype(np.float32, copy=False), mask, sc))

    device.launch(op, [q, k, v], [out], run, (is_causal, sc, repr(program_config)))
    return out


def _contiguous(cache: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``_paged_to_contiguous``: one chip's pages ``[P, nkv, ps, d]`` in ``table`` order -> ``[nkv, W ps, d]``."""
    pages = cache[table]  # [W, nkv, ps, d]
    return np.transpose(pages, (1, 0, 2, 3)).reshape(pages.shape[1], -1, pages.shape[3])


def chunked_scaled_dot_product_attention(q, k_cache, v_cache, page_table, chunk_start_idx=None, *, chunk_start_idx_tensor=None,
                                         scale=None, memory_config=None, program_config=None, compute_kernel_config=None,
                                         paged_cache_geometry=None, sliding_window_size=None, attention_sink=None, **extra):
    op = "chunked_scaled_dot_product_attention"
    kn.no_extra(op, dict(extra, chunk_start_idx_tensor=chunk_start_idx_tensor, paged_cache_geometry=paged_cache_geometry,
                         sliding_window_size=sliding_window_size, attention_sink=attention_sink))
    device = kn.device_of(op, q, k_cache, v_cache, page_table)
    kn.require_dtype(op, q, _SDPA_TYPES, "Q")
    kn.require_layout(op, q, Layout.TILE, "Q")
    kn.require_rank(op, q, 4, "Q")
    for cache, name in ((k_cache, "K"), (v_cache, "V")):
        _check_cache(op, cache)
        kn.require_dtype(op, cache, _SDPA_TYPES, name)
    _check_index(op, page_table, "page_table")
    _check_heads(op, q, k_cache.shape[1])
    start = int(chunk_start_idx or 0)
    if program_config is not None and (start % program_config.q_chunk_size or start % program_config.k_chunk_size):
        raise kn.fatal(op, f"chunk_start_idx {start} must be a multiple of q_chunk_size {program_config.q_chunk_size} "
                           f"and k_chunk_size {program_config.k_chunk_size}")
    out = kn.output(device, q.shape, q.dtype, Layout.TILE, memory_config or q.memory_config())
    s = q.shape[2]
    sc = q.shape[-1] ** -0.5 if scale is None else float(scale)
    pages = k_cache.shape[0]

    def run():
        table = kn.read(page_table).astype(np.int64)
        qv, kc, vc = kn.read(q).astype(np.float32, copy=False), kn.read(k_cache), kn.read(v_cache)
        lead = np.broadcast_shapes(table.shape[:2], qv.shape[:2], kc.shape[:2], vc.shape[:2])
        result = np.empty(lead + qv.shape[2:], np.float32)
        for r in range(lead[0]):
            for c in range(lead[1]):
                rows = _page_rows(op, _at(table, r, c), pages)
                for b in range(qv.shape[2]):
                    keys, values = (_contiguous(_at(cache, r, c), rows[b % rows.shape[0]]) for cache in (kc, vc))
                    t = min(keys.shape[1], start + s)
                    result[r, c, b] = _attend(_at(qv, r, c)[b], keys[:, :t], values[:, :t], _causal(s, t, start), sc)
        kn.write(out, result)

    device.launch(op, [q, k_cache, v_cache, page_table], [out], run, (start, sc, repr(program_config)))
    return out


def paged_scaled_dot_product_attention_decode(q, k_cache, v_cache, page_table_tensor=None, *, is_causal: bool = True, attn_mask=None,
                                              cur_pos_tensor=None, scale=None, program_config=None, compute_kernel_config=None,
                                              memory_config=None, sliding_window_size=None, attention_sink=None, **extra):
    op = "paged_scaled_dot_product_attention_decode"
    kn.no_extra(op, dict(extra, attn_mask=attn_mask, sliding_window_size=sliding_window_size, attention_sink=attention_sink))
    if not is_causal or cur_pos_tensor is None or page_table_tensor is None:
        raise NotImplementedError(f"ttnn emulator: {op} is modeled causal with cur_pos_tensor and page_table_tensor")
    device = kn.device_of(op, q, k_cache, v_cache, cur_pos_tensor, page_table_tensor)
    for t, name in ((q, "Q"), (k_cache, "K"), (v_cache, "V")):
        kn.require_dtype(op, t, _SDPA_TYPES, name)
        kn.require_layout(op, t, Layout.TILE, name)
        kn.require_rank(op, t, 4, name)
    _check_index(op, cur_pos_tensor, "cur_pos_tensor")
    _check_index(op, page_table_tensor, "page_table_tensor")
    _, batch, heads, hd = q.shape
    if heads % k_cache.shape[1] or hd != k_cache.shape[3]:
        raise kn.fatal(op, f"Q {list(q.shape)} does not match the cache {list(k_cache.shape)}")
    out = kn.output(device, q.shape, q.dtype, Layout.TILE, memory_config or q.memory_config())
    sc = hd ** -0.5 if scale is None else float(scale)
    pages, page_size = k_cache.shape[0], k_cache.shape[2]

    def run():
        pos = kn.read(cur_pos_tensor).astype(np.int64)[..., :batch]
        table = kn.read(page_table_tensor).astype(np.int64)[..., :batch, :]
        qv, kc, vc = kn.read(q).astype(np.float32, copy=False)[:, :, 0], kn.read(k_cache), kn.read(v_cache)
        lead = np.broadcast_shapes(pos.shape[:2], table.shape[:2], qv.shape[:2], kc.shape[:2], vc.shape[:2])
        result = _decode_all(op, *(np.broadcast_to(v, lead + v.shape[2:]) for v in (pos, table, qv, kc, vc)), sc, pages)
        kn.write(out, result[:, :, None])

    device.launch(op, [q, k_cache, v_cache, cur_pos_tensor, page_table_tensor], [out], run, (sc, repr(program_config)))
    return out


def _decode_all(op: str, pos, table, q, kc, vc, scale: float, pages: int) -> np.ndarray:
    """Every chip's decode attention at once: user ``b`` attends its first ``pos[b] + 1`` cached tokens
    through its page table row; a user at a negative position is skipped (its rows stay poison).
    ``pos [R, C, B]``, ``table [R, C, B, W]``, ``q [R, C, B, nh, d]``, caches ``[R, C, P, nkv, ps, d]``."""
    rows, cols, batch, heads, hd = q.shape
    kv_heads, page_size = kc.shape[3], kc.shape[4]
    active = pos >= 0
    need = -(-(int(pos.max()) + 1) // page_size) if active.any() else 0
    if need > table.shape[-1]:
        raise kn.fatal(op, f"position {int(pos.max())} needs {need} pages; the page table has {table.shape[-1]}")
    if not need:
        return storage.poisoned(q.shape, DataType.FLOAT32)
    used = np.arange(need) * page_size <= np.where(active, pos, -1)[..., None]  # [R, C, B, need]: pages a user reads
    _page_rows(op, table[..., :need][used], pages)
    ids = np.where(used, table[..., :need], 0)
    r, c = np.arange(rows)[:, None, None, None], np.arange(cols)[None, :, None, None]
    keys, values = (np.moveaxis(cache[r, c, ids], 3, 4).reshape(rows, cols, batch, kv_heads, need * page_size, hd)
                    for cache in (kc, vc))  # [R, C, B, nkv, T, d]
    groups = heads // kv_heads
    qg = q.reshape(rows, cols, batch, kv_heads, groups, hd)
    scores = np.matmul(qg, np.swapaxes(keys, -1, -2)) * scale  # [R, C, B, nkv, g, T]
    visible = np.arange(need * page_size) <= pos[..., None, None, None]
    scores = np.where(visible, scores, -np.inf)
    with np.errstate(invalid="ignore"):
        scores = scores - scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores)
        weights /= weights.sum(axis=-1, keepdims=True)
    out = np.matmul(weights, values).reshape(rows, cols, batch, heads, hd)
    return np.where(active[..., None, None], out, storage.settings.float_poison()).astype(np.float32)
