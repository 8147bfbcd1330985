"""Sampling on the ttnn backend: ``ttdist.mesh.sampling``'s algorithm in ttnn ops (local ``topk``,
``all_gather`` of the candidates, the draw with cumulative sums as matmuls with triangular ones);
the ids stay on device.

The candidates are float32 and the draw's sort is ``ttnn.topk`` on those float32 values (ttnn
0.81.1 takes FLOAT32 there): the top-p threshold is then the float32 value of the last kept
candidate, as in the numpy reference and the simulator, and every draw is theirs."""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np
import ttnn

from ttdist.mesh import sampling, token_mask
from ttdist.mesh.penalties import MIN_P
from ttdist.mesh.placement import Placements, Shard, require_reduced
from ttdist.mesh.precision import DType
from ttdist.mesh.spec import MeshSpec
from ttdist.mesh.ttnn import configs as cfg
from ttdist.mesh.ttnn.tensor import INPUT, ROWS, TtnnTensor


@runtime_checkable
class SamplingHost(Protocol):
    """What ``SamplingOps`` uses of the backend it is mixed into (``TtnnBackend``)."""

    spec: MeshSpec

    def _wrap(self, value: ttnn.Tensor, shape, placements: Placements, dtype: DType | None = None,
              name: str = "activations", kind: str = ROWS, heads: int = 0) -> TtnnTensor: ...

    def _rows_value(self, t: TtnnTensor) -> ttnn.Tensor: ...

    def _const(self, key: tuple, make: Callable[[], ttnn.Tensor]) -> ttnn.Tensor: ...

    def _upload(self, array: np.ndarray, mesh_dims, dtype: DType, layout, memory) -> ttnn.Tensor: ...

    def _materialize(self, t: TtnnTensor, dtype: DType, layout, memory, shape4=None) -> ttnn.Tensor: ...

    def from_host_per_device(self, array, placements: Placements, *, dtype: DType = DType.bfloat16,
                             name: str = "tensor") -> TtnnTensor: ...

    def all_gather(self, x: TtnnTensor, dim: int, cluster_axis: int | None = None, *, topology=None,
                   num_links=None) -> TtnnTensor: ...


class SamplingOps:
    """``sample`` of ``TtnnBackend`` (see ``SamplingHost``)."""

    def sample(self, logits: TtnnTensor, vocab_size: int, params: TtnnTensor, cluster_axis: int,
               penalty_params: TtnnTensor | None = None, allowed: TtnnTensor | None = None) -> TtnnTensor:
        """``ttdist.mesh.sampling``'s algorithm in ttnn ops: local ``topk``, ``all_gather`` of the
        candidates, the draw (cumulative sums as matmuls with triangular ones); ids stay on device.
        ``allowed``: grammar-mask words each chip unpacks and applies to its slice first."""
        batch = logits.shape[0]
        values, ids = self._candidates(logits, vocab_size, cluster_axis, allowed)
        token = self._draw(values.value, ids.value, params.value, batch, values.shape[-1],
                           self._min_p(penalty_params, batch))
        return self._wrap(token, (batch,), values.placements, DType.float32, "token_ids", INPUT)

    @staticmethod
    def _min_p(penalty_params: TtnnTensor | None, batch: int):
        """The ``min_p`` column ``[1, 1, B, 1]`` of the penalties' parameter rows (None: no penalties)."""
        if penalty_params is None:
            return None
        return ttnn.slice(penalty_params.value, [0, 0, 0, MIN_P], [1, 1, batch, MIN_P + 1])

    def _candidates(self, logits: TtnnTensor, vocab_size: int, cluster_axis: int,
                    allowed: TtnnTensor | None = None) -> tuple[TtnnTensor, TtnnTensor]:
        """Step 1: each chip's top ``local_k`` (padded ids masked), all-gathered: values and ids ``[B, M]``."""
        require_reduced("sample", logits)
        axis = self.spec.resolve_axis("sample", cluster_axis)
        batch, width = logits.shape
        n = self.spec.shape[axis] if isinstance(logits.placements[axis], Shard) else 1
        k = sampling.local_k(width, width * n, vocab_size)
        rows = self._rows_value(logits)
        if allowed is not None:
            rows = self._masked(rows, allowed.value)
        values, index = ttnn.topk(rows, k, dim=-1, largest=True, sorted=True)
        offset = self._const(("vocab_offset", axis, width, k), lambda: self._vocab_offsets(logits, axis, width, k))
        ids = ttnn.add(ttnn.typecast(index, ttnn.float32), offset)
        values = ttnn.typecast(values, ttnn.float32)
        if vocab_size < width * n:  # padded ids: their zero logits are never drawn
            values = ttnn.add(values, ttnn.multiply(ttnn.ge(ids, float(vocab_size), dtype=ttnn.float32), sampling.MASK))
        cand = [self._wrap(v, (batch, k), logits.placements, DType.float32, "candidates") for v in (values, ids)]
        gathered = [self.all_gather(c, dim=-1, cluster_axis=axis) for c in cand]
        return gathered[0], gathered[1]

    @staticmethod
    def _masked(rows, words) -> ttnn.Tensor:
        """``token_mask``'s unpacking on each chip: 32 bit planes of its ``[1, 1, B, W]`` words, concatenated
        into ``[1, 1, B, width]`` 0/1, then ``logits + (allowed - 1) * OFF`` in float32."""
        planes = [ttnn.bitwise_and(words if j == 0 else ttnn.bitwise_right_shift(words, j), 1) for j in range(token_mask.PLANES)]
        keep = ttnn.typecast(ttnn.concat(planes, dim=-1), ttnn.float32)
        off = ttnn.multiply(ttnn.subtract(keep, 1.0), token_mask.OFF)
        return ttnn.add(ttnn.typecast(rows, ttnn.float32), off)

    def _vocab_offsets(self, logits: TtnnTensor, axis: int, width: int, k: int) -> ttnn.Tensor:
        """Each chip's first global vocab id, ``[1, 1, 1, k]`` per chip (added to its local topk ids)."""
        sharded = isinstance(logits.placements[axis], Shard) and self.spec.shape[axis] > 1
        coords = np.indices(self.spec.shape)[axis] if sharded else np.zeros(self.spec.shape, np.int64)
        full = np.ascontiguousarray(np.broadcast_to((coords * width).astype(np.float32)[:, :, None, None], (*self.spec.shape, 1, k)))
        t = self.from_host_per_device(full, logits.placements, dtype=DType.float32, name="vocab_offset")
        return self._materialize(t, DType.float32, ttnn.TILE_LAYOUT, ttnn.DRAM_MEMORY_CONFIG)

    def _ones_upper(self, n: int) -> ttnn.Tensor:
        """``[n, n]`` with ones where row <= column: ``x @ it`` is the running sum of ``x``'s rows."""
        return self._const(("triu", n), lambda: self._upload(np.triu(np.ones((1, 1, n, n), np.float32)), (None, None),
                                                             DType.float32, ttnn.TILE_LAYOUT, ttnn.DRAM_MEMORY_CONFIG))

    def _draw(self, v, ids, params, batch: int, m: int, min_p=None) -> ttnn.Tensor:
        """``sampling.draw`` over gathered candidates ``[1, 1, B, M]`` (float32); ``min_p`` ``[1, 1, B, 1]``."""
        top = min(sampling.K, m)
        mem = ttnn.DRAM_MEMORY_CONFIG
        col = [ttnn.slice(params, [0, 0, 0, i], [1, 1, batch, i + 1]) for i in range(sampling.PARAMS)]
        t_inv, k, p, u = ttnn.reciprocal(col[0]), col[1], col[2], col[3]
        s, _ = ttnn.topk(v, top, dim=-1, largest=True, sorted=True)
        rank = self._const(("rank", batch, top), lambda: self._upload(
            np.broadcast_to(np.arange(top, dtype=np.float32), (1, 1, batch, top)).copy(), (None, None),
            DType.float32, ttnn.TILE_LAYOUT, mem))
        in_k = ttnn.lt(rank, k, dtype=ttnn.float32)
        z0 = ttnn.multiply(ttnn.slice(s, [0, 0, 0, 0], [1, 1, batch, 1]), t_inv)
        scaled = ttnn.exp(ttnn.subtract(ttnn.multiply(s, t_inv), z0))
        if min_p is not None:
            in_k = ttnn.multiply(in_k, ttnn.ge(scaled, min_p, dtype=ttnn.float32))
        e = ttnn.multiply(scaled, in_k)
        prob = ttnn.multiply(e, ttnn.reciprocal(ttnn.sum(e, dim=-1, keepdim=True)))
        cum = ttnn.matmul(prob, self._ones_upper(top), memory_config=mem, compute_kernel_config=cfg.precise_compute())
        kept = ttnn.multiply(in_k, ttnn.lt(ttnn.subtract(cum, prob), p, dtype=ttnn.float32))
        last = ttnn.subtract(ttnn.sum(kept, dim=-1, keepdim=True), 1.0)
        threshold = ttnn.sum(ttnn.multiply(s, ttnn.eq(rank, last, dtype=ttnn.float32)), dim=-1, keepdim=True)
        weight = ttnn.multiply(ttnn.exp(ttnn.subtract(ttnn.multiply(v, t_inv), z0)), ttnn.ge(v, threshold, dtype=ttnn.float32))
        cdf = ttnn.matmul(weight, self._ones_upper(m), memory_config=mem, compute_kernel_config=cfg.precise_compute())
        total = ttnn.slice(cdf, [0, 0, 0, m - 1], [1, 1, batch, m])
        hit = ttnn.gt(cdf, ttnn.multiply(u, total), dtype=ttnn.float32)
        hits = ttnn.matmul(hit, self._ones_upper(m), memory_config=mem, compute_kernel_config=cfg.precise_compute())
        first = ttnn.multiply(hit, ttnn.eq(hits, 1.0, dtype=ttnn.float32))
        return ttnn.sum(ttnn.multiply(first, ids), dim=-1, keepdim=True)
