"""Tensor-parallel Llama written once against the Backend protocol.

Modules mirror tt-transformers: Attention (``forward_prefill`` for one user's chunk,
``forward_decode`` for a batch of users each at its own position), MLP, Decoder,
LM head split by vocabulary, and the Model that runs them and samples on the mesh.
Activations are token-major ``[T, width]``; the residual is width-fractured on the
layout's hidden axis. Host data is numpy; only token ids (or, for tests, logits) leave.

Trace-ready shapes: a decode step always runs ``StepInputs``' fixed slot batch (idle slots at
position -1) with a fixed-width page table; prefill chunks are padded to a few lengths
(``prefill_bucket``). Page-table entries past a user's pages name the scratch page (the one
past ``num_pages``), which absorbs the padded tokens' K/V. RoPE cos/sin rows are looked up on
the device in resident tables by position.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ttdist.mesh import sampling
from ttdist.mesh.backend import MeshError, SamplingBatch
from ttdist.mesh.placement import REPLICATED
from ttdist.mesh.precision import DType
from ttdist.model import ccl
from ttdist.model.kv_budget import fit_kv_cache
from ttdist.model.layout import TILE, Layout
from ttdist.model.rope import RopeTable
from ttdist.model.weights import ShardedWeights


@dataclass(frozen=True)
class CacheConfig:
    """``num_pages`` 0: as many as the backend's DRAM ledger has room for once the weights are
    placed (less ``reserve_fraction`` of each chip), at most ``max_pages`` (host-RAM caches)."""

    num_pages: int
    page_size: int = 32
    dtype: DType = DType.bfloat16
    reserve_fraction: float = 0.1
    max_pages: int | None = None


class KVCache:
    """One layer's paged K and V: ``[pages, kv_heads, page_size, head_dim]`` per device."""

    def __init__(self, be, layout: Layout, cache: CacheConfig, layer: int):
        # one page more than the engine's: the scratch page that padded positions write to
        dims = (cache.num_pages + 1, layout.n_kv_local * layout.n_inner, cache.page_size, layout.config.head_dim)
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
    """Final norm and the vocab-split matmul, its columns chunked per device so each matmul fits.

    The logits stay vocab-sharded on the inner axis (sampling gathers only candidates); each
    chunk is one DRAM-sharded matmul of at most ``chunk_columns`` columns per device, in
    ``out_dtype``.
    """

    def __init__(self, be, layout: Layout, weights: dict, *, out_dtype: DType | None = None):
        self.be, self.layout, self.out_dtype = be, layout, out_dtype
        self.norm = weights["norm"]
        self.chunks = weights["lm_head"]

    @staticmethod
    def split(array: np.ndarray, chunk_columns: int) -> list[np.ndarray]:
        """Per-device ``[R', C', K, V/n]`` weight -> column chunks of whole tiles, at most ``chunk_columns`` wide."""
        width = array.shape[-1]
        step = max(TILE, chunk_columns // TILE * TILE)
        return [array[..., i : i + step] for i in range(0, width, step)]

    def forward(self, x):
        be, lay = self.be, self.layout
        h = ccl.gather_for_up(be, lay, ccl.rms_norm(be, lay, x, self.norm, lay.config.rms_norm_eps))
        parts = [ccl.finish_up(be, lay, be.linear(h, w, out_dtype=self.out_dtype)) for w in self.chunks]
        return parts[0] if len(parts) == 1 else be.concat(parts, dim=-1)


PREFILL_BUCKETS = (32, 64, 128, 256, 512, 1024)


def prefill_bucket(tokens: int) -> int:
    """The padded length of a prefill chunk: the smallest bucket that holds it, then whole 1024s."""
    for bucket in PREFILL_BUCKETS:
        if tokens <= bucket:
            return bucket
    return -(-tokens // PREFILL_BUCKETS[-1]) * PREFILL_BUCKETS[-1]


@dataclass
class StepInputs:
    """The device tensors one step reads; a decode step's are persistent and rewritten in place.

    ``tokens`` and ``rope_index`` ``[B]`` (uint32), ``positions`` ``[B]`` (int32, -1 = idle slot),
    ``page_table`` ``[B, W]`` (int32), ``sampling`` ``[B, 4]`` (float32, ``sampling.device_params``).
    ``host`` keeps what was last written, so only changed inputs are uploaded.
    """

    tokens: object
    rope_index: object
    positions: object
    page_table: object
    sampling: object
    host: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelOptions:
    """``max_positions``: rows of the resident RoPE tables (and the longest sequence);
    ``lm_head_chunk``: LM-head columns per device per matmul; ``logits_dtype``: the LM head's output format."""

    max_positions: int | None = None
    lm_head_chunk: int = 16384
    logits_dtype: DType | None = None


class LlamaModel:
    """The whole model on one mesh with its paged KV cache."""

    def __init__(self, be, weights: ShardedWeights, cache: CacheConfig, options: ModelOptions | None = None):
        options = options or ModelOptions()
        self.be = be
        self.layout = weights.layout()
        self.config = weights.config
        self.cache_config = cache
        self.scratch_page = cache.num_pages
        self.max_positions = min(options.max_positions or self.config.max_position_embeddings, self.config.max_position_embeddings)
        placed = self._place(weights, options.lm_head_chunk)
        cos, sin = RopeTable(self.config).cos_sin(np.arange(self.max_positions))  # resident before the KV fit counts DRAM
        self.rope_cos = be.from_host(cos, REPLICATED, dtype=DType.float32, name="rope_table")
        self.rope_sin = be.from_host(sin, REPLICATED, dtype=DType.float32, name="rope_table")
        self.kv_fit = None
        if cache.num_pages <= 0:  # as many pages as the backend's DRAM ledger has room for after the weights
            self.kv_fit = fit_kv_cache(be, lambda n: KVCache(be, self.layout, replace(cache, num_pages=n), 0),
                                       self.config.num_hidden_layers, reserve_fraction=cache.reserve_fraction,
                                       max_pages=cache.max_pages)
            cache = self.cache_config = replace(cache, num_pages=self.kv_fit.num_pages)
            self.scratch_page = cache.num_pages
        # ttnn's paged ops take at most as many page-table entries as the cache has pages
        self.table_width = min(-(-(self.max_positions + PREFILL_BUCKETS[-1]) // cache.page_size), cache.num_pages + 1)
        self.embedding = placed["embedding"]
        self.caches = [KVCache(be, self.layout, cache, i) for i in range(self.config.num_hidden_layers)]
        self.layers = [
            Decoder(be, self.layout, placed[f"layers.{i}"], self.caches[i]) for i in range(self.config.num_hidden_layers)
        ]
        self.lm_head = LMHead(be, self.layout, placed, out_dtype=options.logits_dtype)
        self.vocab_axis = self.layout.inner_axis

    def _place(self, weights: ShardedWeights, lm_head_chunk: int) -> dict:
        plans = {p.name: p for p in self.layout.plans()}
        out: dict = {}
        for name in weights.arrays:  # [R', C', *local] per chip, read one tensor at a time
            kind = name.rsplit(".", 1)[-1]
            array = weights.arrays[name]
            place = lambda a, n: self.be.from_host_per_device(a, plans[kind].placements, dtype=weights.precision.weight_dtype(kind), name=n)  # noqa: E731
            if kind == "lm_head":
                tensor = [place(part, f"weights.{name}.{i}") for i, part in enumerate(LMHead.split(array, lm_head_chunk))]
            else:
                tensor = place(array, f"weights.{name}")
            del array
            if name.startswith("layers."):
                _, i, _ = name.split(".", 2)
                out.setdefault(f"layers.{i}", {})[kind] = tensor
            else:
                out[kind] = tensor
        return out

    # ------------------------------------------------------------------ inputs
    def table_rows(self, tables, rows: int | None = None) -> np.ndarray:
        """Page tables ``[rows, W]`` (int32): each user's pages (trailing -1s are padding), then the
        scratch page; ids checked."""
        tables = [_strip_padding(list(t)) for t in tables]
        out = np.full((rows or len(tables), self.table_width), self.scratch_page, dtype=np.int32)
        for i, t in enumerate(tables):
            if len(t) > self.table_width:
                raise MeshError(f"page table has {len(t)} pages; at most {self.table_width} fit {self.max_positions} positions")
            if t and (min(t) < 0 or max(t) >= self.scratch_page):
                raise MeshError(f"page ids must lie in [0, {self.scratch_page}), got {min(t)}..{max(t)}")
            out[i, : len(t)] = t
        return out

    def host_inputs(self, tokens, positions, tables, params: np.ndarray, rows: int | None = None, slots=None) -> dict:
        """Host arrays for ``StepInputs``: user i in row ``slots[i]`` (default i), other rows idle."""
        rows = rows or len(tokens)
        slots = np.arange(len(tokens)) if slots is None else np.asarray(slots, dtype=np.int64)
        pos = np.full(rows, -1, dtype=np.int32)
        pos[slots] = positions
        ids = np.zeros((1, rows), dtype=np.uint32)
        ids[0, slots] = tokens
        table = np.full((rows, self.table_width), self.scratch_page, dtype=np.int32)
        if len(tables):
            table[slots] = self.table_rows(tables)
        if len(positions) and (max(positions) >= self.max_positions or min(positions) < 0):
            raise MeshError(f"positions must lie in [0, {self.max_positions}), got {min(positions)}..{max(positions)}")
        for i, p in enumerate(positions):
            if p // self.cache_config.page_size >= len(tables[i]):
                raise MeshError(f"page table has {len(tables[i])} pages per user; position {p} needs {p // self.cache_config.page_size + 1}")
        if len(tokens) and (min(tokens) < 0 or max(tokens) >= self.config.vocab_size):
            raise MeshError(f"token ids must lie in [0, {self.config.vocab_size}), got {min(tokens)}..{max(tokens)}")
        full = np.tile(sampling.device_params(SamplingBatch.greedy(1)), (rows, 1))
        full[slots[: len(params)]] = params
        return {"tokens": ids, "rope_index": np.maximum(pos, 0).astype(np.uint32).reshape(1, -1), "positions": pos,
                "page_table": table, "sampling": full}

    def place_inputs(self, host: dict) -> StepInputs:
        """Device tensors for ``host`` (persistent when kept and refreshed with ``write_inputs``)."""
        placed = {name: self.be.input_tensor(array, REPLICATED, name=f"input.{name}") for name, array in host.items()}
        return StepInputs(**placed, host={k: v.copy() for k, v in host.items()})

    def write_inputs(self, inputs: StepInputs, host: dict) -> int:
        """Upload only the inputs whose values changed; the number uploaded."""
        changed = 0
        for name, array in host.items():
            if not np.array_equal(inputs.host[name], array):
                self.be.write_input(getattr(inputs, name), array)
                inputs.host[name] = array.copy()
                changed += 1
        return changed

    def _rope(self, index):
        return self.be.embedding(index, self.rope_cos), self.be.embedding(index, self.rope_sin)

    # ------------------------------------------------------------------ steps
    def prefill_forward(self, token_ids, start_pos: int, page_table):
        """Vocab-sharded logits of the chunk's last token; fills the cache. The chunk is padded
        to ``prefill_bucket`` tokens (after the real ones, so causal attention ignores them)."""
        n = len(token_ids)
        if n == 0:
            raise MeshError("prefill: the chunk has no tokens")
        if start_pos + n > self.max_positions:
            raise MeshError(f"prefill: positions {start_pos}..{start_pos + n - 1} exceed the {self.max_positions} the model holds")
        padded = min(prefill_bucket(n), self.table_width * self.cache_config.page_size - start_pos)
        ids = np.zeros(padded, dtype=np.int64)
        ids[:n] = np.asarray(token_ids, dtype=np.int64)
        if ids[:n].min() < 0 or ids[:n].max() >= self.config.vocab_size:
            raise MeshError(f"token ids must lie in [0, {self.config.vocab_size}), got {ids[:n].min()}..{ids[:n].max()}")
        pages = [int(p) for p in np.asarray(page_table).reshape(-1)]
        if (start_pos + n - 1) // self.cache_config.page_size >= len(pages):
            raise MeshError(f"page table has {len(pages)} pages; position {start_pos + n - 1} needs more")
        table = self.table_rows([pages])[0]
        rope_index = np.minimum(np.arange(start_pos, start_pos + padded), self.max_positions - 1)
        cos, sin = self._rope(rope_index)
        x = self.be.embedding(ids, self.embedding)
        for layer in self.layers:
            x = layer.forward_prefill(x, cos, sin, table, start_pos)
        # the last real token's row, picked by a one-hot matmul: the same program for every length in a bucket
        pick = np.zeros((1, padded), dtype=np.float32)
        pick[0, n - 1] = 1.0
        last = self.be.linear(self.be.from_host(pick, REPLICATED, dtype=DType.bfloat16, name="input.last_token"), x)
        return self.lm_head.forward(last)

    def decode_step(self, inputs: StepInputs):
        """Vocab-sharded logits ``[B, V/n]`` for one token per slot; reads only device tensors."""
        cos, sin = self._rope(inputs.rope_index)
        x = self.be.embedding(inputs.tokens, self.embedding)
        for layer in self.layers:
            x = layer.forward_decode(x, cos, sin, inputs.page_table, inputs.positions)
        return self.lm_head.forward(x)

    def decode_forward(self, token_ids, positions, page_tables):
        """``decode_step`` on freshly placed inputs (tests); logits of exactly these users."""
        host = self.host_inputs(token_ids, positions, page_tables, np.zeros((0, sampling.PARAMS), np.float32))
        return self.decode_step(self.place_inputs(host))

    def sample(self, logits, params):
        """Token ids drawn on the mesh (a device tensor): ``params`` is an input tensor of device_params rows."""
        return self.be.sample(logits, self.config.vocab_size, params, self.vocab_axis)

    def logits_to_host(self, logits) -> np.ndarray:
        return self.be.to_host(logits)[:, : self.config.vocab_size]


def _strip_padding(table: list[int]) -> list[int]:
    while table and table[-1] < 0:
        table.pop()
    return table
