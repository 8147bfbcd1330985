"""Collectives of the simulator: exactly the per-device data ttnn's ops produce, each recorded
in the CCL ledger with the bytes it moved (``ttdist.mesh.accounting``)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ttdist.mesh.accounting import CclLedger
from ttdist.mesh.errors import MeshError
from ttdist.mesh.placement import Placements, Replicate, Shard, normalize_dim, require_reduced, with_axis
from ttdist.mesh.precision import DType
from ttdist.mesh.sim.tensor import SimTensor
from ttdist.mesh.spec import MeshSpec


@runtime_checkable
class CollectiveHost(Protocol):
    """What ``CollectiveOps`` uses of the backend it is mixed into (``SimBackend``)."""

    spec: MeshSpec
    ccl: CclLedger

    def _wrap(self, data: torch.Tensor, placements: Placements, dtype: DType | None = None,
              name: str = "activations") -> SimTensor: ...


class CollectiveOps:
    """``all_gather``, ``reduce_scatter`` and ``all_reduce`` of ``SimBackend`` (see ``CollectiveHost``)."""

    def all_gather(self, x: SimTensor, dim: int, cluster_axis: int | None = None, *, topology=None, num_links=None) -> SimTensor:
        axis = self.spec.resolve_axis("all_gather", cluster_axis)
        dim = normalize_dim(dim, x.ndim, "all_gather")
        require_reduced("all_gather", x)
        p = x.placements[axis]
        n = self.spec.shape[axis]
        self.ccl.record_collective("all_gather", self.spec, axis, x.data[0, 0].numel() * n, x.dtype, topology)
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
        self.ccl.record_collective("reduce_scatter", self.spec, axis, x.data[0, 0].numel(), x.dtype, topology)
        full = x.data.expand(*[n if a == axis else -1 for a in range(x.data.dim())])
        summed = full.sum(dim=axis)  # [M, *local]
        out = summed.unflatten(1 + dim, (n, size // n)).movedim(1 + dim, axis)
        return self._wrap(out, with_axis(x.placements, axis, Shard(dim)), x.dtype)

    def all_reduce(self, x: SimTensor, cluster_axis: int | None = None, *, topology=None, num_links=None) -> SimTensor:
        axis = self.spec.resolve_axis("all_reduce", cluster_axis)
        n = self.spec.shape[axis]
        self.ccl.record_collective("all_reduce", self.spec, axis, x.data[0, 0].numel(), x.dtype, topology)
        if isinstance(x.placements[axis], Replicate):
            out = x.data * n
        else:
            out = x.data.sum(dim=axis, keepdim=True)
        return self._wrap(out, with_axis(x.placements, axis, Replicate()), x.dtype)
