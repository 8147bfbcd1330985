"""The torch mesh simulator: every chip's data, exact collective semantics, one batched op.

A ``SimTensor`` (``ttdist.mesh.sim.tensor``) is ONE torch tensor ``[R', C', *local]`` plus a
placement per mesh axis; a replicated axis is stored once and broadcast, so per-device math is
one broadcasting torch op over the mesh dims and replicated work is not repeated.
``device_data()`` expands to the full ``[R, C, *local]`` view of what each chip holds.

This module holds placement and the dense ops; attention (``attention``), collectives
(``collectives``), sampling (``sampling``) and log-probabilities (``logprobs``) are mixed in from their own modules.
"""

from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np
import torch

from ttdist.mesh.accounting import CclLedger, DramLedger
from ttdist.mesh.backend import MeshError, TransferLedger
from ttdist.mesh.placement import (Partial, Placements, Replicate, Shard, cut, embedding_placement, matmul_placement, multiply_placement,
                                   normalize, normalize_dim, plan_cut, require_reduced)
from ttdist.mesh.precision import DType, quantize
from ttdist.mesh.sim.attention import AttentionOps
from ttdist.mesh.sim.collectives import CollectiveOps
from ttdist.mesh.sim.logprobs import LogprobOps
from ttdist.mesh.sim.penalties import PenaltyOps
from ttdist.mesh.sim.sampling import SamplingOps
from ttdist.mesh.sim.tensor import SimTensor, per_row
from ttdist.mesh.spec import MeshSpec

__all__ = ["SimBackend", "SimTensor"]


class SimBackend(AttentionOps, CollectiveOps, SamplingOps, LogprobOps, PenaltyOps):
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
        self._penalty_support = weakref.WeakKeyDictionary()   # PenaltyOps' support of each decode state

    # ------------------------------------------------------------------ host <-> mesh
    def _wrap(self, data: torch.Tensor, placements: Placements, dtype: DType | None = None, name: str = "activations"):
        return SimTensor(self.dram, data, placements, dtype or self.activation_dtype, name)

    def _host(self, array) -> torch.Tensor:
        t = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
        self.transfers.upload(t.numel() * t.element_size())
        if t.is_floating_point():
            t = t.float()
        return t.to(self.device)

    def from_host(self, array, placements: Placements, *, dtype: DType = DType.bfloat16, name: str = "tensor") -> SimTensor:
        data, placements = self._placed(self._host(array), placements, dtype, name)
        return SimTensor(self.dram, data, placements, dtype, name)

    def _placed(self, data: torch.Tensor, placements: Placements, dtype: DType, name: str):
        """A global host tensor as the ``[R', C', *local]`` data the placements give, and them normalized."""
        placements = normalize(placements, data.dim())
        if data.is_floating_point():
            data = quantize(data, dtype)
        return cut(data, placements, self.spec.shape, name).contiguous(), placements

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
        return SimTensor(self.dram, data, placements, dtype, name)

    def zeros(self, shape: Sequence[int], placements: Placements, *, dtype: DType = DType.bfloat16, name: str = "tensor") -> SimTensor:
        plan = plan_cut(shape, placements, self.spec.shape, name, allow_partial=True)
        placements = plan.placements
        mesh = [1 if isinstance(p, Replicate) else n for p, n in zip(placements, self.spec.shape)]
        data = torch.zeros(*mesh, *plan.local_shape, device=self.device)
        return SimTensor(self.dram, data, placements, dtype, name)

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
        t = self.from_host(array, placements, dtype=dtype, name=name)
        t.data = t.data.clone()  # the device's own copy: an op that updates an input in place leaves the host array alone
        return t

    def write_input(self, t: SimTensor, array) -> None:
        data, _ = self._placed(self._host(np.asarray(array)), t.placements, t.dtype, t.name)
        if data.shape != t.data.shape:
            raise MeshError(f"write_input: {t.name!r} holds {tuple(t.data.shape)} per mesh, got {tuple(data.shape)} from the host")
        t.data.copy_(data.to(t.data.dtype))

    def read_ids(self, t: SimTensor) -> np.ndarray:
        rows = t.data[0, 0]
        self.transfers.readback(rows.numel() * 4)
        return rows.cpu().numpy().astype(np.int64)

    # ------------------------------------------------------------------ compute
    def linear(self, x: SimTensor, w: SimTensor, *, out_dtype: DType | None = None) -> SimTensor:
        if w.ndim != 2 or x.ndim < 2 or x.shape[-1] != w.shape[0]:
            raise MeshError(f"linear: {x.name!r} local {x.shape} does not match weight {w.name!r} local {w.shape}")
        placements = (matmul_placement(x, w, 0), matmul_placement(x, w, 1))
        return self._wrap(_batched_matmul(x.data, w.data, x.ndim), placements, out_dtype)

    def multiply(self, x: SimTensor, factor: SimTensor) -> SimTensor:
        placements = multiply_placement(x, factor)
        return self._wrap(x.data * per_row(factor, x.ndim), placements, x.dtype)

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
        return self._wrap(x.data * torch.rsqrt(ms + eps) * per_row(weight, x.ndim), x.placements)

    def rms_norm_pre_all_gather(self, x: SimTensor) -> SimTensor:
        require_reduced("rms_norm_pre_all_gather", x)
        return self._wrap(x.data.pow(2).sum(-1, keepdim=True), x.placements, DType.float32)

    def rms_norm_post_all_gather(self, x: SimTensor, stats: SimTensor, weight: SimTensor, *, eps: float, width: int) -> SimTensor:
        require_reduced("rms_norm_post_all_gather", x, stats)
        ms = stats.data.sum(-1, keepdim=True) / width
        return self._wrap(x.data * torch.rsqrt(ms + eps) * per_row(weight, x.ndim), x.placements)

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

    # ------------------------------------------------------------------ traces
    def capture(self, step):
        raise MeshError("the simulator does not capture traces: run decode steps eagerly (trace_decode=False)")

    replay = release = capture


def _batched_matmul(x: torch.Tensor, w: torch.Tensor, x_ndim: int) -> torch.Tensor:
    """``[R',C',...,K] @ [R',C',K,N]`` broadcasting the mesh dims."""
    w = w.reshape(w.shape[0], w.shape[1], *([1] * (x_ndim - 2)), w.shape[2], w.shape[3])
    return torch.matmul(x, w)
