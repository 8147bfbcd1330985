"""Sampling on the mesh: one algorithm, written for numpy (the reference), the simulator and ttnn.

Logits stay vocab-sharded on the chips; only the B sampled token ids leave the mesh.

1. Candidates: each chip keeps the top ``local_k`` of its logits ``[B, V/n]`` with their global
   token ids (``K`` plus the padded vocab columns, whose zero logits must not crowd out real
   ones) and sets padded ids' values to ``MASK``; an all-gather over the vocab axis gives every
   chip the same ``M = local_k * n`` candidates per user, in chip order.
2. The draw, per user, from the ``[B, 4]`` parameters ``device_params`` prepares on the host
   (temperature ``T``, top-k ``k``, top-p ``p``, a uniform ``u``):
   * ``s`` = the top ``K`` candidate values, sorted; ``P`` = softmax of ``s[:k] / T``;
   * keep sorted rank j if ``j < k`` and the mass before it ``C_j - P_j < p``; the smallest kept
     value is the threshold, and every candidate at or above it is kept;
   * weights ``exp(v / T - s_0 / T)`` over the kept candidates in chip order, cumulated; the
     token is the id of the first candidate whose cumulative weight exceeds ``u`` times the total.
   Greedy users get ``k = 1, T = 1, u = 0``: the first candidate holding the maximum.

``u`` is drawn on the host from the user's own generator, seeded with ``seed * 1_000_003 +
step``, so a seeded request draws the same tokens whatever batch or slot it runs in (ttnn's
fused ``ttnn.sampling`` takes one seed per batch, which cannot give that). top-k is capped at
``K`` candidates (0 = off means the top ``K``), as serving stacks on Tenstorrent chips do.
Ties at the threshold keep every tied candidate.

Every step compares the candidates' own float32 values: the sort of step 2 and the threshold
test ``v >= s[last]`` see the same numbers, so the last kept candidate is always kept (greedy:
the maximum). All three implementations sort float32 (numpy, torch, and on ttnn ``ttnn.topk``,
which takes float32 and returns 32-bit indices); a sort of bf16-rounded copies would give a
threshold above any candidate whose value rounds up, keeping nothing there.
"""

from __future__ import annotations

import numpy as np

from ttdist.mesh.backend import SamplingBatch

K = 32
MASK = -1e9
PARAMS = 4  # temperature, top_k, top_p, uniform
_U_MAX = 1.0 - 2.0 ** -20


def device_params(params: SamplingBatch, rng: np.random.Generator | None = None) -> np.ndarray:
    """``[B, 4]`` float32 rows (T, k, p, u) that make every user's draw branch-free on the device."""
    temperature = np.asarray(params.temperature, dtype=np.float64)
    top_k = np.asarray(params.top_k, dtype=np.int64)
    top_p = np.asarray(params.top_p, dtype=np.float64)
    greedy = temperature <= 0
    out = np.empty((len(temperature), PARAMS), dtype=np.float32)
    out[:, 0] = np.where(greedy, 1.0, temperature)
    out[:, 1] = np.where(greedy, 1, np.where((top_k <= 0) | (top_k > K), K, top_k))
    out[:, 2] = np.where(greedy | (top_p <= 0) | (top_p >= 1), 2.0, top_p)
    for b in range(len(temperature)):
        if greedy[b]:
            out[b, 3] = 0.0
            continue
        seed = int(params.seed[b])
        gen = np.random.default_rng((seed * 1_000_003 + int(params.step[b])) % (2**63)) if seed >= 0 else (rng or np.random.default_rng())
        out[b, 3] = min(gen.random(), _U_MAX)
    return out


def local_k(width: int, padded_vocab: int, vocab: int) -> int:
    """Candidates each chip keeps: K plus the padded columns (at most one tile per chip)."""
    return min(K + (padded_vocab - vocab), width)


def candidates(logits: np.ndarray, vocab: int, shards: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference of step 1: each of ``shards`` vocab slices keeps its top ``local_k``; values and
    ids in chip order, padded ids masked."""
    values, ids = [], []
    for part, rows in enumerate(np.split(logits.astype(np.float32), shards, axis=-1)):
        k = local_k(rows.shape[-1], logits.shape[-1], vocab)
        top = np.argsort(-rows, axis=-1, kind="stable")[:, :k]
        gid = top + part * rows.shape[-1]
        values.append(np.where(gid >= vocab, np.float32(MASK), np.take_along_axis(rows, top, axis=-1)))
        ids.append(gid)
    return np.concatenate(values, axis=-1), np.concatenate(ids, axis=-1).astype(np.float32)


def draw(values: np.ndarray, ids: np.ndarray, params: np.ndarray, min_p: np.ndarray | None = None) -> np.ndarray:
    """Reference of step 2 over gathered candidates ``[B, M]``: token ids ``[B]``. ``min_p`` ``[B]``
    (``ttdist.mesh.penalties``): sorted ranks whose ``exp(v / T - s_0 / T)`` is below it leave the
    top-k set first."""
    v = values.astype(np.float32)
    t, k, p, u = (params[:, i : i + 1].astype(np.float32) for i in range(PARAMS))
    top = min(K, v.shape[-1])
    s = -np.sort(-v, axis=-1)[:, :top]
    rank = np.arange(top, dtype=np.float32)[None, :]
    in_k = rank < k
    z0 = s[:, :1] / t
    scaled = np.exp(s / t - z0)
    if min_p is not None:
        in_k = in_k & (scaled >= np.asarray(min_p, dtype=np.float32).reshape(-1, 1))
    e = scaled * in_k
    prob = e / e.sum(-1, keepdims=True)
    cum = np.cumsum(prob, axis=-1)
    kept = in_k & ((cum - prob) < p)
    last = kept.sum(-1, keepdims=True) - 1
    threshold = (s * (rank == last)).sum(-1, keepdims=True)
    weight = np.exp(v / t - z0) * (v >= threshold)
    cdf = np.cumsum(weight, axis=-1)
    hit = (cdf > u * cdf[:, -1:]).astype(np.float32)
    first = hit * (np.cumsum(hit, axis=-1) == 1)
    return (first * ids).sum(-1).astype(np.int64)
