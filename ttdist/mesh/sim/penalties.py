"""Penalties on the simulator: ``ttdist.mesh.penalties``' algorithm in torch, each chip on its
vocab slice; the token counts are updated in place from the sampled ids."""

from __future__ import annotations

import torch

from ttdist.mesh import penalties as pen
from ttdist.mesh.errors import MeshError
from ttdist.mesh.placement import Shard, require_reduced
from ttdist.mesh.precision import DType
from ttdist.mesh.sim.tensor import SimTensor


class PenaltyOps:
    """``penalize`` and ``count_tokens`` of ``SimBackend`` (uses its ``spec``, ``device`` and ``_wrap``)."""

    def penalize(self, logits: SimTensor, state: pen.PenaltyState) -> SimTensor:
        """Penalized float32 logits ``[B, V/n]`` (``penalties.penalize`` on every chip's slice)."""
        require_reduced("penalize", logits)
        for name in pen.STATE:
            t = getattr(state, name)
            if t.placements != logits.placements or t.shape != logits.shape:
                raise MeshError(f"penalize: {name} {t.name!r} is {t.shape} {t.placements}, the logits {logits.shape} {logits.placements}")
        col = [state.params.data[..., i : i + 1].float() for i in range(pen.PENALTY_PARAMS)]
        counts = state.counts.data
        x = logits.data.float() + state.bias.data
        x = x + state.ban.data * col[pen.BAN_SCALE]
        used = state.prompt.data + counts
        factor = (x >= 0).float() * col[pen.REPETITION_STEP] + col[pen.REPETITION]
        x = x * (factor * (used > 0).float() + (used <= 0).float())
        x = x - counts * col[pen.FREQUENCY]
        x = x - (counts > 0).float() * col[pen.PRESENCE]
        return self._wrap(x, logits.placements, DType.float32, "penalized_logits")

    def count_tokens(self, state: pen.PenaltyState, token_ids: SimTensor, cluster_axis: int) -> None:
        """``counts`` += a one-hot of each row's sampled id against the chip's vocab ids, in place."""
        counts = state.counts
        axis = self.spec.resolve_axis("count_tokens", cluster_axis)
        width = counts.shape[-1]
        vocab = torch.arange(width, device=self.device, dtype=torch.float32)
        if isinstance(counts.placements[axis], Shard) and self.spec.shape[axis] > 1:
            shape = [1, 1, 1, 1]
            shape[axis] = self.spec.shape[axis]
            vocab = vocab + (torch.arange(self.spec.shape[axis], device=self.device) * width).float().reshape(shape)
        ids = token_ids.data.float().reshape(token_ids.data.shape[0], token_ids.data.shape[1], -1, 1)
        counts.data.add_((vocab == ids).float())
