"""The ``Backend`` protocol on real Tenstorrent chips through ttnn (no torch: host arrays are numpy).

Tensors are ``TtnnTensor`` (``ttdist.mesh.ttnn.tensor``: the tensor kinds and how each lies
on the chips). Host arrays given to ``from_host`` are placed lazily: the first op that reads a
tensor decides its on-chip layout (a matmul weight goes DRAM-sharded, an embedding table
row-major, rotary tables straight into the decode shape), so no layout is converted twice.
Op choices follow the tt-metal LLM guide; configs come from ``ttdist.mesh.ttnn.configs``.
The DRAM ledger counts tile-padded bytes exactly as the simulator does; ``dram_report``
sets that beside ttnn's own allocator figures.
"""

from __future__ import annotations

import math
import weakref
from typing import Sequence

import numpy as np
import ttnn

from ttdist.mesh import token_mask
from ttdist.mesh.accounting import CclLedger, DramLedger
from ttdist.mesh.backend import MeshError, TransferLedger
from ttdist.mesh.placement import (Placements, Replicate, Shard, embedding_placement, matmul_placement, multiply_placement, normalize,
                                   normalize_dim, plan_cut, require_reduced)
from ttdist.mesh.precision import DType
from ttdist.mesh.spec import MeshSpec
from ttdist.mesh.ttnn import configs as cfg
from ttdist.mesh.ttnn.attention import AttentionOps
from ttdist.mesh.ttnn.collectives import CollectiveOps
from ttdist.mesh.ttnn.device import DecodeTrace, DramReport, MeshHandle, TtnnOptions, dram_report, open_mesh
from ttdist.mesh.ttnn.host import assemble, first_device, host_shards
from ttdist.mesh.ttnn.logprobs import LogprobOps
from ttdist.mesh.ttnn.penalties import PenaltyOps
from ttdist.mesh.ttnn.sampling import SamplingOps
from ttdist.mesh.ttnn.tensor import CACHE, INPUT, ROWS, STATS, TABLE, VECTOR, Pending, PendingPieces, TtnnTensor

__all__ = ["TtnnBackend", "TtnnTensor"]


class TtnnBackend(AttentionOps, CollectiveOps, SamplingOps, LogprobOps, PenaltyOps):
    """The ``Backend`` protocol on a ttnn mesh device (or submesh); attention, collectives and
    sampling are mixed in from their own modules."""

    name = "ttnn"

    def __init__(self, spec: MeshSpec, *, activation_dtype: DType = DType.bfloat16, **options):
        self.spec = spec
        self.options = TtnnOptions.from_kwargs(options)
        self.activation_dtype = activation_dtype
        self.ccl = CclLedger()
        self.dram = DramLedger(spec)
        self._live: weakref.WeakSet = weakref.WeakSet()
        self.mesh: MeshHandle = open_mesh(spec, self.options)
        self.device = self.mesh.device
        self.grid = self.mesh.grid
        self.transfers = TransferLedger()
        self._consts: dict[tuple, ttnn.Tensor] = {}
        self._transfer_cq = None   # the queue uploads and readbacks name while a KV page transfer runs

    @property
    def can_trace(self) -> bool:
        return self.mesh.can_trace

    def close(self) -> None:
        self._consts.clear()
        self.mesh.close()

    # ------------------------------------------------------------------ host <-> mesh
    def _mapper(self, mesh_dims: tuple[int | None, int | None]):
        config = ttnn.MeshMapperConfig([ttnn.PlacementReplicate() if d is None else ttnn.PlacementShard(d) for d in mesh_dims])
        return ttnn.create_mesh_mapper(self.device, config)

    def _upload(self, array: np.ndarray, mesh_dims, dtype: DType, layout, memory) -> ttnn.Tensor:
        host = ttnn.Tensor(np.ascontiguousarray(array), cfg.ttnn_dtype(dtype), None, layout, mesh_mapper=self._mapper(mesh_dims))
        self.transfers.upload(array.nbytes)
        return host.to(self.device, memory) if self._transfer_cq is None else host.to(self.device, memory, cq_id=self._transfer_cq)

    def _upload_pieces(self, pieces: np.ndarray, dtype: DType, layout, memory) -> ttnn.Tensor:
        """``[R', C', *piece4]``: one host buffer per chip from its own piece, onto its chip."""
        host = host_shards(pieces, self.spec.shape, cfg.ttnn_dtype(dtype), layout)
        self.transfers.upload(self.spec.num_chips * pieces[0, 0].nbytes)
        return host.to(self.device, memory) if self._transfer_cq is None else host.to(self.device, memory, cq_id=self._transfer_cq)

    # ------------------------------------------------------------------ persistent step inputs
    @staticmethod
    def _input_format(array: np.ndarray, name: str = ""):
        if array.dtype.kind == "f":
            return np.float32, DType.float32, ttnn.TILE_LAYOUT
        if array.dtype == np.uint32:
            return np.uint32, DType.uint32, ttnn.ROW_MAJOR_LAYOUT
        if name == token_mask.INPUT_NAME:   # grammar-mask words: the shifts that unpack them read tiles
            return np.int32, DType.int32, ttnn.TILE_LAYOUT
        return np.int32, DType.int32, ttnn.ROW_MAJOR_LAYOUT

    def _input_plan(self, array: np.ndarray, placements: Placements, name: str):
        """How an input lies: its host format, the global array as uploaded, the mesh dim per axis, the local shape."""
        np_dtype, dtype, layout = self._input_format(array, name)
        pad = 4 - array.ndim if layout == ttnn.TILE_LAYOUT else 0
        plan = plan_cut(array.shape, placements, self.spec.shape, name)
        dims = tuple(None if d is None else d + pad for d in plan.shard_dims)
        data = np.ascontiguousarray(array.astype(np_dtype).reshape((1,) * pad + array.shape))
        return data, dtype, layout, dims, plan.local_shape, plan.placements

    def input_tensor(self, array, placements: Placements = (Replicate(), Replicate()), *, name: str = "input") -> TtnnTensor:
        """Ints row-major (what embedding, cache and SDPA ops read), floats tiled ``[1, 1, B, W]``;
        replicated, or a dim split over an axis (each user group's rows on its column)."""
        array = np.asarray(array)
        data, dtype, layout, dims, local, placements = self._input_plan(array, placements, name)
        value = self._upload(data, dims, dtype, layout, ttnn.DRAM_MEMORY_CONFIG)
        return TtnnTensor(self, value, local, placements, dtype, name, INPUT)

    def write_input(self, t: TtnnTensor, array) -> None:
        array = np.asarray(array)
        if t.kind != INPUT:
            raise MeshError(f"write_input: {t.name!r} is not a step input")
        data, dtype, layout, dims, local, _ = self._input_plan(array, t.placements, t.name)
        if local != t.shape:
            raise MeshError(f"write_input: {t.name!r} is an input of local shape {t.shape}, got {local} from {tuple(array.shape)}")
        host = ttnn.Tensor(data, cfg.ttnn_dtype(dtype), None, layout, mesh_mapper=self._mapper(dims))
        self.transfers.upload(data.nbytes)
        ttnn.copy_host_to_device_tensor(host, t.value)

    def read_ids(self, t: TtnnTensor) -> np.ndarray:
        """The sampled ids: one [B] read from the first chip (every chip holds the same)."""
        ids = first_device(t.value).reshape(-1)[: t.shape[0]]
        self.transfers.readback(t.shape[0] * 4)
        return np.rint(ids).astype(np.int64)

    # ------------------------------------------------------------------ decode traces
    def capture(self, step):
        trace = DecodeTrace(self.mesh)
        trace.output = trace.capture(step)
        return trace

    def replay(self, trace):
        trace.replay()
        return trace.output

    def release(self, trace) -> None:
        trace.release()

    def from_host(self, array, placements: Placements, *, dtype: DType = DType.bfloat16, name: str = "tensor") -> TtnnTensor:
        array = np.asarray(array)
        if array.ndim > 4 or array.ndim == 0:
            raise MeshError(f"tensor {name!r}: ttnn tensors have 1 to 4 dims, got {array.ndim}")
        plan = plan_cut(array.shape, placements, self.spec.shape, name)
        dims = tuple(None if d is None else d + 4 - array.ndim for d in plan.shard_dims)
        if array.dtype.kind == "f":
            array = array.astype(np.float32, copy=False)
        pending = Pending(array.reshape((1,) * (4 - array.ndim) + array.shape), dims)
        kind = VECTOR if array.ndim == 1 else ROWS
        return TtnnTensor(self, None, plan.local_shape, plan.placements, dtype, name, kind, pending=pending)

    def from_host_per_device(self, array, placements: Placements, *, dtype: DType = DType.bfloat16, name: str = "tensor") -> TtnnTensor:
        """``array[r, c]`` (``[R', C', *local]``, an axis of one entry shared by its chips, e.g. a
        memory-mapped weight-cache entry) stays as it is until the first consumer; then each chip
        gets a host buffer made from its own piece alone (``_upload_pieces``)."""
        array = np.asarray(array)
        if array.ndim < 3 or array.ndim > 6:
            raise MeshError(f"tensor {name!r}: per-device arrays are [R, C, *local] with 1 to 4 local dims")
        for axis, n in enumerate(self.spec.shape):
            entries = array.shape[axis]
            if entries not in (1, n):
                raise MeshError(f"tensor {name!r}: mesh dim {axis} has {entries} entries for {n} devices")
            if isinstance(placements[axis], Replicate) and entries > 1:
                first = array[(slice(None),) * axis + (slice(0, 1),)]
                if any(not np.array_equal(array[(slice(None),) * axis + (slice(i, i + 1),)], first) for i in range(1, entries)):
                    raise MeshError(f"tensor {name!r}: declared Replicate on axis {axis} but the devices differ")
                array = first  # equal pieces: every chip on the axis shares one
        local = array.shape[2:]
        placements = normalize(placements, len(local))
        pending = PendingPieces(array.reshape(array.shape[:2] + (1,) * (4 - len(local)) + tuple(local)))
        kind = VECTOR if len(local) == 1 else ROWS
        return TtnnTensor(self, None, local, placements, dtype, name, kind, pending=pending)

    def paged_cache(self, num_pages: int, n_kv: int, page_size: int, head_dim: int, placements: Placements,
                    *, dtype: DType = DType.bfloat16, name: str = "kv_cache") -> TtnnTensor:
        """ttnn's paged cache layout: ``[pages, kv_heads, page_size, head_dim]``."""
        return self.zeros((num_pages, n_kv, page_size, head_dim), placements, dtype=cfg.cache_dtype(dtype), name=name)

    def zeros(self, shape: Sequence[int], placements: Placements, *, dtype: DType = DType.bfloat16, name: str = "tensor") -> TtnnTensor:
        plan = plan_cut(shape, placements, self.spec.shape, name, allow_partial=True)
        local = plan.local_shape
        if len(local) > 4:
            raise MeshError(f"tensor {name!r}: ttnn tensors have at most 4 dims")
        shape4 = (1,) * (4 - len(local)) + tuple(local)
        kind = CACHE if len(local) == 4 else ROWS
        value = ttnn.zeros(shape4, dtype=cfg.ttnn_dtype(dtype), layout=ttnn.TILE_LAYOUT, device=self.device,
                           memory_config=ttnn.DRAM_MEMORY_CONFIG)
        return TtnnTensor(self, value, local, plan.placements, dtype, name, kind)

    def to_host(self, t: TtnnTensor) -> np.ndarray:
        value = self._materialize_default(t)
        if value.dtype == ttnn.bfloat16:  # numpy has no bfloat16: widen on device before reading
            value = ttnn.typecast(value, ttnn.float32)
        cq = {} if self._transfer_cq is None else {"cq_id": self._transfer_cq}   # queue 1 inside a KV page transfer
        pieces = [np.asarray(p.cpu(**cq).to_numpy()) for p in ttnn.get_device_tensors(value)]
        self.transfers.readback(sum(p.nbytes for p in pieces))
        local = [t.local_view(p) for p in pieces]
        return assemble(local, self.spec.shape, t.placements)

    def deallocate(self, t: TtnnTensor) -> None:
        t._free()
        if t.value is not None:
            ttnn.deallocate(t.value)
        t.value, t.pending = None, None

    # ------------------------------------------------------------------ placing pending host data
    def _materialize(self, t: TtnnTensor, dtype: DType, layout, memory, shape4=None) -> ttnn.Tensor:
        if t.value is None:
            if t.pending is None:
                raise MeshError(f"tensor {t.name!r} was deallocated")
            pending = t.pending if shape4 is None else t.pending.reshaped(shape4)
            if isinstance(pending, PendingPieces):
                t.value = self._upload_pieces(pending.pieces, dtype, layout, memory)
            else:
                t.value = self._upload(pending.array, pending.mesh_dims, dtype, layout, memory)
            t.pending = None
        return t.value

    def _materialize_default(self, t: TtnnTensor) -> ttnn.Tensor:
        if t.kind == VECTOR:
            return self._vector(t)
        return self._materialize(t, t.dtype, ttnn.TILE_LAYOUT, cfg.activation_memory(t.rows, t.shape[-1]))

    def _rows_value(self, t: TtnnTensor) -> ttnn.Tensor:
        """A token-major activation ``[1, 1, T, W]``."""
        if t.kind not in (ROWS, STATS):
            raise MeshError(f"tensor {t.name!r} is a {t.kind} tensor; this op needs token-major rows [T, width]")
        return self._materialize_default(t)

    def _vector(self, t: TtnnTensor) -> ttnn.Tensor:
        """Norm weights row-major ``[1, 1, W/32, 32]`` (the layout rms_norm reads)."""
        width = t.shape[-1]
        if width % cfg.TILE:
            raise MeshError(f"tensor {t.name!r}: norm weights need a width that is a multiple of {cfg.TILE}, got {width}")
        if t.pending is not None:
            t.pending = t.pending.tile_rows()
        return self._materialize(t, cfg.side_dtype(t.dtype, self.activation_dtype), ttnn.ROW_MAJOR_LAYOUT, ttnn.DRAM_MEMORY_CONFIG)

    def _weight(self, w: TtnnTensor) -> tuple[ttnn.Tensor, bool]:
        """A matmul weight ``[K, N]``: DRAM-sharded when the decode path is on and the shape allows."""
        if w.kind != ROWS or w.ndim != 2:
            raise MeshError(f"linear: weight {w.name!r} must be a 2-d [K, N] tensor, got {w.kind} {w.shape}")
        k, n = w.shape
        if w.value is None:
            sharded = self.options.dram_sharded_decode and cfg.dram_sharded_fits(k, n)
            memory = cfg.dram_sharded_weight_memory(k, n) if sharded else ttnn.DRAM_MEMORY_CONFIG
            self._materialize(w, w.dtype, ttnn.TILE_LAYOUT, memory)
        return w.value, w.value.memory_config().is_sharded()

    def _ints(self, array: np.ndarray, dtype=ttnn.int32) -> ttnn.Tensor:
        """A small replicated integer tensor (prefill page tables, ids), uploaded for this op only
        (no cache: a device buffer kept across a captured decode trace could be overwritten by it)."""
        array = np.ascontiguousarray(array, dtype=np.int32 if dtype == ttnn.int32 else np.uint32)
        return self._upload(array, (None, None), DType.int32 if dtype == ttnn.int32 else DType.uint32,
                            ttnn.ROW_MAJOR_LAYOUT, ttnn.DRAM_MEMORY_CONFIG)

    def _const(self, key: tuple, make) -> ttnn.Tensor:
        """A resident constant (sampling ranks, triangular ones, vocab offsets), made once: before
        any capture, since the first decode step runs eagerly."""
        hit = self._consts.get(key)
        if hit is None:
            hit = self._consts[key] = make()
        return hit

    def _wrap(self, value, shape, placements, dtype: DType | None = None, name: str = "activations", kind: str = ROWS, heads: int = 0):
        if kind == ROWS and tuple(value.shape) != (1,) * (4 - len(shape)) + tuple(shape):
            raise AssertionError(f"ttnn backend: device tensor {tuple(value.shape)} does not hold rows {tuple(shape)}")
        dtype = dtype or cfg.dtype_of(value.dtype) or self.activation_dtype  # as held: SDPA outputs bf16 under float32
        return TtnnTensor(self, value, shape, placements, dtype, name, kind, heads)

    # ------------------------------------------------------------------ compute
    def linear(self, x: TtnnTensor, w: TtnnTensor, *, out_dtype: DType | None = None) -> TtnnTensor:
        if x.ndim != 2 or w.ndim != 2 or x.shape[-1] != w.shape[0]:
            raise MeshError(f"linear: {x.name!r} local {x.shape} does not match weight {w.name!r} local {w.shape}")
        placements = (matmul_placement(x, w, 0), matmul_placement(x, w, 1))
        xv = self._rows_value(x)
        wv, sharded = self._weight(w)
        m, (k, n) = x.shape[0], w.shape
        dtype = out_dtype or self.activation_dtype
        compute = cfg.matmul_compute(w.dtype)
        if sharded and m <= cfg.DECODE_MAX_ROWS:
            xs = ttnn.to_memory_config(xv, cfg.decode_input_memory(m, k, self.grid))
            ys = ttnn.linear(xs, wv, program_config=cfg.dram_sharded_program(m, k, n, self.grid),
                             memory_config=ttnn.L1_WIDTH_SHARDED_MEMORY_CONFIG, compute_kernel_config=compute,
                             dtype=cfg.ttnn_dtype(dtype))
            ttnn.deallocate(xs)
            y = ttnn.sharded_to_interleaved(ys, cfg.activation_memory(m, n))
            ttnn.deallocate(ys)
        else:
            chunk = cfg.prefill_row_chunk(m)
            xin = xv if chunk == m else ttnn.reshape(xv, (1, m // chunk, chunk, k))
            y = ttnn.linear(xin, wv, program_config=cfg.prefill_program(chunk, k, n, self.grid),
                            memory_config=cfg.activation_memory(m, n), compute_kernel_config=compute, dtype=cfg.ttnn_dtype(dtype))
            if chunk != m:
                y = ttnn.reshape(y, (1, 1, m, n))
        return self._wrap(y, (m, n), placements, dtype)

    def add(self, a: TtnnTensor, b: TtnnTensor) -> TtnnTensor:
        if a.placements != b.placements:
            raise MeshError(f"add: {a.name!r} is {a.placements} but {b.name!r} is {b.placements}")
        if a.shape != b.shape:
            raise MeshError(f"add: {a.name!r} local {a.shape} does not match {b.name!r} local {b.shape}")
        out = ttnn.add(self._rows_value(a), self._rows_value(b), memory_config=cfg.activation_memory(a.rows, a.shape[-1]))
        return self._wrap(out, a.shape, a.placements)

    def multiply(self, x: TtnnTensor, factor: TtnnTensor) -> TtnnTensor:
        placements = multiply_placement(x, factor)
        f = self._materialize(factor, DType.bfloat16, ttnn.TILE_LAYOUT, ttnn.DRAM_MEMORY_CONFIG)
        out = ttnn.multiply(self._rows_value(x), f, memory_config=cfg.activation_memory(x.rows, x.shape[-1]))
        return self._wrap(out, x.shape, placements, x.dtype)

    def silu_mul(self, gate: TtnnTensor, up: TtnnTensor) -> TtnnTensor:
        require_reduced("silu_mul", gate, up)
        if gate.placements != up.placements or gate.shape != up.shape:
            raise MeshError(f"silu_mul: {gate.name!r} {gate.shape} {gate.placements} vs {up.name!r} {up.shape} {up.placements}")
        out = ttnn.mul(self._rows_value(gate), self._rows_value(up), input_tensor_a_activations=[ttnn.UnaryOpType.SILU],
                       memory_config=cfg.activation_memory(gate.rows, gate.shape[-1]))
        return self._wrap(out, gate.shape, gate.placements)

    def embedding(self, ids, table: TtnnTensor) -> TtnnTensor:
        for axis, p in enumerate(table.placements):
            if isinstance(p, Shard) and p.dim == 0:
                raise MeshError(f"embedding: table {table.name!r} must not be sharded by vocabulary (axis {axis})")
        require_reduced("embedding", table)
        vocab, width = table.shape
        if isinstance(ids, TtnnTensor):
            if ids.dtype is not DType.uint32 or ids.ndim != 2 or ids.shape[0] != 1:
                raise MeshError(f"embedding: ids input {ids.name!r} must be uint32 [1, T], got {ids.dtype.value} {ids.shape}")
            count, index = ids.shape[1], ids.value
        else:
            host = np.asarray(ids, dtype=np.int64).reshape(-1)
            if host.size and (host.min() < 0 or host.max() >= vocab):
                raise MeshError(f"embedding: token ids must lie in [0, {vocab}), got {host.min()}..{host.max()}")
            count, index = host.size, self._ints(host.reshape(1, -1), ttnn.uint32)
        if table.value is None:
            table.kind = TABLE
            self._materialize(table, DType.bfloat16, ttnn.ROW_MAJOR_LAYOUT, ttnn.DRAM_MEMORY_CONFIG)  # ttnn.embedding reads bf16 tables only
        elif table.kind != TABLE:
            raise MeshError(f"embedding: {table.name!r} is already placed as a {table.kind} tensor")
        out = ttnn.embedding(index, table.value, layout=ttnn.TILE_LAYOUT,
                             dtype=cfg.ttnn_dtype(self.activation_dtype), memory_config=cfg.activation_memory(count, width))
        out = ttnn.reshape(out, (1, 1, count, width))
        return self._wrap(out, (count, width), embedding_placement(ids, table))

    def _check_width(self, op: str, x: TtnnTensor) -> None:
        for axis, p in enumerate(x.placements):
            if p == Shard(x.ndim - 1) and self.spec.shape[axis] > 1:
                raise MeshError(f"{op}: {x.name!r} is width-fractured on axis {axis}; use the distributed norm")

    def rms_norm(self, x: TtnnTensor, weight: TtnnTensor, *, eps: float, width: int) -> TtnnTensor:
        require_reduced("rms_norm", x)
        self._check_width("rms_norm", x)
        local = x.shape[-1]
        out = ttnn.rms_norm(self._rows_value(x), epsilon=eps * width / local, weight=self._vector(weight),
                            compute_kernel_config=cfg.precise_compute(), memory_config=cfg.activation_memory(x.rows, x.shape[-1]))
        if width != local:  # ttnn divides by the padded width: rescale to the true mean
            out = ttnn.multiply(out, math.sqrt(width / local))
        return self._wrap(out, x.shape, x.placements)

    def rms_norm_pre_all_gather(self, x: TtnnTensor) -> TtnnTensor:
        require_reduced("rms_norm_pre_all_gather", x)
        held = cfg.side_dtype(x.dtype, self.activation_dtype)
        stats = ttnn.rms_norm_pre_all_gather(self._rows_value(x), compute_kernel_config=cfg.precise_compute(),
                                             dtype=cfg.ttnn_dtype(held), memory_config=cfg.activation_memory(x.rows, x.shape[-1]))
        return self._wrap(stats, (x.shape[0], 1), x.placements, held, "norm_stats", STATS)

    def rms_norm_post_all_gather(self, x: TtnnTensor, stats: TtnnTensor, weight: TtnnTensor, *, eps: float, width: int) -> TtnnTensor:
        require_reduced("rms_norm_post_all_gather", x, stats)
        if stats.kind != STATS:
            raise MeshError(f"rms_norm_post_all_gather: {stats.name!r} is not the output of rms_norm_pre_all_gather")
        sv = stats.value
        covered = x.shape[-1] * stats.shape[-1]  # ttnn divides by the local width times the gathered devices
        if covered != width:
            sv = ttnn.multiply(sv, covered / width)
        out = ttnn.rms_norm_post_all_gather(self._rows_value(x), sv, epsilon=eps, weight=self._vector(weight),
                                            compute_kernel_config=cfg.precise_compute(),
                                            memory_config=cfg.activation_memory(x.rows, x.shape[-1]))
        return self._wrap(out, x.shape, x.placements)

    def slice_rows(self, x: TtnnTensor, start: int, end: int) -> TtnnTensor:
        for axis, p in enumerate(x.placements):
            if p == Shard(0) and self.spec.shape[axis] > 1:
                raise MeshError(f"slice_rows: {x.name!r} is sharded by rows on axis {axis}")
        if not 0 <= start < end <= x.shape[0]:
            raise MeshError(f"slice_rows: rows {start}:{end} are out of range for {x.shape[0]} rows")
        width = x.shape[1]
        out = ttnn.slice(self._rows_value(x), [0, 0, start, 0], [1, 1, end, width],
                         memory_config=cfg.activation_memory(end - start, width))
        return self._wrap(out, (end - start, width), x.placements, x.dtype)

    def concat(self, parts, dim: int = -1) -> TtnnTensor:
        first = parts[0]
        dim = normalize_dim(dim, first.ndim, "concat")
        for p in parts:
            if p.placements != first.placements or p.ndim != first.ndim:
                raise MeshError(f"concat: {p.name!r} {p.placements} does not match {first.name!r} {first.placements}")
        shape = list(first.shape)
        shape[dim] = sum(p.shape[dim] for p in parts)
        out = ttnn.concat([self._rows_value(p) for p in parts], dim + 4 - first.ndim,
                          memory_config=cfg.activation_memory(first.rows, shape[-1]))
        return self._wrap(out, shape, first.placements, first.dtype)

    # ------------------------------------------------------------------ memory report
    def dram_report(self) -> DramReport:
        return dram_report(self)
