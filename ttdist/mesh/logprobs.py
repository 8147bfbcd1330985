"""Log-probabilities on the mesh: one algorithm, written for numpy (the reference), the simulator
and ttnn, beside sampling's (``ttdist.mesh.sampling``) and sharing its candidates.

Per row (a decode user, or a prompt position) of vocab-sharded logits ``x`` ``[B, V/n]``, with a
per-row ``scale`` (1, or ``1 / temperature`` for the processed distribution) and a ``target``
token (the sampled one, or the next prompt token):

1. the candidates of sampling (each chip's top ``local_k``, all-gathered over the vocab axis);
   ``G`` = their maximum, the global maximum logit; the top ``TOP`` candidates and their ids
   (ttnn: ``topk`` labelled with the candidates' ids);
2. each chip sums ``exp(scale * (x - G))`` over its own real vocab ids (padding excluded); the
   ``[B, 1]`` sums are all-gathered over the vocab axis and added: ``S``;
3. the target's logit ``t``: a drawn token is one of the candidates, so decode picks it from them;
   a prompt target may not be, so each chip picks it from its slice with a one-hot (zero where
   another chip holds it), gathered and added;
4. ``logprob(v) = scale * (v - G) - log S`` for ``t`` and the top ``TOP`` values.

Only a row of ``1 + 2 * k`` numbers per user leaves the mesh (``k = top_width``: ``TOP`` unless
fewer candidates exist): the target's logprob, the top ``k`` logprobs, their ids. ``k`` is fixed
(a request's N <= TOP is cut on the host), so the programs are the same whatever N a request asks.
"""

from __future__ import annotations

import numpy as np

from ttdist.mesh import sampling

TOP = 20          # the most top logprobs a request may ask for


def top_width(candidates: int) -> int:
    """How many top entries the device computes from ``candidates`` gathered per row."""
    return min(TOP, candidates)


def rows(logits: np.ndarray, vocab: int, shards: int, targets: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """Reference: ``[B, 1 + 2 * k]`` float32 rows for global logits ``[B, V_padded]`` split in
    ``shards`` vocab slices."""
    x = logits.astype(np.float64)
    scale_col = np.ones((len(x), 1)) if scale is None else np.asarray(scale, np.float64).reshape(-1, 1)
    values, ids = sampling.candidates(logits, vocab, shards)
    order = np.argsort(-values, axis=-1, kind="stable")[:, : top_width(values.shape[-1])]
    top_v = np.take_along_axis(values, order, -1).astype(np.float64)
    top_id = np.take_along_axis(ids, order, -1)
    g = top_v[:, :1]
    real = x[:, :vocab]
    log_s = np.log(np.exp(scale_col * (real - g)).sum(-1, keepdims=True))
    target = np.take_along_axis(real, np.asarray(targets, np.int64).reshape(-1, 1), -1)
    return np.concatenate([scale_col * (target - g) - log_s, scale_col * (top_v - g) - log_s, top_id], -1).astype(np.float32)


def split(row: np.ndarray, n: int) -> tuple[float, list[tuple[int, float]]]:
    """One row: the target's logprob and the best ``n`` (id, logprob) pairs, best first."""
    k = (len(row) - 1) // 2
    return float(row[0]), [(int(round(row[1 + k + j])), float(row[1 + j])) for j in range(min(n, k))]
