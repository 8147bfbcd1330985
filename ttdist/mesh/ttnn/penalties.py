"""Penalties on the ttnn backend: ``ttdist.mesh.penalties``' algorithm in ttnn eltwise ops, each
chip on its vocab slice; ``count_tokens`` adds a one-hot of the sampled ids into the persistent
counts tensor in place (``output_tensor``), so a captured decode trace keeps counting."""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np
import ttnn

from ttdist.mesh import penalties as pen
from ttdist.mesh.errors import MeshError
from ttdist.mesh.placement import Placements, Shard, require_reduced
from ttdist.mesh.precision import DType
from ttdist.mesh.spec import MeshSpec
from ttdist.mesh.ttnn.tensor import ROWS, TtnnTensor


@runtime_checkable
class PenaltyHost(Protocol):
    """What ``PenaltyOps`` uses of the backend it is mixed into (``TtnnBackend``)."""

    spec: MeshSpec

    def _wrap(self, value: ttnn.Tensor, shape, placements: Placements, dtype: DType | None = None,
              name: str = "activations", kind: str = ROWS, heads: int = 0) -> TtnnTensor: ...

    def _rows_value(self, t: TtnnTensor) -> ttnn.Tensor: ...

    def _const(self, key: tuple, make: Callable[[], ttnn.Tensor]) -> ttnn.Tensor: ...

    def input_tensor(self, array, placements: Placements = ..., *, name: str = "input") -> TtnnTensor: ...


class PenaltyOps:
    """``penalize`` and ``count_tokens`` of ``TtnnBackend`` (see ``PenaltyHost``)."""

    def penalize(self, logits: TtnnTensor, state: pen.PenaltyState, *, in_place: bool = False) -> TtnnTensor:
        """Penalized float32 logits ``[B, V/n]``: ``penalties.penalize`` on every chip's slice (the
        draw then sorts them in float32, see ``SamplingOps.sample``). ``in_place`` is the simulator's
        saving; here the eltwise ops write new tensors either way (a captured step allocates them once)."""
        require_reduced("penalize", logits)
        for name in pen.STATE:
            t = getattr(state, name)
            if t.placements != logits.placements or t.shape != logits.shape:
                raise MeshError(f"penalize: {name} {t.name!r} is {t.shape} {t.placements}, the logits {logits.shape} {logits.placements}")
        batch = logits.shape[0]
        q = state.params.value
        col = [ttnn.slice(q, [0, 0, 0, i], [1, 1, batch, i + 1]) for i in range(pen.BAN_SCALE + 1)]
        raw = self._rows_value(logits)
        x = raw if raw.dtype == ttnn.float32 else ttnn.typecast(raw, ttnn.float32)
        counts = state.counts.value
        x = ttnn.add(x, state.bias.value)
        x = ttnn.add(x, ttnn.multiply(state.ban.value, col[pen.BAN_SCALE]))
        used = ttnn.add(state.prompt.value, counts)
        factor = ttnn.add(ttnn.multiply(ttnn.ge(x, 0.0, dtype=ttnn.float32), col[pen.REPETITION_STEP]), col[pen.REPETITION])
        x = ttnn.multiply(x, ttnn.add(ttnn.multiply(factor, ttnn.gt(used, 0.0, dtype=ttnn.float32)),
                                      ttnn.le(used, 0.0, dtype=ttnn.float32)))
        x = ttnn.subtract(x, ttnn.multiply(counts, col[pen.FREQUENCY]))
        x = ttnn.subtract(x, ttnn.multiply(ttnn.gt(counts, 0.0, dtype=ttnn.float32), col[pen.PRESENCE]))
        return self._wrap(x, logits.shape, logits.placements, DType.float32, "penalized_logits")

    def count_tokens(self, state: pen.PenaltyState, token_ids: TtnnTensor, cluster_axis: int) -> None:
        """``counts`` += (the chip's vocab ids == each row's sampled id), written into ``counts`` itself."""
        counts = state.counts
        axis = self.spec.resolve_axis("count_tokens", cluster_axis)
        batch, width = counts.shape
        vocab = self._const(("vocab_rows", axis, batch, width, counts.placements),
                            lambda: self._vocab_rows(counts.placements, axis, batch, width))
        onehot = ttnn.eq(vocab, token_ids.value, dtype=ttnn.float32)
        ttnn.add(counts.value, onehot, output_tensor=counts.value)

    def _vocab_rows(self, placements: Placements, axis: int, batch: int, width: int) -> ttnn.Tensor:
        """Each chip's global vocab ids ``[B, V/n]`` (float32, exact below 2**24), every row alike."""
        n = self.spec.shape[axis] if isinstance(placements[axis], Shard) else 1
        ids = np.broadcast_to(np.arange(width * n, dtype=np.float32), (batch, width * n)).copy()
        return self.input_tensor(ids, placements, name="vocab_rows").value
