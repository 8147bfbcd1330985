"""Collectives of the ttnn backend: ``ttnn.all_gather``, ``reduce_scatter`` and ``all_reduce`` on a
mesh axis (a no-op on an axis of one chip), each recorded in the CCL ledger with the bytes it moved."""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import ttnn

from ttdist.mesh.accounting import CclLedger
from ttdist.mesh.errors import MeshError
from ttdist.mesh.placement import Placements, Replicate, Shard, normalize_dim, require_reduced, with_axis
from ttdist.mesh.precision import DType
from ttdist.mesh.spec import MeshSpec, Topology
from ttdist.mesh.ttnn import configs as cfg
from ttdist.mesh.ttnn.tensor import ROWS, TtnnTensor


@runtime_checkable
class CollectiveHost(Protocol):
    """What ``CollectiveOps`` uses of the backend it is mixed into (``TtnnBackend``)."""

    spec: MeshSpec
    ccl: CclLedger

    def _wrap(self, value: ttnn.Tensor, shape, placements: Placements, dtype: DType | None = None,
              name: str = "activations", kind: str = ROWS, heads: int = 0) -> TtnnTensor: ...

    def _rows_value(self, t: TtnnTensor) -> ttnn.Tensor: ...


class CollectiveOps:
    """The collectives of ``TtnnBackend`` (see ``CollectiveHost``)."""

    def _ccl_args(self, axis: int, topology: Topology | None, num_links: int | None) -> dict:
        topo = topology or self.spec.topology[axis]
        return dict(cluster_axis=axis, topology=ttnn.Topology.Ring if topo is Topology.RING else ttnn.Topology.Linear,
                    num_links=num_links or self.spec.links[axis])

    def all_gather(self, x: TtnnTensor, dim: int, cluster_axis: int | None = None, *, topology=None, num_links=None) -> TtnnTensor:
        axis = self.spec.resolve_axis("all_gather", cluster_axis)
        dim = normalize_dim(dim, x.ndim, "all_gather")
        require_reduced("all_gather", x)
        n = self.spec.shape[axis]
        self.ccl.record_collective("all_gather", self.spec, axis, math.prod(x.shape) * n, x.dtype, topology)
        placements = with_axis(x.placements, axis, Replicate())
        shape = list(x.shape)
        shape[dim] *= n
        if n == 1:
            return self._wrap(self._rows_value(x), x.shape, placements, x.dtype, x.name, x.kind)
        out = ttnn.all_gather(self._rows_value(x), dim + 4 - x.ndim, memory_config=cfg.activation_memory(x.rows, shape[-1]),
                              **self._ccl_args(axis, topology, num_links))
        return self._wrap(out, shape, placements, x.dtype, kind=x.kind)

    def reduce_scatter(self, x: TtnnTensor, dim: int, cluster_axis: int | None = None, *, topology=None, num_links=None) -> TtnnTensor:
        axis = self.spec.resolve_axis("reduce_scatter", cluster_axis)
        dim = normalize_dim(dim, x.ndim, "reduce_scatter")
        n = self.spec.shape[axis]
        if x.shape[dim] % n:
            raise MeshError(f"reduce_scatter: dim {dim} of {x.name!r} has size {x.shape[dim]}, not divisible by the {n} devices on axis {axis}")
        self.ccl.record_collective("reduce_scatter", self.spec, axis, math.prod(x.shape), x.dtype, topology)
        placements = with_axis(x.placements, axis, Shard(dim))
        shape = list(x.shape)
        shape[dim] //= n
        if n == 1:
            return self._wrap(self._rows_value(x), shape, placements, x.dtype)
        if isinstance(x.placements[axis], Shard):
            raise MeshError(f"reduce_scatter: {x.name!r} is already sharded on axis {axis}")
        out = ttnn.reduce_scatter(self._rows_value(x), dim + 4 - x.ndim, memory_config=cfg.activation_memory(x.rows, x.shape[-1]),
                                  **self._ccl_args(axis, topology, num_links))
        return self._wrap(out, shape, placements, x.dtype)

    def all_reduce(self, x: TtnnTensor, cluster_axis: int | None = None, *, topology=None, num_links=None) -> TtnnTensor:
        axis = self.spec.resolve_axis("all_reduce", cluster_axis)
        n = self.spec.shape[axis]
        self.ccl.record_collective("all_reduce", self.spec, axis, math.prod(x.shape), x.dtype, topology)
        placements = with_axis(x.placements, axis, Replicate())
        if n == 1:
            return self._wrap(self._rows_value(x), x.shape, placements, x.dtype)
        if isinstance(x.placements[axis], Shard):
            raise MeshError(f"all_reduce: {x.name!r} is sharded on axis {axis}; all_gather it instead")
        out = ttnn.all_reduce(self._rows_value(x), memory_config=cfg.activation_memory(x.rows, x.shape[-1]),
                              **self._ccl_args(axis, topology, num_links))
        return self._wrap(out, x.shape, placements, x.dtype)
