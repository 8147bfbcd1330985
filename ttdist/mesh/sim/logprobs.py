"""Log-probabilities on the simulator: ``ttdist.mesh.logprobs``' algorithm in torch, on sampling's
gathered candidates (``sample_logprobs`` for decode, ``prompt_logprobs`` for every prompt row)."""

from __future__ import annotations

import numpy as np
import torch

from ttdist.mesh import logprobs
from ttdist.mesh.precision import DType
from ttdist.mesh.sim.sampling import draw
from ttdist.mesh.sim.tensor import SimTensor


class LogprobOps:
    """``sample_logprobs`` and ``prompt_logprobs`` of ``SimBackend`` (with ``SamplingOps``)."""

    def sample_logprobs(self, logits: SimTensor, vocab_size: int, params: SimTensor, cluster_axis: int,
                        *, processed: bool = False) -> tuple[SimTensor, SimTensor]:
        """``sample``'s token ids and each user's logprob row for the token drawn (``logprobs.rows``);
        ``processed``: of the distribution after temperature (``params``' first column)."""
        values, ids = self._candidates(logits, vocab_size, cluster_axis)
        token = draw(values.data, ids.data, params.data).round()
        scale = 1.0 / params.data[..., :1].float() if processed else None
        rows = self._logprob_rows(logits, vocab_size, cluster_axis, values, ids, token.unsqueeze(-1), scale)
        return self._wrap(token.to(torch.int32), values.placements, DType.int32, "token_ids"), rows

    def prompt_logprobs(self, logits: SimTensor, vocab_size: int, targets: SimTensor, cluster_axis: int) -> SimTensor:
        """Logprob rows ``[T, 1 + 2k]`` of raw logits ``[T, V/n]`` for the target ids ``[T, 1]``."""
        values, ids = self._candidates(logits, vocab_size, cluster_axis)
        return self._logprob_rows(logits, vocab_size, cluster_axis, values, ids, targets.data.float(), None)

    def read_rows(self, t: SimTensor) -> np.ndarray:
        """A replicated ``[B, W]`` float32 tensor (logprob rows), read once."""
        rows = t.data[0, 0]
        self.transfers.readback(rows.numel() * 4)
        return rows.cpu().numpy().astype(np.float32)

    def _logprob_rows(self, logits: SimTensor, vocab_size: int, cluster_axis: int, values: SimTensor, ids: SimTensor,
                      target: torch.Tensor, scale: torch.Tensor | None) -> SimTensor:
        axis = self.spec.resolve_axis("logprobs", cluster_axis)
        k = logprobs.top_width(values.shape[-1])
        top_v, order = (t[..., :k] for t in values.data.sort(dim=-1, descending=True, stable=True))  # ties: chip order
        top_id = ids.data.gather(-1, order)
        g = top_v[..., :1]
        x = logits.data.float()
        local_ids = torch.arange(x.shape[-1], device=self.device, dtype=torch.float32) + self._vocab_offsets(logits, axis)
        z = x - g if scale is None else (x - g) * scale
        parts = torch.cat([(torch.exp(z) * (local_ids < vocab_size)).sum(-1, keepdim=True),
                           (x * (local_ids == target)).sum(-1, keepdim=True)], dim=-1)
        summed = self.all_gather(self._wrap(parts, logits.placements, DType.float32, "logprob_parts"), dim=-1, cluster_axis=axis)
        n = summed.shape[-1] // 2
        both = summed.data.unflatten(-1, (n, 2)).sum(-2)
        log_s, t = torch.log(both[..., :1]), both[..., 1:]
        s = 1.0 if scale is None else scale
        row = torch.cat([(t - g) * s - log_s, (top_v - g) * s - log_s, top_id], dim=-1)
        return self._wrap(row, values.placements, DType.float32, "logprobs")
