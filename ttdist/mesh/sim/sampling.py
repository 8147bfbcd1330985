"""Sampling on the simulator: ``ttdist.mesh.sampling``'s algorithm in torch (local top-k per
chip, all-gather of the candidates, the draw)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ttdist.mesh import sampling, token_mask
from ttdist.mesh.penalties import MIN_P
from ttdist.mesh.errors import MeshError
from ttdist.mesh.placement import Placements, Shard, require_reduced
from ttdist.mesh.precision import DType
from ttdist.mesh.sim.tensor import SimTensor
from ttdist.mesh.spec import MeshSpec


@runtime_checkable
class SamplingHost(Protocol):
    """What ``SamplingOps`` uses of the backend it is mixed into (``SimBackend``)."""

    spec: MeshSpec
    device: torch.device

    def _wrap(self, data: torch.Tensor, placements: Placements, dtype: DType | None = None,
              name: str = "activations") -> SimTensor: ...

    def all_gather(self, x: SimTensor, dim: int, cluster_axis: int | None = None, *, topology=None,
                   num_links=None) -> SimTensor: ...


class SamplingOps:
    """``sample`` of ``SimBackend`` (see ``SamplingHost``)."""

    def sample(self, logits: SimTensor, vocab_size: int, params: SimTensor, cluster_axis: int,
               penalty_params: SimTensor | None = None, allowed: SimTensor | None = None) -> SimTensor:
        """``ttdist.mesh.sampling``'s algorithm: local top-k per chip, all-gather, the draw (with the
        penalties' min_p column when given); with ``allowed`` (grammar words, ``ttdist.mesh.token_mask``)
        each chip masks its slice first."""
        values, ids = self._candidates(logits, vocab_size, cluster_axis, allowed)
        min_p = None if penalty_params is None else penalty_params.data[..., MIN_P : MIN_P + 1]
        token = draw(values.data, ids.data, params.data, min_p)
        return self._wrap(token.round().to(torch.int32), values.placements, DType.int32, "token_ids")

    def _candidates(self, logits: SimTensor, vocab_size: int, cluster_axis: int,
                    allowed: SimTensor | None = None) -> tuple[SimTensor, SimTensor]:
        """Step 1: each chip's top ``local_k`` (padded ids masked), all-gathered: values and ids ``[B, M]``."""
        require_reduced("sample", logits)
        axis = self.spec.resolve_axis("sample", cluster_axis)
        for other, p in enumerate(logits.placements):
            if other != axis and isinstance(p, Shard) and self.spec.shape[other] > 1:
                raise MeshError(f"sample: logits {logits.name!r} are sharded on axis {other}, not only the vocab axis {axis}")
        width = logits.shape[-1]
        data = logits.data if allowed is None else masked(logits.data, allowed.data)
        values, index = data.topk(sampling.local_k(width, width * self._vocab_shards(logits, axis), vocab_size), dim=-1)
        ids = index.float() + self._vocab_offsets(logits, axis)
        values = torch.where(ids >= vocab_size, torch.full_like(values, sampling.MASK), values.float())
        gathered = [self.all_gather(self._wrap(t, logits.placements, DType.float32, "candidates"), dim=-1, cluster_axis=axis)
                    for t in (values, ids)]
        return gathered[0], gathered[1]

    def _vocab_shards(self, logits: SimTensor, axis: int) -> int:
        return self.spec.shape[axis] if isinstance(logits.placements[axis], Shard) else 1

    def _vocab_offsets(self, logits: SimTensor, axis: int) -> torch.Tensor:
        """Each chip's first global vocab id, broadcast over ``[R', C', 1, 1]``."""
        if self._vocab_shards(logits, axis) == 1:
            return torch.zeros(1, device=self.device)
        shape = [1, 1, 1, 1]
        shape[axis] = self.spec.shape[axis]
        return (torch.arange(self.spec.shape[axis], device=self.device) * logits.shape[-1]).float().reshape(shape)


def draw(v: torch.Tensor, ids: torch.Tensor, params: torch.Tensor, min_p: torch.Tensor | None = None) -> torch.Tensor:
    """``sampling.draw`` in torch over ``[R', C', B, M]`` candidates; ``params`` is ``[1, 1, B, 4]``,
    ``min_p`` ``[1, 1, B, 1]``."""
    t, k, p, u = (params[..., i : i + 1].float() for i in range(sampling.PARAMS))
    top = min(sampling.K, v.shape[-1])
    s = v.topk(top, dim=-1).values
    rank = torch.arange(top, device=v.device, dtype=torch.float32)
    in_k = rank < k
    z0 = s[..., :1] / t
    scaled = torch.exp(s / t - z0)
    if min_p is not None:
        in_k = in_k & (scaled >= min_p.float())
    e = scaled * in_k
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


def masked(logits: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """``token_mask``'s unpacking and masking of each chip's slice: ``[..., B, W]`` words, 32 planes."""
    planes = [(words >> j) & 1 for j in range(token_mask.PLANES)]
    allowed = torch.cat(planes, dim=-1).float()
    return logits.float() + (allowed - 1.0) * token_mask.OFF
