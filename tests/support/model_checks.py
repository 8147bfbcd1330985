"""What the model tests compare with: the meshes they run on, a prompt, PCC, a causal mask,
and a simulator runner built from a checkpoint."""

from __future__ import annotations

import numpy as np

MESHES = ["1x1", "1x2", "1x8", "2x4", "8x4"]
PROMPT = [5, 17, 300, 2000, 45, 9, 11, 12, 99, 1000, 3, 77, 8000, 123]


def pcc(a, b) -> float:
    """Pearson correlation of two arrays, flattened."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def causal_mask(t: int):
    """The additive (1, 1, t, t) mask transformers' eager attention takes."""
    import torch

    return torch.triu(torch.full((t, t), float("-inf")), diagonal=1)[None, None]


def mesh_runner(ckpt, cache, mesh, **kw):
    """A float32 simulator runner of ``ckpt`` on ``mesh`` (32 pages of 32, a batch of 4 unless given)."""
    from ttdist.model.runner import MeshModelRunner

    kw.setdefault("max_batch", 4)  # the fixed slot batch; small keeps the simulator's steps cheap
    return MeshModelRunner.from_checkpoint(ckpt, mesh=mesh, dtype="float32", num_pages=32, page_size=32, cache_dir=cache, **kw)
