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


TINY_LAYOUT = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32, max_position_embeddings=512)


def tiny_random_weights(spec, dtype, seed: int = 0, scale: float = 0.05):
    """A small random Llama (``TINY_LAYOUT``) prepared for ``spec`` in ``dtype``: norms near 1, the
    other weights normal times ``scale``."""
    from ttdist.model.config import LlamaConfig
    from ttdist.model.weights import expected_shapes, prepare

    config = LlamaConfig(**TINY_LAYOUT)
    rng = np.random.default_rng(seed)
    hf = {k: ((1 + 0.1 * rng.standard_normal(s)) if "norm" in k else rng.standard_normal(s) * scale).astype(np.float32)
          for k, s in expected_shapes(config).items()}
    return prepare(config, hf, spec, dtype)


def reference_greedy(checkpoint, prompt, n):
    """Greedy ``n`` tokens after ``prompt`` from transformers' own Llama on ``checkpoint`` (EOS ignored)."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()
