"""Hugging Face tensors -> the layout's global arrays -> every chip's pieces.

``layer_tensors`` / ``top_tensors`` rearrange and zero-pad HF-named tensors into the layout's
global arrays (query / KV heads grouped per inner-axis device, ``[K, N]`` matmul orientation),
one tensor at a time and reading only the HF tensors each needs; ``to_devices`` cuts a global
array into the ``[R', C', *local]`` pieces a backend's ``from_host_per_device`` uploads
(``stored_shape`` is that shape). Pure numpy: no files, no torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from ttdist.mesh.errors import MeshError
from ttdist.mesh.placement import Placements, Shard, cut, normalize
from ttdist.model.config import CheckpointError
from ttdist.model.layout import Layout, pad_axis


def _heads(weight_t: np.ndarray, ids: list[int], hd: int) -> np.ndarray:
    """Columns of ``weight_t`` ([K, n*hd]) for head ids; -1 gives zero columns."""
    zero = np.zeros((weight_t.shape[0], hd), weight_t.dtype)
    return np.concatenate([weight_t[:, h * hd : (h + 1) * hd] if h >= 0 else zero for h in ids], axis=1)


def layer_tensors(layout: Layout, hf: Mapping, i: int) -> Iterator[tuple[str, np.ndarray]]:
    """``(kind, global array)`` of layer ``i`` one at a time; each reads only its own HF tensors."""
    hd, ff, p = layout.config.head_dim, layout.ff, f"model.layers.{i}."
    yield "attention_norm", layout.pad_hidden(hf[p + "input_layernorm.weight"], 0)
    q_t = layout.pad_hidden(hf[p + "self_attn.q_proj.weight"].T, 0)
    k_t = layout.pad_hidden(hf[p + "self_attn.k_proj.weight"].T, 0)
    v_t = layout.pad_hidden(hf[p + "self_attn.v_proj.weight"].T, 0)
    yield "wqkv", np.concatenate([
        np.concatenate([_heads(q_t, layout.q_heads[d], hd), _heads(k_t, layout.kv_heads[d], hd),
                        _heads(v_t, layout.kv_heads[d], hd)], axis=1)
        for d in range(layout.n_inner)
    ], axis=1)
    del q_t, k_t, v_t
    o = layout.pad_hidden(hf[p + "self_attn.o_proj.weight"], 0)  # [H, nq*hd]: columns per head
    yield "wo", layout.pad_hidden(np.concatenate([_heads(o, layout.q_heads[d], hd).T for d in range(layout.n_inner)], axis=0), 1)
    del o
    yield "ffn_norm", layout.pad_hidden(hf[p + "post_attention_layernorm.weight"], 0)
    yield "w1", pad_axis(layout.pad_hidden(hf[p + "mlp.gate_proj.weight"].T, 0), 1, ff)
    yield "w3", pad_axis(layout.pad_hidden(hf[p + "mlp.up_proj.weight"].T, 0), 1, ff)
    yield "w2", layout.pad_hidden(pad_axis(hf[p + "mlp.down_proj.weight"].T, 0, ff), 1)


def top_tensors(layout: Layout, hf: Mapping) -> dict[str, np.ndarray]:
    """The embedding, final norm and LM head as whole global arrays (conversion streams the
    embedding and LM head in slabs instead; this is their in-memory form)."""
    c = layout.config
    embed = hf["model.embed_tokens.weight"]
    head = embed if c.tie_word_embeddings else hf["lm_head.weight"]
    return {
        "embedding": layout.pad_hidden(embed, 1),
        "norm": layout.pad_hidden(hf["model.norm.weight"], 0),
        "lm_head": pad_axis(layout.pad_hidden(head.T, 0), 1, layout.vocab),
    }


def stored_shape(local: tuple[int, ...], placements: Placements, mesh_shape: tuple[int, int]) -> tuple[int, ...]:
    """The ``[R', C', *local]`` shape ``to_devices`` gives a tensor of per-chip shape ``local``."""
    p = normalize(placements, len(local))
    return tuple(n if isinstance(p[a], Shard) and n > 1 else 1 for a, n in enumerate(mesh_shape)) + tuple(local)


def to_devices(array: np.ndarray, placements: Placements, mesh_shape: tuple[int, int]) -> np.ndarray:
    """``[R', C', *local]``: the pieces each chip holds, cut exactly as a backend's ``from_host``
    cuts a global array (``mesh.placement.cut``: axis 0 first, then axis 1; replicated axes kept once)."""
    try:
        return np.ascontiguousarray(cut(array, placements, mesh_shape))
    except MeshError as err:
        raise CheckpointError(str(err)) from None
