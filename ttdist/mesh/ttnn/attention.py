"""Attention ops of the ttnn backend: heads, rotary, paged KV cache, SDPA.

Head tensors take one of two device layouts, chosen by ``create_qkv_heads`` from the row
count (decode batches never exceed one tile of rows):

* decode (T <= 32): ``nlp_create_qkv_heads_decode`` -> ``[1, T, heads(32), hd]``, height-
  sharded one user per core; ``rotary_embedding_hf`` in decode mode; ``paged_update_cache``
  and ``paged_scaled_dot_product_attention_decode`` with a current-position tensor;
  ``nlp_concat_heads_decode``.
* prefill: ``nlp_create_qkv_heads`` -> ``[1, heads, T, hd]``; ``rotary_embedding_hf``;
  ``paged_fill_cache``; causal ``scaled_dot_product_attention`` for a chunk at position 0,
  ``chunked_scaled_dot_product_attention`` through the page table after it;
  ``nlp_concat_heads``.

A short prefill chunk (T <= 32) gets decode-layout heads and is permuted into the prefill
layout by the first prefill-only op. Rotary uses ``rotary_embedding_hf`` because the
protocol's RoPE is Hugging Face rotate-half on unpermuted Q/K columns;
``rotary_embedding_llama`` rotates adjacent pairs within a tile and needs Meta-ordered
Q/K weight columns.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import numpy as np
import ttnn

from ttdist.mesh.backend import MeshError, PerDevice
from ttdist.mesh.placement import Placements, Shard, require_reduced
from ttdist.mesh.precision import DType
from ttdist.mesh.ttnn import configs as cfg
from ttdist.mesh.ttnn.tensor import CACHE, HEADS_DECODE, HEADS_PREFILL, ROWS, TtnnTensor
from ttdist.mesh.ttnn.device import COMPUTE_CQ, TRANSFER_CQ, order, transfer_cq


@runtime_checkable
class AttentionHost(Protocol):
    """What ``AttentionOps`` uses of the backend it is mixed into (``TtnnBackend``)."""

    grid: cfg.Grid
    activation_dtype: DType

    def _wrap(self, value: ttnn.Tensor, shape, placements: Placements, dtype: DType | None = None,
              name: str = "activations", kind: str = ROWS, heads: int = 0) -> TtnnTensor:
        """A device tensor as a ``TtnnTensor`` of ``kind`` with per-device ``shape``."""

    def _rows_value(self, t: TtnnTensor) -> ttnn.Tensor:
        """A token-major tensor's ``[1, 1, T, W]`` device value (placed now if pending)."""

    def _materialize(self, t: TtnnTensor, dtype: DType, layout, memory, shape4=None) -> ttnn.Tensor:
        """A pending tensor placed on the chips in ``dtype``, ``layout`` and ``memory`` (4D ``shape4``)."""

    def _ints(self, array: np.ndarray, dtype=ttnn.int32) -> ttnn.Tensor:
        """A small replicated integer tensor, uploaded for one op."""

    def _upload_pieces(self, pieces: np.ndarray, dtype: DType, layout, memory) -> ttnn.Tensor:
        """``[R', C', *piece4]``: one host buffer per chip from its own piece, onto its chip."""


class AttentionOps:
    """The attention ops of ``TtnnBackend`` (see ``AttentionHost`` for what they need from it)."""

    def create_qkv_heads(self, qkv, n_q: int, n_kv: int, head_dim: int):
        require_reduced("create_qkv_heads", qkv)
        want = (n_q + 2 * n_kv) * head_dim
        if qkv.ndim != 2 or qkv.shape[-1] != want:
            raise MeshError(f"create_qkv_heads: {qkv.name!r} has local shape {qkv.shape}, expected [T, {want}]")
        if head_dim % cfg.TILE:
            raise MeshError(f"create_qkv_heads: head_dim {head_dim} must be a multiple of {cfg.TILE} on ttnn")
        t = qkv.shape[0]
        xv = self._rows_value(qkv)
        if t <= cfg.DECODE_MAX_ROWS:
            if n_q > cfg.TILE:
                raise MeshError(f"create_qkv_heads: at most {cfg.TILE} query heads per device in decode, got {n_q}")
            q, k, v = ttnn.experimental.nlp_create_qkv_heads_decode(
                xv, num_heads=n_q, num_kv_heads=n_kv, memory_config=ttnn.L1_HEIGHT_SHARDED_MEMORY_CONFIG)
            kind = HEADS_DECODE
        else:
            q, k, v = ttnn.experimental.nlp_create_qkv_heads(
                xv, num_heads=n_q, num_kv_heads=n_kv, transpose_k_heads=False, memory_config=ttnn.DRAM_MEMORY_CONFIG)
            kind = HEADS_PREFILL
        return tuple(self._wrap(val, (t, n, head_dim), qkv.placements, kind=kind, heads=n)
                     for val, n in ((q, n_q), (k, n_kv), (v, n_kv)))

    def concat_heads(self, x):
        t, n, hd = x.shape
        if x.kind == HEADS_DECODE:
            xv = x.value
            if not xv.memory_config().is_sharded():
                xv = ttnn.to_memory_config(xv, cfg.heads_decode_memory(t, n, hd, self.grid))
            out = ttnn.experimental.nlp_concat_heads_decode(xv, num_heads=n)
            out = ttnn.sharded_to_interleaved(out, cfg.activation_memory(t, n * hd))
            if out.shape[2] != t:  # the op pads the batch to a tile of users
                out = ttnn.slice(out, [0, 0, 0, 0], [1, 1, t, n * hd])
        elif x.kind == HEADS_PREFILL:
            out = ttnn.experimental.nlp_concat_heads(x.value, memory_config=cfg.activation_memory(t, n * hd))
        else:
            raise MeshError(f"concat_heads: {x.name!r} is not a head tensor")
        return self._wrap(out, (t, n * hd), x.placements)

    def _prefill_heads(self, x) -> ttnn.Tensor:
        """``[1, heads, T, hd]`` for a head tensor of either layout."""
        if x.kind == HEADS_PREFILL:
            return x.value
        if x.kind != HEADS_DECODE:
            raise MeshError(f"{x.name!r} is not a head tensor")
        t, n, hd = x.shape
        flat = ttnn.to_memory_config(x.value, ttnn.DRAM_MEMORY_CONFIG)
        flat = ttnn.slice(flat, [0, 0, 0, 0], [1, t, n, hd])
        return ttnn.permute(flat, (0, 2, 1, 3))

    def _rope_table(self, table, decode: bool, rows: int, head_dim: int) -> ttnn.Tensor:
        """cos or sin ``[T, hd]`` as rotary_embedding_hf reads it, placed straight from the host when pending."""
        if table.shape != (rows, head_dim):
            raise MeshError(f"rotary: {table.name!r} has shape {table.shape}, expected ({rows}, {head_dim})")
        shape4 = (1, rows, 1, head_dim) if decode else (1, 1, rows, head_dim)
        memory = cfg.heads_decode_memory(rows, 1, head_dim, self.grid) if decode else ttnn.DRAM_MEMORY_CONFIG
        if table.pending is not None:
            if any(d is not None for d in getattr(table.pending, "mesh_dims", (None, None))):
                raise MeshError(f"rotary: {table.name!r} is a sharded host array; look sharded rows up in a resident "
                                f"table with embedding (as the model does)")
            table.kind = HEADS_DECODE if decode else ROWS
            return self._materialize(table, cfg.side_dtype(table.dtype, self.activation_dtype), ttnn.TILE_LAYOUT, memory, shape4)
        value = table.value
        if tuple(value.shape) != shape4:
            value = ttnn.reshape(ttnn.to_memory_config(value, ttnn.DRAM_MEMORY_CONFIG), shape4)
        return value if value.memory_config() == memory else ttnn.to_memory_config(value, memory)

    def rotary(self, x, cos, sin):
        require_reduced("rotary", x)
        if x.kind not in (HEADS_DECODE, HEADS_PREFILL):
            raise MeshError(f"rotary: {x.name!r} is not a head tensor from create_qkv_heads")
        t, _, hd = x.shape
        decode = x.kind == HEADS_DECODE
        c, s = self._rope_table(cos, decode, t, hd), self._rope_table(sin, decode, t, hd)
        out = ttnn.experimental.rotary_embedding_hf(x.value, c, s, is_decode_mode=decode)
        return self._wrap(out, x.shape, x.placements, kind=x.kind, heads=x.heads)

    # ------------------------------------------------------------------ paged KV cache
    def _page_rows(self, cache, page_table: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Validated page table rows (int32), as the simulator checks them."""
        pages = cache.shape[0]
        table = np.asarray(page_table, dtype=np.int64)
        rows = table.reshape(1, -1) if table.ndim == 1 else table
        need = int(positions.max()) // cache.shape[2] + 1 if positions.size else 0
        if need > rows.shape[1]:
            raise MeshError(f"page table has {rows.shape[1]} pages per user; position {int(positions.max())} needs {need}")
        used = rows[:, :need]
        if used.size and (used.max() >= pages or (table.ndim == 1 and used.min() < 0)):
            raise MeshError(f"page ids must lie in [0, {pages}), got {used.min()}..{used.max()}")
        return np.clip(rows, 0, pages - 1).astype(np.int32)

    def _prefill_table(self, cache, page_table, positions: np.ndarray, first: int = 0, last: int | None = None) -> ttnn.Tensor:
        """One user's page table ``[1, last - first]`` (int32) on the chips: the same ``[W]`` row on
        every chip, or each chip its own row of a ``PerDevice`` ``[R', C', W]`` (one host buffer per chip)."""
        if not isinstance(page_table, PerDevice):
            return self._ints(self._page_rows(cache, np.asarray(page_table).reshape(-1), positions)[:, first:last])
        pieces = np.asarray(page_table.array)
        if pieces.ndim != 3:
            raise MeshError(f"a per-device page table is [R', C', W], got {pieces.shape}")
        rows = np.stack([np.stack([self._page_rows(cache, pieces[r, c], positions)[:, first:last] for c in range(pieces.shape[1])])
                         for r in range(pieces.shape[0])])
        return self._upload_pieces(rows, DType.int32, ttnn.ROW_MAJOR_LAYOUT, ttnn.DRAM_MEMORY_CONFIG)

    @staticmethod
    def _sdpa_input(value: ttnn.Tensor) -> ttnn.Tensor:
        """SDPA reads Q, K and V in bf16 or block floats only: float32 activations go in as bf16."""
        return ttnn.typecast(value, ttnn.bfloat16) if value.dtype == ttnn.float32 else value

    def _as_cache_dtype(self, value: ttnn.Tensor, cache) -> ttnn.Tensor:
        want = cfg.ttnn_dtype(cache.dtype)
        return value if value.dtype == want else ttnn.typecast(value, want)

    def paged_fill_cache(self, cache, x, page_table, start_pos: int) -> None:
        require_reduced("paged_fill_cache", x)
        self._check_cache(cache, x)
        page_size = cache.shape[2]
        if start_pos % page_size:
            raise MeshError(f"paged_fill_cache: start_pos {start_pos} must be a multiple of the page size {page_size}")
        t = x.shape[0]
        positions = np.arange(start_pos, start_pos + t)
        first, last = start_pos // page_size, (start_pos + t - 1) // page_size + 1
        chunk = self._prefill_table(cache, page_table, positions, first, last)
        value = self._as_cache_dtype(self._prefill_heads(x), cache)
        ttnn.experimental.paged_fill_cache(cache.value, value, chunk, batch_idx=0)

    def _decode_indices(self, cache, positions, page_table):
        """Device position ``[B]`` and page-table ``[B, W]`` tensors: step inputs as they are (the
        model checked them when it wrote them), host arrays checked and uploaded."""
        if not isinstance(positions, np.ndarray) and hasattr(positions, "value"):
            return positions.value, page_table.value
        positions = np.asarray(positions, dtype=np.int64)
        rows = self._page_rows(cache, page_table, np.maximum(positions, 0))
        return self._ints(np.where(positions >= 0, positions, -1)), self._ints(rows)

    def paged_update_cache(self, cache, x, positions, page_table) -> None:
        require_reduced("paged_update_cache", x)
        self._check_cache(cache, x)
        if x.kind != HEADS_DECODE:
            raise MeshError(f"paged_update_cache: {x.name!r} has {x.shape[0]} users; a decode batch holds at most {cfg.TILE}")
        pos, table = self._decode_indices(cache, positions, page_table)
        ttnn.experimental.paged_update_cache(cache.value, x.value, update_idxs_tensor=pos, page_table=table)

    # ------------------------------------------------------------------ pages for the KV tiers
    def read_pages(self, cache, pages) -> np.ndarray:
        """Logical pages of a paged cache ``[n, kv_heads, page_size, hd]`` float32: each page sliced out
        of every chip's cache (``ttnn.slice``) and widened to float32 on the chips (bfloat8_b blocks
        read back exactly) on queue 0, then read back on the transfer queue once queue 0 has made
        them (``order``); the chips of the page's pool give it."""
        where = [self._page_at(cache, page) for page in pages]
        return np.stack([local[chip] for local, (chip, _) in zip(self._read_local_pages(cache, [i for _, i in where]), where)]) \
            if pages else np.zeros((0, *cache.shape[1:]), np.float32)

    def write_pages(self, cache, pages, data) -> None:
        """Write ``read_pages``' arrays into logical pages: each page's pools read (the chips of other
        pools rewrite what they held there), uploaded on the transfer queue, then, once queue 0 is
        ordered after the uploads, ``paged_fill_cache`` of one page per page on queue 0."""
        data = np.asarray(data, dtype=np.float32)
        where = [self._page_at(cache, page) for page in pages]
        wholes = self._read_local_pages(cache, [i for _, i in where])
        placed = []
        with self._on_transfer_queue():
            for whole, block, (chip, index) in zip(wholes, data, where):
                whole[chip] = block
                value = self.from_host(whole, cache.placements, dtype=cache.dtype, name="kv_page")
                value.kind = CACHE
                self._materialize(value, cache.dtype, ttnn.TILE_LAYOUT, ttnn.DRAM_MEMORY_CONFIG)
                placed.append((value, self._ints(np.array([[index]]))))
        order(self.mesh, TRANSFER_CQ, COMPUTE_CQ)
        for value, table in placed:
            ttnn.experimental.paged_fill_cache(cache.value, value.value, table, batch_idx=0)
            self.deallocate(value)

    def _page_at(self, cache, page: int) -> tuple[int, int]:
        """(index along the axis that shards pages, local page id) of logical page ``page``."""
        if cache.kind != CACHE:
            raise MeshError(f"{cache.name!r} is not a paged cache")
        local = cache.shape[0]
        axis = next((a for a in (0, 1) if cache.placements[a] == Shard(0)), None)
        chip, index = divmod(int(page), local) if axis is not None else (0, int(page))
        if not 0 <= index < local or chip >= (self.spec.shape[axis] if axis is not None else 1):
            raise MeshError(f"page {page} is not in paged cache {cache.name!r}")
        return chip, index

    def _read_local_pages(self, cache, indices: list[int]) -> list[np.ndarray]:
        """Local pages ``indices`` of every pool, each ``[pools, kv_heads, page_size, hd]`` float32:
        sliced and widened on queue 0, read back on the transfer queue after them."""
        parts = []
        for index in indices:
            value = ttnn.slice(cache.value, [index, 0, 0, 0], [index + 1, *cache.shape[1:]])
            if value.dtype != ttnn.float32:
                value = ttnn.typecast(value, ttnn.float32)
            parts.append(self._wrap(value, (1, *cache.shape[1:]), cache.placements, dtype=DType.float32, name="kv_page", kind=CACHE))
        order(self.mesh, COMPUTE_CQ, TRANSFER_CQ)
        try:
            with self._on_transfer_queue():
                return [np.array(self.to_host(part), dtype=np.float32) for part in parts]
        finally:
            for part in parts:
                self.deallocate(part)

    @contextmanager
    def _on_transfer_queue(self):
        """Uploads and readbacks in this block name the transfer queue (none on a one-queue mesh)."""
        self._transfer_cq = transfer_cq(self.mesh)
        try:
            yield
        finally:
            self._transfer_cq = None

    def _check_cache(self, cache, x) -> None:
        if cache.kind != CACHE or cache.ndim != 4:
            raise MeshError(f"{cache.name!r} is not a paged cache [pages, kv_heads, page_size, head_dim]")
        if cache.shape[2] % cfg.TILE:
            raise MeshError(f"paged cache {cache.name!r}: page size {cache.shape[2]} must be a multiple of {cfg.TILE} on ttnn")
        if x.shape[1:] != (cache.shape[1], cache.shape[3]):
            raise MeshError(f"{x.name!r} heads {x.shape[1:]} do not match cache {cache.name!r} {cache.shape}")

    # ------------------------------------------------------------------ SDPA
    def sdpa_prefill(self, q, k, v, k_cache, v_cache, page_table, start_pos: int, scale: float):
        require_reduced("sdpa_prefill", q, k, v)
        t, n, hd = q.shape
        qv = self._sdpa_input(self._prefill_heads(q))
        compute = cfg.precise_compute()
        if start_pos == 0:
            out = ttnn.transformer.scaled_dot_product_attention(
                qv, self._sdpa_input(self._prefill_heads(k)), self._sdpa_input(self._prefill_heads(v)), is_causal=True, scale=scale,
                program_config=cfg.sdpa_prefill_program(t, self.grid), compute_kernel_config=compute)
        else:
            page_size = k_cache.shape[2]
            table = self._prefill_table(k_cache, page_table, np.arange(start_pos + t))
            if not np.isclose(scale, hd ** -0.5, rtol=1e-6):  # the 0.81.1 binding rejects every scale argument
                raise MeshError(f"sdpa_prefill: chunked SDPA on ttnn only scales by 1/sqrt(head_dim), got {scale}")
            out = ttnn.transformer.chunked_scaled_dot_product_attention(
                qv, k_cache.value, v_cache.value, table, start_pos,
                program_config=cfg.sdpa_chunked_program(t, page_size, self.grid, start_pos), compute_kernel_config=compute)
        return self._wrap(out, (t, n, hd), q.placements, kind=HEADS_PREFILL, heads=n)

    def sdpa_decode(self, q, k_cache, v_cache, page_table, positions, scale: float):
        require_reduced("sdpa_decode", q)
        if q.kind != HEADS_DECODE:
            raise MeshError(f"sdpa_decode: {q.name!r} has {q.shape[0]} users; a decode batch holds at most {cfg.TILE}")
        pos, table = self._decode_indices(k_cache, positions, page_table)
        out = ttnn.transformer.paged_scaled_dot_product_attention_decode(
            self._sdpa_input(q.value), k_cache.value, v_cache.value, cur_pos_tensor=pos, page_table_tensor=table, scale=scale,
            program_config=cfg.sdpa_decode_program(k_cache.shape[2], self.grid),
            compute_kernel_config=cfg.precise_compute(), memory_config=ttnn.DRAM_MEMORY_CONFIG)
        return self._wrap(out, q.shape, q.placements, kind=HEADS_DECODE, heads=q.heads)
