"""How a logical tensor lies on one mesh axis: sharded, replicated, or a pending sum."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from ttdist.mesh.errors import MeshError, PartialTensorError


@dataclass(frozen=True)
class Shard:
    """Each device along the axis holds one equal slice of ``dim`` (in device order)."""

    dim: int

    def __repr__(self) -> str:
        return f"Shard({self.dim})"


@dataclass(frozen=True)
class Replicate:
    """Every device along the axis holds the whole tensor."""

    def __repr__(self) -> str:
        return "Replicate()"


@dataclass(frozen=True)
class Partial:
    """Every device along the axis holds a full-size addend; the tensor is their sum."""

    def __repr__(self) -> str:
        return "Partial()"


Placement = Union[Shard, Replicate, Partial]
Placements = tuple[Placement, Placement]

REPLICATED: Placements = (Replicate(), Replicate())


def normalize(placements: Placements, ndim: int) -> Placements:
    """Shard dims made non-negative for a tensor of ``ndim`` local dims."""
    out = []
    for p in placements:
        if isinstance(p, Shard):
            dim = p.dim + ndim if p.dim < 0 else p.dim
            if not 0 <= dim < ndim:
                raise ValueError(f"{p} is out of range for a {ndim}-d tensor")
            p = Shard(dim)
        out.append(p)
    return (out[0], out[1])


def with_axis(placements: Placements, axis: int, p: Placement) -> Placements:
    """``placements`` with the one on ``axis`` replaced."""
    out = list(placements)
    out[axis] = p
    return (out[0], out[1])


@dataclass(frozen=True)
class HostCut:
    """How a global array is cut over a mesh by its placements."""

    placements: Placements                     # normalized (non-negative shard dims)
    local_shape: tuple[int, ...]               # the piece each chip holds
    shard_dims: tuple[int | None, int | None]  # per mesh axis: the array dim it cuts, None if kept whole


def plan_cut(shape, placements: Placements, mesh_shape: tuple[int, int], name: str = "tensor",
             *, allow_partial: bool = False) -> HostCut:
    """The cut of a global array of ``shape``: axis 0 first, then axis 1, each ``Shard`` dim split
    evenly over the devices of its axis (an axis of one device cuts nothing). A host array is never
    ``Partial``; a zero tensor may be (``allow_partial``: each chip holds a full-size zero addend)."""
    placements = normalize(placements, len(shape))
    local, dims = [int(s) for s in shape], []
    for axis, p in enumerate(placements):
        n = mesh_shape[axis]
        if isinstance(p, Partial) and not allow_partial:
            raise MeshError(f"tensor {name!r}: a host array cannot be placed as Partial")
        if isinstance(p, Shard) and n > 1:
            if local[p.dim] % n:
                raise MeshError(f"tensor {name!r}: dim {p.dim} of size {local[p.dim]} does not split evenly "
                                f"over {n} devices on axis {axis}")
            local[p.dim] //= n
            dims.append(p.dim)
        else:
            dims.append(None)
    return HostCut(placements, tuple(local), (dims[0], dims[1]))


def cut(array, placements: Placements, mesh_shape: tuple[int, int], name: str = "tensor"):
    """``[R', C', *local]``: the pieces of a global ``array`` (numpy or torch) each chip holds, chip
    (r, c)'s at ``[r % R', c % C']``; a mesh axis the array is not cut on keeps one entry (``R'`` or
    ``C'`` is 1). A view where the cut allows it, not necessarily contiguous."""
    plan = plan_cut(tuple(array.shape), placements, mesh_shape, name)
    out = array[None, None]
    for axis, dim in enumerate(plan.shard_dims):
        if dim is None:
            continue
        n, at = mesh_shape[axis], 2 + dim
        split = out.reshape(tuple(out.shape[:at]) + (n, out.shape[at] // n) + tuple(out.shape[at + 1:]))
        # the n pieces move onto the mesh axis, replacing its old size-1 dim
        moved = split.movedim(at, axis) if hasattr(split, "movedim") else np.moveaxis(split, at, axis)
        out = moved.squeeze(axis + 1)
    return out


def normalize_dim(dim: int, ndim: int, op: str) -> int:
    d = dim + ndim if dim < 0 else dim
    if not 0 <= d < ndim:
        raise MeshError(f"{op}: dim {dim} is out of range for a {ndim}-d tensor")
    return d


def matmul_placement(x, w, axis: int) -> Placement:
    """How ``x @ w`` lies on one axis: column parallel, row parallel, or replicated.

    ``x`` and ``w`` are mesh tensors (``placements``, ``ndim``, ``name``); ``w`` is ``[K, N]``.
    """
    px, pw = x.placements[axis], w.placements[axis]
    last = x.ndim - 1
    if isinstance(pw, Partial):
        raise PartialTensorError(f"linear: weight {w.name!r} is Partial on axis {axis}")
    if isinstance(px, Replicate) and isinstance(pw, Replicate):
        return Replicate()
    if isinstance(px, Replicate) and pw == Shard(1):
        return Shard(last)
    if px == Shard(last) and pw == Shard(0):
        return Partial()
    if isinstance(px, Partial) and isinstance(pw, Replicate):
        return Partial()
    if isinstance(px, Shard) and px.dim < last and isinstance(pw, Replicate):
        return px
    raise MeshError(
        f"linear: activation {x.name!r} is {px} and weight {w.name!r} is {pw} on cluster_axis {axis}; "
        f"a matmul needs (Replicate, Shard(1)) column parallel, (Shard(-1), Shard(0)) row parallel, or replicated weights"
    )


def require_reduced(op: str, *tensors) -> None:
    """Raise PartialTensorError if a tensor still holds partial sums (a non-linear op is next)."""
    for t in tensors:
        for axis, p in enumerate(t.placements):
            if isinstance(p, Partial):
                raise PartialTensorError(
                    f"{op}: tensor {t.name!r} holds partial sums on cluster_axis {axis}; "
                    f"reduce it (all_reduce / reduce_scatter) before a non-linear op"
                )


def embedding_placement(ids, table) -> Placements:
    """How rows looked up by ``ids`` (``[T]`` or ``[1, T]``) lie: the table's placements, and
    ``Shard(0)`` on an axis where the ids are sharded along T (the table replicated there)."""
    out = list(table.placements)
    last = ids.ndim - 1 if hasattr(ids, "ndim") else 0
    for axis, p in enumerate(getattr(ids, "placements", (Replicate(), Replicate()))):
        if isinstance(p, Shard):
            if p.dim != last or not isinstance(out[axis], Replicate):
                raise MeshError(f"embedding: ids {ids.name!r} are {p} on axis {axis}; only T may be sharded, "
                                f"over a table replicated there")
            out[axis] = Shard(0)
    return (out[0], out[1])


def multiply_placement(x, factor) -> Placements:
    """How ``x * factor`` lies (``factor`` a per-device ``[1, 1]`` scalar): ``Partial`` on an axis
    where the factor is (a one-hot over the axis), else as ``x``."""
    if tuple(factor.shape) != (1, 1):
        raise MeshError(f"multiply: factor {factor.name!r} must be a [1, 1] per-device scalar, got {tuple(factor.shape)}")
    out = []
    for axis, (px, pf) in enumerate(zip(x.placements, factor.placements)):
        if isinstance(px, Partial) and isinstance(pf, Partial):
            raise MeshError(f"multiply: {x.name!r} and {factor.name!r} are both Partial on axis {axis}")
        out.append(pf if isinstance(pf, Partial) else px)
    return (out[0], out[1])
