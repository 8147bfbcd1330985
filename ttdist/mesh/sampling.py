"""Temperature / top-k / top-p draws on the host over candidate logits (numpy).

Both backends use it, so a seeded request draws the same tokens on the simulator and on
chips: the generator is seeded with ``seed * 1_000_003 + step``, independent of the batch.
"""

from __future__ import annotations

import numpy as np

from ttdist.mesh.backend import SamplingBatch

TILE = 32
MAX_DEVICE_TOP_K = 32


class HostSampler:
    """Temperature / top-k / top-p draws over device-chosen candidates."""

    @staticmethod
    def candidates(params: SamplingBatch, users: np.ndarray, vocab: int) -> int:
        """How many top candidates the device must return (0: the users need full rows)."""
        ks = np.asarray(params.top_k)[users]
        if np.all((ks > 0) & (ks <= MAX_DEVICE_TOP_K)) and vocab >= TILE:
            return int(min(ks.max(), vocab))
        return 0

    @staticmethod
    def draw(params: SamplingBatch, users: np.ndarray, values: np.ndarray, indices: np.ndarray | None) -> np.ndarray:
        out = np.zeros(len(users), dtype=np.int64)
        for i, b in enumerate(users):
            row = np.asarray(values[b], dtype=np.float64) / float(params.temperature[b])
            ids = np.arange(row.size) if indices is None else np.asarray(indices[b], dtype=np.int64)
            k = int(params.top_k[b])
            if 0 < k < row.size:
                kth = np.sort(row)[-k]
                row = np.where(row < kth, -np.inf, row)
            p = float(params.top_p[b])
            if 0 < p < 1:
                order = np.argsort(-row, kind="stable")
                probs = _softmax(row[order])
                drop = (np.cumsum(probs) - probs) >= p
                row = row.copy()
                row[order[drop]] = -np.inf
            probs = _softmax(row)
            seed = int(params.seed[b])
            rng = np.random.default_rng((seed * 1_000_003 + int(params.step[b])) % (2**63) if seed >= 0 else None)
            out[i] = ids[int(rng.choice(row.size, p=probs))]
        return out


def _softmax(row: np.ndarray) -> np.ndarray:
    shifted = np.exp(row - np.max(row))
    return shifted / shifted.sum()
