"""How a logical tensor lies on one mesh axis: sharded, replicated, or a pending sum."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


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
