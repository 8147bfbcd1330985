"""Penalties on the simulator: ``ttdist.mesh.penalties``' algorithm in torch, each chip on its
vocab slice; the token counts are updated in place from the sampled ids.

The formula is elementwise and leaves an element bit for bit as it was wherever the row's state
is neutral there (no count, not in the prompt, no bias, no ban: ``x + 0 + 0 * s``, ``x * 1``,
``x - 0 * f - 0 * p``). So the simulator evaluates it only at the elements where some state is
non-zero, the state's *support*, and copies the rest: the same float32 operations on the same
values give the same bits as the dense pass, at a cost of one copy of the logits instead of ~18
passes over ``B x V/n`` (none when the caller lets it penalize the logits in place; ttnn runs the
dense pass: on chips those ops are DRAM-bound and stay on the device). The support is found once
when a state tensor is written from the host (a slot is seeded) and grows by the ``B`` ids each
``count_tokens`` adds; ``count_tokens`` adds them with an indexed add rather than a one-hot pass
over the slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ttdist.mesh import penalties as pen
from ttdist.mesh.errors import MeshError
from ttdist.mesh.placement import Shard, require_reduced
from ttdist.mesh.precision import DType
from ttdist.mesh.sim.tensor import SimTensor


@dataclass
class _Support:
    """Flat indices into the state's ``[R', C', B, W]`` storage where some state is non-zero (may
    repeat an index), valid while the state tensors are at ``versions``."""

    versions: tuple
    flat: torch.Tensor
    unique: int


def _versions(state: pen.PenaltyState) -> tuple:
    return tuple((getattr(state, k).data.data_ptr(), getattr(state, k).data._version) for k in pen.STATE)


class PenaltyOps:
    """``penalize`` and ``count_tokens`` of ``SimBackend`` (uses its ``spec``, ``device`` and ``_wrap``)."""

    def penalize(self, logits: SimTensor, state: pen.PenaltyState, *, in_place: bool = False) -> SimTensor:
        """Penalized float32 logits ``[B, V/n]`` (``penalties.penalize`` on every chip's slice);
        ``in_place``: float32 logits are penalized where they are and returned (no copy; the caller
        needs no raw logits after)."""
        require_reduced("penalize", logits)
        for name in pen.STATE:
            t = getattr(state, name)
            if t.placements != logits.placements or t.shape != logits.shape:
                raise MeshError(f"penalize: {name} {t.name!r} is {t.shape} {t.placements}, the logits {logits.shape} {logits.placements}")
        data = logits.data
        same = in_place and data.dtype == torch.float32 and data.is_contiguous() and data._base is None   # not a view
        x = logits.data if same else logits.data.to(torch.float32, copy=True, memory_format=torch.contiguous_format)
        if x.shape != state.counts.data.shape:
            raise MeshError(f"penalize: logits {logits.name!r} are stored as {tuple(x.shape)}, the state as {tuple(state.counts.data.shape)}")
        flat = self._support(state).flat
        if flat.numel():
            width = x.shape[-1]
            rows = (flat // width) % x.shape[-2]
            col = state.params.data.reshape(-1, pen.PENALTY_PARAMS).index_select(0, rows).float().unbind(-1)
            counts, prompt, bias, ban = (getattr(state, k).data.view(-1).index_select(0, flat) for k in pen.STATE)
            v = x.view(-1).index_select(0, flat) + bias
            v = v + ban * col[pen.BAN_SCALE]
            used = prompt + counts
            factor = (v >= 0).float() * col[pen.REPETITION_STEP] + col[pen.REPETITION]
            v = v * (factor * (used > 0).float() + (used <= 0).float())
            v = v - counts * col[pen.FREQUENCY]
            x.view(-1).index_copy_(0, flat, v - (counts > 0).float() * col[pen.PRESENCE])   # a repeated index: the same value
        return logits if same else self._wrap(x, logits.placements, DType.float32, "penalized_logits")

    def count_tokens(self, state: pen.PenaltyState, token_ids: SimTensor, cluster_axis: int) -> None:
        """``counts`` += a one-hot of each row's sampled id against the chip's vocab ids, in place
        (an indexed add of the one element each row's id is on the chip holding it)."""
        counts = state.counts
        axis = self.spec.resolve_axis("count_tokens", cluster_axis)
        r, c, b, width = counts.data.shape
        offsets = torch.zeros(r, c, 1, dtype=torch.long, device=self.device)
        if isinstance(counts.placements[axis], Shard) and self.spec.shape[axis] > 1:
            shape = [1, 1, 1]
            shape[axis] = self.spec.shape[axis]
            offsets = offsets + (torch.arange(self.spec.shape[axis], device=self.device) * width).reshape(shape)
        ids = token_ids.data.reshape(token_ids.data.shape[0], token_ids.data.shape[1], -1).round().long()
        local = (ids - offsets).expand(r, c, b)
        on_chip = (local >= 0) & (local < width)
        ri, ci, bi = torch.nonzero(on_chip, as_tuple=True)
        flat = ((ri * c + ci) * b + bi) * width + local[on_chip]
        support = self._support(state)
        counts.data.view(-1).index_add_(0, flat, torch.ones(flat.numel(), dtype=counts.data.dtype, device=self.device))
        support.flat = torch.cat([support.flat, flat])
        if support.flat.numel() > 2 * max(support.unique, 1024):
            support.flat = support.flat.unique()
            support.unique = support.flat.numel()
        support.versions = _versions(state)

    def _support(self, state: pen.PenaltyState) -> _Support:
        """The state's support, found again (a pass over each tensor) when a tensor was written since."""
        cache = self._penalty_support
        versions = _versions(state)
        found = cache.get(state.counts)
        if found is None or found.versions != versions:
            for k in pen.STATE:
                if not getattr(state, k).data.is_contiguous():
                    raise MeshError(f"penalize: {k} {getattr(state, k).name!r} is not contiguous storage")
            nonzero = torch.zeros(state.counts.data.numel(), dtype=torch.bool, device=self.device)
            for k in pen.STATE:
                nonzero |= getattr(state, k).data.reshape(-1) != 0
            flat = torch.nonzero(nonzero).flatten()
            found = cache[state.counts] = _Support(versions, flat, flat.numel())
        return found
