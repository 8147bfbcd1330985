"""Tensor-parallel Llama written once against the Backend protocol.

Modules mirror tt-transformers: Attention (``forward_prefill`` for one user's chunk,
``forward_decode`` for a batch of users each at its own position), MLP, Decoder,
LM head split by vocabulary, and the Model that runs them and samples on the mesh.
Activations are token-major ``[T, width]``; the residual is width-fractured on the
layout's hidden axis. Host data is numpy; only token ids (or, for tests, logits) leave.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttdist.mesh.backend import SamplingBatch
from ttdist.mesh.placement import REPLICATED
from ttdist.mesh.precision import DType
from ttdist.model import ccl
from ttdist.model.layout import Layout
from ttdist.model.rope import RopeTable
from ttdist.model.weights import ShardedWeights


@dataclass(frozen=True)
class CacheConfig:
    num_pages: int
    page_size: int = 32
    dtype: DType = DType.bfloat16


class KVCache:
    """One layer's paged K and V: ``[pages, kv_heads, page_size, head_dim]`` per device."""

    def __init__(self, be, layout: Layout, cache: CacheConfig, layer: int):
        dims = (cache.num_pages, layout.n_kv_local * layout.n_inner, cache.page_size, layout.config.head_dim)
        self.k = be.paged_cache(*dims, layout.heads, dtype=cache.dtype, name="kv_cache")
        self.v = be.paged_cache(*dims, layout.heads, dtype=cache.dtype, name="kv_cache")


class Attention:
    def __init__(self, be, layout: Layout, weights: dict, cache: KVCache):
        self.be, self.layout, self.cache = be, layout, cache
        self.wqkv, self.wo = weights["wqkv"], weights["wo"]
        self.scale = layout.config.head_dim ** -0.5

    def _qkv(self, x, cos, sin):
        lay, be = self.layout, self.be
        qkv = ccl.finish_up(be, lay, be.linear(ccl.gather_for_up(be, lay, x), self.wqkv))
        q, k, v = be.create_qkv_heads(qkv, lay.n_q_local, lay.n_kv_local, lay.config.head_dim)
        return be.rotary(q, cos, sin), be.rotary(k, cos, sin), v

    def _out(self, attn):
        be = self.be
        return ccl.finish_down(be, self.layout, be.linear(be.concat_heads(attn), self.wo))

    def forward_prefill(self, x, cos, sin, page_table: np.ndarray, start_pos: int):
        q, k, v = self._qkv(x, cos, sin)
        self.be.paged_fill_cache(self.cache.k, k, page_table, start_pos)
        self.be.paged_fill_cache(self.cache.v, v, page_table, start_pos)
        attn = self.be.sdpa_prefill(q, k, v, self.cache.k, self.cache.v, page_table, start_pos, self.scale)
        return self._out(attn)

    def forward_decode(self, x, cos, sin, page_table: np.ndarray, positions: np.ndarray):
        q, k, v = self._qkv(x, cos, sin)
        self.be.paged_update_cache(self.cache.k, k, positions, page_table)
        self.be.paged_update_cache(self.cache.v, v, positions, page_table)
        attn = self.be.sdpa_decode(q, self.cache.k, self.cache.v, page_table, positions, self.scale)
        return self._out(attn)


class MLP:
    def __init__(self, be, layout: Layout, weights: dict):
        self.be, self.layout = be, layout
        self.w1, self.w2, self.w3 = weights["w1"], weights["w2"], weights["w3"]

    def forward(self, x):
        be, lay = self.be, self.layout
        xg = ccl.gather_for_up(be, lay, x)
        gate = ccl.finish_up(be, lay, be.linear(xg, self.w1))
        up = ccl.finish_up(be, lay, be.linear(xg, self.w3))
        return ccl.finish_down(be, lay, be.linear(be.silu_mul(gate, up), self.w2))


class Decoder:
    def __init__(self, be, layout: Layout, weights: dict, cache: KVCache):
        self.be, self.layout = be, layout
        self.attention = Attention(be, layout, weights, cache)
        self.mlp = MLP(be, layout, weights)
        self.attention_norm, self.ffn_norm = weights["attention_norm"], weights["ffn_norm"]
        self.eps = layout.config.rms_norm_eps

    def _norm(self, x, w):
        return ccl.rms_norm(self.be, self.layout, x, w, self.eps)

    def forward_prefill(self, x, cos, sin, page_table, start_pos):
        h = self.be.add(x, self.attention.forward_prefill(self._norm(x, self.attention_norm), cos, sin, page_table, start_pos))
        return self.be.add(h, self.mlp.forward(self._norm(h, self.ffn_norm)))

    def forward_decode(self, x, cos, sin, page_table, positions):
        h = self.be.add(x, self.attention.forward_decode(self._norm(x, self.attention_norm), cos, sin, page_table, positions))
        return self.be.add(h, self.mlp.forward(self._norm(h, self.ffn_norm)))


class LMHead:
    """Final norm, vocab-split matmul, then the logits gathered across the vocab axis."""

    def __init__(self, be, layout: Layout, weights: dict):
        self.be, self.layout = be, layout
        self.norm, self.w = weights["norm"], weights["lm_head"]

    def forward(self, x):
        be, lay = self.be, self.layout
        h = ccl.rms_norm(be, lay, x, self.norm, lay.config.rms_norm_eps)
        logits = ccl.finish_up(be, lay, be.linear(ccl.gather_for_up(be, lay, h), self.w))
        return be.all_gather(logits, dim=-1, cluster_axis=lay.inner_axis)


class LlamaModel:
    """The whole model on one mesh with its paged KV cache."""

    def __init__(self, be, weights: ShardedWeights, cache: CacheConfig):
        self.be = be
        self.layout = weights.layout()
        self.config = weights.config
        self.cache_config = cache
        self.rope = RopeTable(self.config)
        placed = self._place(weights)
        self.embedding = placed["embedding"]
        self.caches = [KVCache(be, self.layout, cache, i) for i in range(self.config.num_hidden_layers)]
        self.layers = [
            Decoder(be, self.layout, placed[f"layers.{i}"], self.caches[i]) for i in range(self.config.num_hidden_layers)
        ]
        self.lm_head = LMHead(be, self.layout, placed)

    def _place(self, weights: ShardedWeights) -> dict:
        plans = {p.name: p for p in self.layout.plans()}
        out: dict = {}
        for name, array in weights.arrays.items():
            kind = name.rsplit(".", 1)[-1]
            dtype = weights.dtype if array.ndim == 2 and kind != "embedding" else DType.bfloat16
            if weights.dtype is DType.float32:
                dtype = DType.float32
            tensor = self.be.from_host(array, plans[kind].placements, dtype=dtype, name=f"weights.{name}")
            if name.startswith("layers."):
                _, i, _ = name.split(".", 2)
                out.setdefault(f"layers.{i}", {})[kind] = tensor
            else:
                out[kind] = tensor
        return out

    def _rope(self, positions: np.ndarray):
        cos, sin = self.rope.cos_sin(positions)
        return (self.be.from_host(cos, REPLICATED, dtype=DType.float32, name="rope"),
                self.be.from_host(sin, REPLICATED, dtype=DType.float32, name="rope"))

    def _embed(self, token_ids: np.ndarray):
        return self.be.embedding(np.asarray(token_ids, dtype=np.int64), self.embedding)

    def prefill_forward(self, token_ids, start_pos: int, page_table):
        """Logits (gathered on the mesh) of the chunk's last token; fills the cache."""
        ids = np.asarray(token_ids, dtype=np.int64)
        cos, sin = self._rope(np.arange(start_pos, start_pos + len(ids)))
        table = np.asarray(page_table, dtype=np.int64)
        x = self._embed(ids)
        for layer in self.layers:
            x = layer.forward_prefill(x, cos, sin, table, start_pos)
        return self.lm_head.forward(self.be.slice_rows(x, len(ids) - 1, len(ids)))

    def decode_forward(self, token_ids, positions, page_table):
        """Logits (gathered on the mesh) for one new token per user at its own position."""
        pos = np.asarray(positions, dtype=np.int64)
        cos, sin = self._rope(pos)
        table = np.asarray(page_table, dtype=np.int64)
        x = self._embed(np.asarray(token_ids, dtype=np.int64))
        for layer in self.layers:
            x = layer.forward_decode(x, cos, sin, table, pos)
        return self.lm_head.forward(x)

    def logits_to_host(self, logits) -> np.ndarray:
        return self.be.to_host(logits)[:, : self.config.vocab_size]

    def sample(self, logits, params: SamplingBatch) -> np.ndarray:
        return self.be.sample(logits, params, vocab_size=self.config.vocab_size)
