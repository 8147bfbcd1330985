"""Log-probabilities on the simulator: ``ttdist.mesh.logprobs``' algorithm in torch, on sampling's
gathered candidates (``sample_logprobs`` for decode, ``prompt_logprobs`` for every prompt row)."""

from __future__ import annotations

import numpy as np
import torch

from ttdist.mesh import logprobs
from ttdist.mesh.precision import DType
from ttdist.mesh.penalties import MIN_P
from ttdist.mesh.sim.sampling import draw, masked
from ttdist.mesh.sim.tensor import SimTensor


class LogprobOps:
    """``sample_logprobs`` and ``prompt_logprobs`` of ``SimBackend`` (with ``SamplingOps``)."""

    def sample_logprobs(self, logits: SimTensor, vocab_size: int, params: SimTensor, cluster_axis: int,
                        penalty_params: SimTensor | None = None, allowed: SimTensor | None = None, *,
                        processed: bool = False) -> tuple[SimTensor, SimTensor]:
        """``sample``'s token ids and each user's logprob row for the token drawn (``logprobs.rows``)
        of the ``logits`` given (penalized ones when penalties apply); ``processed``: of the distribution
        after temperature (``params``' first column) and the grammar mask ``allowed``. The drawn
        token is one of the candidates, so its logit is picked from them."""
        values, ids = self._candidates(logits, vocab_size, cluster_axis, allowed)
        min_p = None if penalty_params is None else penalty_params.data[..., MIN_P : MIN_P + 1]
        token = draw(values.data, ids.data, params.data, min_p).round()
        scale = 1.0 / params.data[..., :1].float() if processed else None
        target = (values.data * (ids.data == token.unsqueeze(-1))).sum(-1, keepdim=True)
        if processed and allowed is not None:   # the processed distribution excludes what the grammar masks
            logits = self._wrap(masked(logits.data, allowed.data), logits.placements, DType.float32, "masked_logits")
        rows = self._logprob_rows(logits, vocab_size, cluster_axis, values, ids, target, scale)
        return self._wrap(token.to(torch.int32), values.placements, DType.int32, "token_ids"), rows

    def prompt_logprobs(self, logits: SimTensor, vocab_size: int, targets: SimTensor, cluster_axis: int) -> SimTensor:
        """Logprob rows ``[T, 1 + 2k]`` of raw logits ``[T, V/n]`` for the target ids (``[T, 1]``, or the
        ``[B]`` ids ``sample`` drew): each chip picks a target's logit from its slice (one-hot), the
        picks are added over the vocab axis."""
        values, ids = self._candidates(logits, vocab_size, cluster_axis)
        axis = self.spec.resolve_axis("logprobs", cluster_axis)
        wanted = targets.data.float().reshape(targets.data.shape[0], targets.data.shape[1], -1, 1)
        picked = (logits.data.float() * (self._local_ids(logits, axis) == wanted)).sum(-1, keepdim=True)
        target = self._vocab_sum(picked, logits, axis)
        return self._logprob_rows(logits, vocab_size, cluster_axis, values, ids, target, None)

    def read_rows(self, t: SimTensor) -> np.ndarray:
        """A replicated ``[B, W]`` float32 tensor (logprob rows), read once."""
        rows = t.data[0, 0]
        self.transfers.readback(rows.numel() * 4)
        return rows.cpu().numpy().astype(np.float32)

    def _logprob_rows(self, logits: SimTensor, vocab_size: int, cluster_axis: int, values: SimTensor, ids: SimTensor,
                      target: torch.Tensor, scale: torch.Tensor | None) -> SimTensor:
        """Rows for ``target``, the ``[B, 1]`` logit of each row's target token (replicated)."""
        axis = self.spec.resolve_axis("logprobs", cluster_axis)
        k = logprobs.top_width(values.shape[-1])
        top_v, order = (t[..., :k] for t in values.data.sort(dim=-1, descending=True, stable=True))  # ties: chip order
        top_id = ids.data.gather(-1, order)
        g = top_v[..., :1]
        e = logits.data.float() - g
        if scale is not None:
            e.mul_(scale)
        e.exp_()
        if vocab_size < logits.shape[-1] * self._vocab_shards(logits, axis):   # padded ids hold no probability
            e.mul_(self._local_ids(logits, axis) < vocab_size)
        log_s = torch.log(self._vocab_sum(e.sum(-1, keepdim=True), logits, axis))
        s = 1.0 if scale is None else scale
        row = torch.cat([(target - g) * s - log_s, (top_v - g) * s - log_s, top_id], dim=-1)
        return self._wrap(row, values.placements, DType.float32, "logprobs")

    def _local_ids(self, logits: SimTensor, axis: int) -> torch.Tensor:
        """Each chip's global vocab ids, broadcast over ``[R', C', 1, W]``."""
        return torch.arange(logits.shape[-1], device=self.device, dtype=torch.float32) + self._vocab_offsets(logits, axis)

    def _vocab_sum(self, local: torch.Tensor, logits: SimTensor, axis: int) -> torch.Tensor:
        """Per-chip ``[B, 1]`` partial sums added over the vocab axis (all-gathered, then summed)."""
        gathered = self.all_gather(self._wrap(local, logits.placements, DType.float32, "logprob_sums"), dim=-1, cluster_axis=axis)
        return gathered.data.sum(-1, keepdim=True)
