"""The torch mesh simulator: every chip's data, exact collective semantics, one batched op.

A ``SimTensor`` is ONE torch tensor ``[R', C', *local]`` plus a placement per mesh axis.
A mesh axis whose placement is ``Replicate`` is stored once (``R'`` or ``C'`` is 1) and
broadcast: every device along it holds the same data by definition, so per-device math is
one broadcasting torch op over the mesh dims and replicated work is not repeated. Sharded
and partial axes are stored in full (``R' = R``). ``device_data()`` expands to the full
``[R, C, *local]`` view of what each chip holds.

Collectives produce exactly the per-device data ttnn produces; each records the bytes it
moved (``ttdist.mesh.accounting``). Every tensor counts its tile-padded bytes against each
chip's DRAM while it lives.
"""

from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np
import torch

from ttdist.mesh.accounting import CclLedger, CclRecord, DramLedger, all_gather_bytes, all_reduce_bytes, reduce_scatter_bytes, tile_padded_bytes
from ttdist.mesh import sampling
from ttdist.mesh.backend import MeshError, PerDevice, TransferLedger
from ttdist.mesh.placement import (Partial, Placements, Replicate, Shard, embedding_placement, matmul_placement, multiply_placement, normalize, normalize_dim,
                                   require_reduced, with_axis)
from ttdist.mesh.precision import DType, quantize
from ttdist.mesh.spec import MeshSpec, Topology

class SimTensor:
    __slots__ = ("data", "placements", "dtype", "name", "_free", "__weakref__")

    def __init__(self, backend: "SimBackend", data: torch.Tensor, placements: Placements, dtype: DType, name: str):
        self.data = data
        self.placements = placements
        self.dtype = dtype
        self.name = name
        nbytes = tile_padded_bytes(data.shape[2:], dtype)
        backend.dram.allocate(name, nbytes)
        self._free = weakref.finalize(self, backend.dram.free, name, nbytes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[2:])

    @property
    def ndim(self) -> int:
        return self.data.dim() - 2

    def __repr__(self) -> str:
        return f"SimTensor({self.name!r}, local={self.shape}, {self.placements}, {self.dtype.value})"


class SimBackend:
    """The ``Backend`` protocol on torch; CPU by default, CUDA when asked and present."""

    name = "sim"
    can_trace = False

    def __init__(self, spec: MeshSpec, *, device: str = "cpu", activation_dtype: DType = DType.bfloat16):
        self.spec = spec
        self.device = torch.device(device)
        self.activation_dtype = activation_dtype
        self.ccl = CclLedger()
        self.dram = DramLedger(spec)
        self.transfers = TransferLedger()

    # ------------------------------------------------------------------ host <-> mesh
    def _wrap(self, data: torch.Tensor, placements: Placements, dtype: DType | None = None, name: str = "activations"):
        return SimTensor(self, data, placements, dtype or self.activation_dtype, name)

    def _host(self, array) -> torch.Tensor:
        t = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
        self.transfers.upload(t.numel() * t.element_size())
        if t.is_floating_point():
            t = t.float()
        return t.to(self.device)

    def from_host(self, array, placements: Placements, *, dtype: DType = DType.bfloat16, name: str = "tensor") -> SimTensor:
        data, placements = self._placed(self._host(array), placements, dtype, name)
        return SimTensor(self, data, placements, dtype, name)

    def _placed(self, data: torch.Tensor, placements: Placements, dtype: DType, name: str):
        """A global host tensor as the ``[R', C', *local]`` data the placements give, and them normalized."""
        placements = normalize(placements, data.dim())
        if data.is_floating_point():
            data = quantize(data, dtype)
        data = data.unsqueeze(0).unsqueeze(0)
        for axis in (0, 1):
            n = self.spec.shape[axis]
            p = placements[axis]
            if isinstance(p, Partial):
                raise MeshError(f"tensor {name!r}: a host array cannot be placed as Partial")
            if isinstance(p, Shard) and n > 1:
                data = self._split(data, axis, p.dim, n, name)
        return data.contiguous(), placements

    def _split(self, data: torch.Tensor, axis: int, dim: int, n: int, name: str) -> torch.Tensor:
        """Cut local ``dim`` into ``n`` pieces laid along mesh ``axis`` (which has size 1)."""
        size = data.shape[2 + dim]
        if size % n:
            raise MeshError(f"tensor {name!r}: dim {dim} of size {size} does not split evenly over {n} devices on axis {axis}")
        # [1, C', .., n, size/n, ..] -> n pieces along the mesh axis, dropping its old size-1 dim
        pieces = data.unflatten(2 + dim, (n, size // n)).movedim(2 + dim, axis)
        return pieces.squeeze(axis + 1)

    def from_host_per_device(self, array, placements: Placements, *, dtype: DType = DType.bfloat16, name: str = "tensor") -> SimTensor:
        data = self._host(array)
        if data.dim() < 2:
            raise MeshError(f"tensor {name!r}: per-device arrays start with the mesh dims [R, C]")
        placements = normalize(placements, data.dim() - 2)
        for axis in (0, 1):
            n, got = self.spec.shape[axis], data.shape[axis]
            if got not in (1, n):
                raise MeshError(f"tensor {name!r}: mesh dim {axis} has {got} entries for {n} devices")
            if isinstance(placements[axis], Replicate) and got > 1:
                first = data.narrow(axis, 0, 1)
                if not torch.equal(data, first.expand_as(data)):
                    raise MeshError(f"tensor {name!r}: declared Replicate on axis {axis} but the devices differ")
                data = first
            elif not isinstance(placements[axis], Replicate) and got == 1 and n > 1:
                data = data.expand(*[n if a == axis else -1 for a in range(data.dim())]).contiguous()
        if data.is_floating_point():
            data = quantize(data, dtype)
        return SimTensor(self, data, placements, dtype, name)

    def zeros(self, shape: Sequence[int], placements: Placements, *, dtype: DType = DType.bfloat16, name: str = "tensor") -> SimTensor:
        placements = normalize(placements, len(shape))
        local = list(shape)
        mesh = []
        for axis in (0, 1):
            n = self.spec.shape[axis]
            p = placements[axis]
            if isinstance(p, Shard):
                if local[p.dim] % n:
                    raise MeshError(f"tensor {name!r}: dim {p.dim} of size {local[p.dim]} does not split evenly over {n} devices")
                local[p.dim] //= n
            mesh.append(1 if isinstance(p, Replicate) else n)
        data = torch.zeros(*mesh, *local, device=self.device)
        return SimTensor(self, data, placements, dtype, name)

    def device_data(self, t: SimTensor) -> torch.Tensor:
        """What every chip holds: ``[R, C, *local]`` (a broadcast view for replicated axes)."""
        return t.data.expand(*self.spec.shape, *t.shape)

    def to_host(self, t: SimTensor) -> np.ndarray:
        data = t.data
        for axis in (1, 0):
            p = t.placements[axis]
            if isinstance(p, Shard):
                data = data.movedim(axis, 2 + p.dim - 1).flatten(1 + p.dim, 2 + p.dim)
                data = data.unsqueeze(axis)
            elif isinstance(p, Partial):
                data = data.sum(dim=axis, keepdim=True)
            else:
                data = data.narrow(axis, 0, 1)
        self.transfers.readback(data[0, 0].numel() * data.element_size())
        return data[0, 0].cpu().numpy()

    def deallocate(self, t: SimTensor) -> None:
        t._free()
        t.data = torch.empty(0)

    # ------------------------------------------------------------------ persistent step inputs
    def input_tensor(self, array, placements: Placements = (Replicate(), Replicate()), *, name: str = "input") -> SimTensor:
        array = np.asarray(array)
        dtype = DType.int32 if array.dtype.kind in "iub" else DType.float32
        return self.from_host(array, placements, dtype=dtype, name=name)

    def write_input(self, t: SimTensor, array) -> None:
        data, _ = self._placed(self._host(np.asarray(array)), t.placements, t.dtype, t.name)
        if data.shape != t.data.shape:
            raise MeshError(f"write_input: {t.name!r} holds {tuple(t.data.shape)} per mesh, got {tuple(data.shape)} from the host")
        t.data.copy_(data.to(t.data.dtype))

    def read_ids(self, t: SimTensor) -> np.ndarray:
        rows = t.data[0, 0]
        self.transfers.readback(rows.numel() * 4)
        return rows.cpu().numpy().astype(np.int64)

    def _index(self, x) -> np.ndarray:
        """A host view of index arguments given as an array or an input tensor."""
        return x.data[0, 0].cpu().numpy() if isinstance(x, SimTensor) else np.asarray(x)

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

    # ------------------------------------------------------------------ checks


    # ------------------------------------------------------------------ compute
    def linear(self, x: SimTensor, w: SimTensor, *, out_dtype: DType | None = None) -> SimTensor:
        if w.ndim != 2 or x.ndim < 2 or x.shape[-1] != w.shape[0]:
            raise MeshError(f"linear: {x.name!r} local {x.shape} does not match weight {w.name!r} local {w.shape}")
        placements = (matmul_placement(x, w, 0), matmul_placement(x, w, 1))
        return self._wrap(_batched_matmul(x.data, w.data, x.ndim), placements, out_dtype)

    def multiply(self, x: SimTensor, factor: SimTensor) -> SimTensor:
        placements = multiply_placement(x, factor)
        return self._wrap(x.data * _per_row(factor, x.ndim), placements, x.dtype)

    def add(self, a: SimTensor, b: SimTensor) -> SimTensor:
        if a.placements != b.placements:
            raise MeshError(f"add: {a.name!r} is {a.placements} but {b.name!r} is {b.placements}")
        return self._wrap(a.data + b.data, a.placements)

    def silu_mul(self, gate: SimTensor, up: SimTensor) -> SimTensor:
        require_reduced("silu_mul", gate, up)
        if gate.placements != up.placements:
            raise MeshError(f"silu_mul: {gate.name!r} is {gate.placements} but {up.name!r} is {up.placements}")
        return self._wrap(torch.nn.functional.silu(gate.data) * up.data, gate.placements)

    def embedding(self, ids, table: SimTensor) -> SimTensor:
        for axis, p in enumerate(table.placements):
            if isinstance(p, Shard) and p.dim == 0:
                raise MeshError(f"embedding: table {table.name!r} must not be sharded by vocabulary (axis {axis})")
        require_reduced("embedding", table)
        placements = embedding_placement(ids, table)
        vocab = table.shape[0]
        if isinstance(ids, SimTensor) and ids.data.shape[:2] != (1, 1):  # ids differ per chip: [R'', C'', T]
            idx = ids.data.reshape(*ids.data.shape[:2], -1).long()
            rows = table.data.expand(*idx.shape[:2], *table.data.shape[2:])
            picked = torch.gather(rows, 2, idx.unsqueeze(-1).expand(*idx.shape, rows.shape[-1]))
        else:
            idx = ids.data[0, 0].reshape(-1).long() if isinstance(ids, SimTensor) else torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)
            picked = None
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab):
            raise MeshError(f"embedding: token ids must lie in [0, {vocab}), got {int(idx.min())}..{int(idx.max())}")
        return self._wrap(table.data.index_select(2, idx) if picked is None else picked, placements)

    def rms_norm(self, x: SimTensor, weight: SimTensor, *, eps: float, width: int) -> SimTensor:
        require_reduced("rms_norm", x)
        for axis, p in enumerate(x.placements):
            if p == Shard(x.ndim - 1) and self.spec.shape[axis] > 1:
                raise MeshError(f"rms_norm: {x.name!r} is width-fractured on axis {axis}; use the distributed norm")
        ms = x.data.pow(2).sum(-1, keepdim=True) / width
        return self._wrap(x.data * torch.rsqrt(ms + eps) * _per_row(weight, x.ndim), x.placements)

    def rms_norm_pre_all_gather(self, x: SimTensor) -> SimTensor:
        require_reduced("rms_norm_pre_all_gather", x)
        return self._wrap(x.data.pow(2).sum(-1, keepdim=True), x.placements, DType.float32)

    def rms_norm_post_all_gather(self, x: SimTensor, stats: SimTensor, weight: SimTensor, *, eps: float, width: int) -> SimTensor:
        require_reduced("rms_norm_post_all_gather", x, stats)
        ms = stats.data.sum(-1, keepdim=True) / width
        return self._wrap(x.data * torch.rsqrt(ms + eps) * _per_row(weight, x.ndim), x.placements)

    def slice_rows(self, x: SimTensor, start: int, end: int) -> SimTensor:
        for axis, p in enumerate(x.placements):
            if p == Shard(0) and self.spec.shape[axis] > 1:
                raise MeshError(f"slice_rows: {x.name!r} is sharded by rows on axis {axis}")
        return self._wrap(x.data[:, :, start:end], x.placements, x.dtype)

    def concat(self, parts, dim: int = -1) -> SimTensor:
        first = parts[0]
        dim = normalize_dim(dim, first.ndim, "concat")
        for p in parts:
            if p.placements != first.placements:
                raise MeshError(f"concat: {p.name!r} is {p.placements} but {first.name!r} is {first.placements}")
        return self._wrap(torch.cat([p.data for p in parts], dim=2 + dim), first.placements, first.dtype)

    # ------------------------------------------------------------------ attention
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

    # ------------------------------------------------------------------ collectives
    def _record(self, op: str, axis: int, topology: Topology | None, full_elems: int, dtype: DType, cost) -> Topology:
        topo = topology or self.spec.topology[axis]
        n = self.spec.shape[axis]
        full = full_elems * dtype.bytes_per_element
        self.ccl.record(CclRecord(op, axis, n, topo, full, cost(full, n, topo)))
        return topo

    def all_gather(self, x: SimTensor, dim: int, cluster_axis: int | None = None, *, topology=None, num_links=None) -> SimTensor:
        axis = self.spec.resolve_axis("all_gather", cluster_axis)
        dim = normalize_dim(dim, x.ndim, "all_gather")
        require_reduced("all_gather", x)
        p = x.placements[axis]
        n = self.spec.shape[axis]
        self._record("all_gather", axis, topology, x.data[0, 0].numel() * n, x.dtype, all_gather_bytes)
        if n == 1:
            return self._wrap(x.data, with_axis(x.placements, axis, Replicate()), x.dtype)
        if isinstance(p, Replicate):
            out = torch.cat([x.data] * n, dim=2 + dim)
        else:
            out = x.data.movedim(axis, 1 + dim).flatten(1 + dim, 2 + dim).unsqueeze(axis)
        return self._wrap(out, with_axis(x.placements, axis, Replicate()), x.dtype)

    def reduce_scatter(self, x: SimTensor, dim: int, cluster_axis: int | None = None, *, topology=None, num_links=None) -> SimTensor:
        axis = self.spec.resolve_axis("reduce_scatter", cluster_axis)
        dim = normalize_dim(dim, x.ndim, "reduce_scatter")
        n = self.spec.shape[axis]
        size = x.shape[dim]
        if size % n:
            raise MeshError(f"reduce_scatter: dim {dim} of {x.name!r} has size {size}, not divisible by the {n} devices on axis {axis}")
        self._record("reduce_scatter", axis, topology, x.data[0, 0].numel(), x.dtype, reduce_scatter_bytes)
        full = x.data.expand(*[n if a == axis else -1 for a in range(x.data.dim())])
        summed = full.sum(dim=axis)  # [M, *local]
        out = summed.unflatten(1 + dim, (n, size // n)).movedim(1 + dim, axis)
        return self._wrap(out, with_axis(x.placements, axis, Shard(dim)), x.dtype)

    def all_reduce(self, x: SimTensor, cluster_axis: int | None = None, *, topology=None, num_links=None) -> SimTensor:
        axis = self.spec.resolve_axis("all_reduce", cluster_axis)
        n = self.spec.shape[axis]
        self._record("all_reduce", axis, topology, x.data[0, 0].numel(), x.dtype, all_reduce_bytes)
        if isinstance(x.placements[axis], Replicate):
            out = x.data * n
        else:
            out = x.data.sum(dim=axis, keepdim=True)
        return self._wrap(out, with_axis(x.placements, axis, Replicate()), x.dtype)

    # ------------------------------------------------------------------ traces
    def capture(self, step):
        raise MeshError("the simulator does not capture traces: run decode steps eagerly (trace_decode=False)")

    replay = release = capture

    # ------------------------------------------------------------------ sampling
    def sample(self, logits: SimTensor, vocab_size: int, params: SimTensor, cluster_axis: int) -> SimTensor:
        """``ttdist.mesh.sampling``'s algorithm: local top-k per chip, all-gather, the draw."""
        require_reduced("sample", logits)
        axis = self.spec.resolve_axis("sample", cluster_axis)
        for other, p in enumerate(logits.placements):
            if other != axis and isinstance(p, Shard) and self.spec.shape[other] > 1:
                raise MeshError(f"sample: logits {logits.name!r} are sharded on axis {other}, not only the vocab axis {axis}")
        width = logits.shape[-1]
        sharded = isinstance(logits.placements[axis], Shard) and self.spec.shape[axis] > 1
        values, index = logits.data.topk(sampling.local_k(width, width * (self.spec.shape[axis] if sharded else 1), vocab_size), dim=-1)
        offset = torch.zeros(1, device=self.device)
        if sharded:
            shape = [1, 1, 1, 1]
            shape[axis] = self.spec.shape[axis]
            offset = (torch.arange(self.spec.shape[axis], device=self.device) * width).float().reshape(shape)
        ids = index.float() + offset
        values = torch.where(ids >= vocab_size, torch.full_like(values, sampling.MASK), values.float())
        gathered = [self.all_gather(self._wrap(t, logits.placements, DType.float32, "candidates"), dim=-1, cluster_axis=axis)
                    for t in (values, ids)]
        ids = _draw(gathered[0].data, gathered[1].data, params.data)
        return self._wrap(ids.round().to(torch.int32), gathered[0].placements, DType.int32, "token_ids")


def _draw(v: torch.Tensor, ids: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """``sampling.draw`` in torch over ``[R', C', B, M]`` candidates; ``params`` is ``[1, 1, B, 4]``."""
    t, k, p, u = (params[..., i : i + 1].float() for i in range(sampling.PARAMS))
    top = min(sampling.K, v.shape[-1])
    s = v.topk(top, dim=-1).values
    rank = torch.arange(top, device=v.device, dtype=torch.float32)
    in_k = rank < k
    z0 = s[..., :1] / t
    e = torch.exp(s / t - z0) * in_k
    prob = e / e.sum(-1, keepdim=True)
    cum = prob.cumsum(-1)
    kept = in_k & ((cum - prob) < p)
    last = kept.sum(-1, keepdim=True) - 1
    threshold = (s * (rank == last)).sum(-1, keepdim=True)
    weight = torch.exp(v / t - z0) * (v >= threshold)
    cdf = weight.cumsum(-1)
    hit = (cdf > u * cdf[..., -1:]).float()
    first = hit * (hit.cumsum(-1) == 1)
    return (first * ids).sum(-1)


def _per_row(w: SimTensor, ndim: int) -> torch.Tensor:
    """A ``[R', C', width]`` weight viewed to broadcast over ``ndim``-d local activations."""
    return w.data.reshape(w.data.shape[0], w.data.shape[1], *([1] * (ndim - 1)), w.shape[-1])


def _batched_matmul(x: torch.Tensor, w: torch.Tensor, x_ndim: int) -> torch.Tensor:
    """``[R',C',...,K] @ [R',C',K,N]`` broadcasting the mesh dims."""
    w = w.reshape(w.shape[0], w.shape[1], *([1] * (x_ndim - 2)), w.shape[2], w.shape[3])
    return torch.matmul(x, w)
