"""Attention ops of the simulator: heads, rotary, the paged KV cache and SDPA.

The cache is stored kv-head-major (``[R', C', kv, pages, page_size, hd]``) so a user's pages
gather into one contiguous ``[kv, L, hd]`` block per head. Index arguments (positions, page
tables) may differ per chip: the ops then run once per cell of chips sharing them (``_cells``).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from ttdist.mesh.backend import PerDevice, TransferLedger
from ttdist.mesh.errors import MeshError
from ttdist.mesh.placement import Placements, Replicate, Shard, normalize, require_reduced
from ttdist.mesh.precision import DType, quantize
from ttdist.mesh.sim.tensor import SimTensor


@runtime_checkable
class AttentionHost(Protocol):
    """What ``AttentionOps`` uses of the backend it is mixed into (``SimBackend``)."""

    device: torch.device
    transfers: TransferLedger

    def _wrap(self, data: torch.Tensor, placements: Placements, dtype: DType | None = None,
              name: str = "activations") -> SimTensor: ...

    def zeros(self, shape: Sequence[int], placements: Placements, *, dtype: DType = DType.bfloat16,
              name: str = "tensor") -> SimTensor: ...


class AttentionOps:
    """The attention ops of ``SimBackend`` (see ``AttentionHost``)."""

    def create_qkv_heads(self, qkv: SimTensor, n_q: int, n_kv: int, head_dim: int):
        require_reduced("create_qkv_heads", qkv)
        want = (n_q + 2 * n_kv) * head_dim
        if qkv.shape[-1] != want:
            raise MeshError(f"create_qkv_heads: {qkv.name!r} has width {qkv.shape[-1]}, expected {want}")
        heads = qkv.data.unflatten(-1, (n_q + 2 * n_kv, head_dim))
        q, k, v = heads.split([n_q, n_kv, n_kv], dim=-2)
        return (self._wrap(q, qkv.placements), self._wrap(k, qkv.placements), self._wrap(v, qkv.placements))

    def concat_heads(self, x: SimTensor) -> SimTensor:
        return self._wrap(x.data.flatten(-2), x.placements)

    def rotary(self, x: SimTensor, cos: SimTensor, sin: SimTensor) -> SimTensor:
        require_reduced("rotary", x)
        half = x.shape[-1] // 2
        rotated = torch.cat((-x.data[..., half:], x.data[..., :half]), dim=-1)
        c, s = cos.data.unsqueeze(-2), sin.data.unsqueeze(-2)
        return self._wrap(x.data * c + rotated * s, x.placements)

    def paged_cache(self, num_pages: int, n_kv: int, page_size: int, head_dim: int, placements: Placements,
                    *, dtype: DType = DType.bfloat16, name: str = "kv_cache") -> "SimTensor":
        """Stored kv-head-major (``[R', C', kv, pages, page_size, hd]``) so a user's pages gather
        into one contiguous ``[kv, L, hd]`` block per head; the protocol's logical layout is
        ``[pages, kv, page_size, hd]``: KV heads (dim 1) and pages (dim 0: one pool per chip) may be sharded."""
        placements = normalize(placements, 4)
        if any(p not in (Replicate(), Shard(0), Shard(1)) for p in placements):
            raise MeshError(f"paged cache {name!r}: pages (dim 0) and KV heads (dim 1) may be sharded, nothing else; got {placements}")
        stored = {Shard(0): Shard(1), Shard(1): Shard(0), Replicate(): Replicate()}
        t = self.zeros((n_kv, num_pages, page_size, head_dim), tuple(stored[p] for p in placements), dtype=dtype, name=name)
        t.placements = placements
        return t

    def read_pages(self, cache: SimTensor, pages: Sequence[int]) -> np.ndarray:
        """Logical pages ``pages`` of a paged cache as stored: ``[n, kv_heads, page_size, hd]`` (float32)."""
        blocks = [_heads_global(self._page_view(cache, k), cache.placements) for k in pages]
        out = torch.stack(blocks).cpu().numpy() if blocks else np.zeros((0,), np.float32)
        self.transfers.readback(out.nbytes)
        return out

    def write_pages(self, cache: SimTensor, pages: Sequence[int], data: np.ndarray) -> None:
        """Write ``read_pages``' arrays into logical pages ``pages`` on every chip that holds them."""
        data = np.asarray(data, dtype=np.float32)
        if data.shape[:1] != (len(pages),):
            raise MeshError(f"write_pages: {len(pages)} pages, got data of shape {data.shape}")
        self.transfers.upload(data.nbytes)
        head_axis = next((a for a in (0, 1) if cache.placements[a] == Shard(1)), None)
        for k, block in zip(pages, torch.as_tensor(data, device=self.device)):
            view = self._page_view(cache, k)             # [A0, A1, kv_local, ps, hd]
            if head_axis is not None:
                chips = view.shape[head_axis]
                block = block.unflatten(0, (chips, -1)).unsqueeze(1 - head_axis)
            view.copy_(block.expand_as(view))

    @staticmethod
    def _page_view(cache: SimTensor, page: int) -> torch.Tensor:
        """The chips' storage of logical page ``page``: ``[A0, A1, kv_local, ps, hd]`` (a view), the axis
        that shards pages narrowed to the chips holding it."""
        data = cache.data                                # [R', C', kv_local, pages_local, ps, hd]
        local = data.shape[3]
        page_axis = next((a for a in (0, 1) if cache.placements[a] == Shard(0)), None)
        chip, index = divmod(int(page), local) if page_axis is not None else (0, int(page))
        if not 0 <= index < local or (page_axis is not None and chip >= data.shape[page_axis]):
            raise MeshError(f"page {page} is not in paged cache {cache.name!r}")
        view = data[:, :, :, index]
        return view.narrow(page_axis, chip, 1) if page_axis is not None else view

    def _slots(self, num_pages: int, page_size: int, page_table: np.ndarray, positions: np.ndarray):
        positions = np.asarray(positions, dtype=np.int64)
        table = np.asarray(page_table, dtype=np.int64)
        logical = positions // page_size
        if table.ndim == 1:
            if logical.size and logical.max() >= table.shape[0]:
                raise MeshError(f"page table has {table.shape[0]} pages; position {positions.max()} needs {logical.max() + 1}")
            pages = table[logical]
        else:
            if logical.size and logical.max() >= table.shape[1]:
                raise MeshError(f"page table has {table.shape[1]} pages per user; position {positions.max()} needs more")
            pages = table[np.arange(len(positions)), logical]
        if pages.size and (pages.min() < 0 or pages.max() >= num_pages):
            raise MeshError(f"page ids must lie in [0, {num_pages}), got {pages.min()}..{pages.max()}")
        return torch.as_tensor(pages, device=self.device), torch.as_tensor(positions % page_size, device=self.device)

    @staticmethod
    def _write_slots(cache: torch.Tensor, dtype: DType, x: torch.Tensor, pages: torch.Tensor, offsets: torch.Tensor) -> None:
        """``x`` is ``[R', C', n, kv, hd]``; slot i of every head of ``cache`` (a cell's view of the
        cache data) gets ``x[..., i, head, :]``, rounded to the cache's dtype (a bf16 or bfp8 cache
        holds what the chip would)."""
        x = quantize(x, dtype)
        cache[:, :, :, pages, offsets, :] = x.expand(*cache.shape[:2], *x.shape[2:]).movedim(2, 3)

    def paged_fill_cache(self, cache: SimTensor, x: SimTensor, page_table, start_pos: int) -> None:
        require_reduced("paged_fill_cache", x)
        positions = np.arange(start_pos, start_pos + x.shape[0])
        for view, (table,), _ in self._cells(page_table):
            data = view(cache.data)
            self._write_slots(data, cache.dtype, view(x.data), *self._slots(data.shape[3], data.shape[4], table, positions))

    def paged_update_cache(self, cache: SimTensor, x: SimTensor, positions, page_table) -> None:
        require_reduced("paged_update_cache", x)
        for view, (pos, table), _ in self._cells(positions, page_table):
            pos = pos.astype(np.int64)
            live = np.nonzero(pos >= 0)[0]
            if live.size == 0:  # every slot of this cell idle
                continue
            data = view(cache.data)
            pages, offsets = self._slots(data.shape[3], data.shape[4], table[live], pos[live])
            self._write_slots(data, cache.dtype, view(x.data)[:, :, torch.as_tensor(live, device=self.device)], pages, offsets)

    def sdpa_prefill(self, q, k, v, k_cache, v_cache, page_table, start_pos: int, scale: float) -> SimTensor:
        require_reduced("sdpa_prefill", q, k, v)
        t = q.shape[0]
        if start_pos == 0:  # the chunk's own K/V: every chip alike
            return self._wrap(self._attend(q.data, k.data.movedim(-2, 2), v.data.movedim(-2, 2), start_pos, scale), q.placements)
        parts = []
        for view, (table,), cell in self._cells(page_table):
            kc, vc = view(k_cache.data), view(v_cache.data)
            pages, offsets = self._slots(kc.shape[3], kc.shape[4], table, np.arange(start_pos + t))
            parts.append((self._attend(view(q.data), kc[:, :, :, pages, offsets, :], vc[:, :, :, pages, offsets, :], start_pos, scale), cell))
        return self._wrap(self._join(parts), q.placements)

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start_pos: int, scale: float) -> torch.Tensor:
        """Causal GQA of ``q`` ``[R,C,T,nq,hd]`` over ``keys``/``values`` ``[R,C,kv,L,hd]``."""
        t, n_q, n_kv = q.shape[2], q.shape[3], keys.shape[2]
        qh = q.unflatten(-2, (n_kv, n_q // n_kv)).movedim(2, -2)  # [R,C,kv,g,T,hd]
        kh, vh = keys.unsqueeze(3), values.unsqueeze(3)  # [R,C,kv,1,L,hd]
        scores = torch.matmul(qh, kh.transpose(-1, -2)) * scale
        q_pos = torch.arange(start_pos, start_pos + t, device=self.device)
        k_pos = torch.arange(kh.shape[-2], device=self.device)
        scores = scores.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), vh)  # [R,C,kv,g,T,hd]
        return out.movedim(-2, 2).flatten(3, 4)

    def sdpa_decode(self, q, k_cache, v_cache, page_table, positions, scale: float) -> SimTensor:
        require_reduced("sdpa_decode", q)
        parts = [(self._attend_decode(view(q.data), view(k_cache.data), view(v_cache.data), table, pos, scale), cell)
                 for view, (table, pos), cell in self._cells(page_table, positions)]
        return self._wrap(self._join(parts), q.placements)

    def _attend_decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, table, positions, scale: float) -> torch.Tensor:
        """One query per user (``q`` ``[R,C,B,nq,hd]``) over its pages of one cell's caches."""
        positions = np.maximum(positions.astype(np.int64), 0)  # idle slots (-1) read position 0
        num_pages, page_size = k_cache.shape[3], k_cache.shape[4]
        length = int(positions.max()) + 1
        table = table.astype(np.int64)[:, : -(-length // page_size)].copy()
        table[table < 0] = 0
        if table.size and table.max() >= num_pages:
            raise MeshError(f"page ids must lie in [0, {num_pages}), got up to {table.max()}")
        pages = torch.as_tensor(table, device=self.device)
        batch, n_pages = pages.shape
        # [R,C,kv,B*P,ps,hd] -> [R,C,kv,B,P*ps,hd]: one contiguous gather per cache, no copy after
        keys, values = (
            c.index_select(3, pages.flatten()).reshape(*c.shape[:3], batch, n_pages * page_size, -1)
            for c in (k_cache, v_cache)
        )
        n_q, n_kv = q.shape[3], keys.shape[2]
        qh = q.unflatten(-2, (n_kv, n_q // n_kv)).movedim(2, 3)  # [R,C,kv,B,g,hd]
        scores = torch.matmul(qh, keys.transpose(-1, -2)) * scale  # [R,C,kv,B,g,L]
        k_pos = torch.arange(keys.shape[-2], device=self.device)
        mask = k_pos[None, :] > torch.as_tensor(positions, device=self.device)[:, None]  # [B, L]
        scores = scores.masked_fill(mask[:, None, :], float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), values).movedim(2, 3)  # [R,C,B,kv,g,hd]
        return out.flatten(3, 4)

    # ------------------------------------------------------------------ index arguments per chip
    def _per_device(self, x) -> np.ndarray:
        """An index argument as ``[R'', C'', *local]``: an input tensor's mesh data, a ``PerDevice``
        array, or a host array every chip shares."""
        if isinstance(x, SimTensor):
            return x.data.cpu().numpy()
        if isinstance(x, PerDevice):
            return np.asarray(x.array)
        return np.asarray(x)[None, None]

    def _cells(self, *index):
        """Split the mesh into the cells over which the index arguments differ (one cell when every
        chip shares them): ``(views, arrays)`` per cell, where ``views(data)`` is that cell's part of a
        ``[R', C', ...]`` tensor (a shared axis stays shared) and ``arrays`` its index arrays."""
        arrays = [self._per_device(a) for a in index]
        rows, cols = max(a.shape[0] for a in arrays), max(a.shape[1] for a in arrays)
        for r in range(rows):
            for c in range(cols):
                def views(data, r=r, c=c):
                    rs = slice(None) if rows == 1 or data.shape[0] == 1 else slice(r, r + 1)
                    cs = slice(None) if cols == 1 or data.shape[1] == 1 else slice(c, c + 1)
                    return data[rs, cs]
                yield views, [a[r % a.shape[0], c % a.shape[1]] for a in arrays], (r, c, rows, cols)

    @staticmethod
    def _join(parts: list[tuple[torch.Tensor, tuple]]) -> torch.Tensor:
        """Cell results back into one ``[R', C', ...]`` tensor (cells in row-major order)."""
        rows, cols = parts[0][1][2], parts[0][1][3]
        if rows * cols == 1:
            return parts[0][0]
        grid = [torch.cat([parts[r * cols + c][0] for c in range(cols)], dim=1) if cols > 1 else parts[r][0] for r in range(rows)]
        return torch.cat(grid, dim=0) if rows > 1 else grid[0]


def _heads_global(block: torch.Tensor, placements: Placements) -> torch.Tensor:
    """``[A0, A1, kv_local, ps, hd]`` -> ``[kv, ps, hd]``: the KV heads of the chips that split them, in order."""
    head_axis = next((a for a in (0, 1) if placements[a] == Shard(1)), None)
    if head_axis is None:
        return block[0, 0]
    return block.narrow(1 - head_axis, 0, 1).squeeze(1 - head_axis).flatten(0, 1)
