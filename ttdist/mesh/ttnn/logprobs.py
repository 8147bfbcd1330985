"""Log-probabilities on the ttnn backend: ``ttdist.mesh.logprobs``' algorithm in ttnn ops, on
sampling's gathered candidates. A separate path: the default decode step's ops are unchanged;
``sample_logprobs`` runs when a user of the batch asks for logprobs, ``prompt_logprobs`` over a
prefill chunk's rows. Only ``[B, 1 + 2k]`` float32 rows leave the mesh."""

from __future__ import annotations

import numpy as np
import ttnn

from ttdist.mesh import logprobs
from ttdist.mesh.placement import Shard
from ttdist.mesh.precision import DType
from ttdist.mesh.ttnn.host import first_device
from ttdist.mesh.ttnn.tensor import INPUT, TtnnTensor


class LogprobOps:
    """``sample_logprobs`` and ``prompt_logprobs`` of ``TtnnBackend`` (with ``SamplingOps``, whose
    ``SamplingHost`` surface it uses too)."""

    def sample_logprobs(self, logits: TtnnTensor, vocab_size: int, params: TtnnTensor, cluster_axis: int,
                        penalty_params: TtnnTensor | None = None, allowed: TtnnTensor | None = None, *,
                        processed: bool = False) -> tuple[TtnnTensor, TtnnTensor]:
        """``sample``'s token ids and each user's logprob row for the token drawn, of the ``logits``
        given; ``processed``: of the distribution after temperature (``params``' first column) and
        the grammar mask ``allowed``."""
        batch = logits.shape[0]
        values, ids = self._candidates(logits, vocab_size, cluster_axis, allowed)
        token = self._draw(values.value, ids.value, params.value, batch, values.shape[-1],
                           self._min_p(penalty_params, batch))
        scale = ttnn.reciprocal(ttnn.slice(params.value, [0, 0, 0, 0], [1, 1, batch, 1])) if processed else None
        # the drawn token is one of the candidates: its logit is picked from them
        target = ttnn.sum(ttnn.multiply(values.value, ttnn.eq(ids.value, token, dtype=ttnn.float32)), dim=-1, keepdim=True)
        if processed and allowed is not None:   # the processed distribution excludes what the grammar masks
            logits = self._wrap(self._masked(self._rows_value(logits), allowed.value), logits.shape, logits.placements,
                                DType.float32, "masked_logits")
        rows = self._logprob_rows(logits, vocab_size, cluster_axis, values, ids, target, scale)
        return self._wrap(token, (batch,), values.placements, DType.float32, "token_ids", INPUT), rows

    def prompt_logprobs(self, logits: TtnnTensor, vocab_size: int, targets: TtnnTensor, cluster_axis: int) -> TtnnTensor:
        """Logprob rows ``[T, 1 + 2k]`` of raw logits ``[T, V/n]`` for the target ids (``[T, 1]``, or the
        ``[B]`` ids ``sample`` drew, an input-kind ``[1, 1, B, 1]`` column): each chip picks a
        target's logit from its slice (one-hot), the picks are added over the vocab axis."""
        values, ids = self._candidates(logits, vocab_size, cluster_axis)
        axis = self.spec.resolve_axis("logprobs", cluster_axis)
        width = logits.shape[1]
        local_ids = self._const(("vocab_ids", axis, width), lambda: self._vocab_ids(logits, axis, width))
        x = ttnn.typecast(self._rows_value(logits), ttnn.float32)
        wanted = targets.value if targets.kind == INPUT else self._rows_value(targets)
        picked = ttnn.multiply(x, ttnn.eq(local_ids, wanted, dtype=ttnn.float32))
        target = self._vocab_sum(ttnn.sum(picked, dim=-1, keepdim=True), logits.shape[0], logits, axis)
        return self._logprob_rows(logits, vocab_size, cluster_axis, values, ids, target, None)

    def read_rows(self, t: TtnnTensor) -> np.ndarray:
        """A replicated ``[B, W]`` float32 tensor (logprob rows), read once from the first chip."""
        rows = first_device(t.value).reshape(-1, t.value.shape[-1])[: t.shape[0], : t.shape[1]]
        self.transfers.readback(rows.size * 4)
        return np.ascontiguousarray(rows, dtype=np.float32)

    def _logprob_rows(self, logits: TtnnTensor, vocab_size: int, cluster_axis: int, values: TtnnTensor, ids: TtnnTensor,
                      target, scale) -> TtnnTensor:
        """Rows for ``target``, the ``[B, 1]`` logit of each row's target token (replicated)."""
        axis = self.spec.resolve_axis("logprobs", cluster_axis)
        batch, width = logits.shape
        k = logprobs.top_width(values.shape[-1])
        labels = ttnn.typecast(ids.value, ttnn.uint32)
        top_v, top_id = ttnn.topk(values.value, k, dim=-1, largest=True, sorted=True, indices_tensor=labels)
        g = ttnn.slice(top_v, [0, 0, 0, 0], [1, 1, batch, 1])
        z = ttnn.subtract(ttnn.typecast(self._rows_value(logits), ttnn.float32), g)
        e = ttnn.exp(z if scale is None else ttnn.multiply(z, scale))
        n = self.spec.shape[axis] if isinstance(logits.placements[axis], Shard) else 1
        if vocab_size < width * n:  # padded ids hold no probability
            local_ids = self._const(("vocab_ids", axis, width), lambda: self._vocab_ids(logits, axis, width))
            e = ttnn.multiply(e, ttnn.lt(local_ids, float(vocab_size), dtype=ttnn.float32))
        log_s = ttnn.log(self._vocab_sum(ttnn.sum(e, dim=-1, keepdim=True), batch, logits, axis))

        def logprob(v):
            shifted = ttnn.subtract(v, g)
            return ttnn.subtract(shifted if scale is None else ttnn.multiply(shifted, scale), log_s)

        row = ttnn.concat([logprob(target), logprob(top_v), ttnn.typecast(top_id, ttnn.float32)], dim=-1)
        return self._wrap(row, (batch, 1 + 2 * k), values.placements, DType.float32, "logprobs")

    def _vocab_sum(self, local, batch: int, logits: TtnnTensor, axis: int):
        """Per-chip ``[B, 1]`` partial sums added over the vocab axis (all-gathered, then summed)."""
        gathered = self.all_gather(self._wrap(local, (batch, 1), logits.placements, DType.float32, "logprob_sums"), dim=-1,
                                   cluster_axis=axis)
        return ttnn.sum(gathered.value, dim=-1, keepdim=True)

    def _vocab_ids(self, logits: TtnnTensor, axis: int, width: int) -> ttnn.Tensor:
        """Each chip's global vocab ids ``[1, 1, 1, width]`` (float32), resident."""
        sharded = isinstance(logits.placements[axis], Shard) and self.spec.shape[axis] > 1
        coords = np.indices(self.spec.shape)[axis] if sharded else np.zeros(self.spec.shape, np.int64)
        full = (coords * width).astype(np.float32)[:, :, None, None] + np.arange(width, dtype=np.float32)[None, None, None, :]
        t = self.from_host_per_device(np.ascontiguousarray(full), logits.placements, dtype=DType.float32, name="vocab_ids")
        return self._materialize(t, DType.float32, ttnn.TILE_LAYOUT, ttnn.DRAM_MEMORY_CONFIG)
