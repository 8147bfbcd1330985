"""Tensor-parallel Llama written once against the Backend protocol.

Modules mirror tt-transformers: Attention (``forward_prefill`` for one user's chunk,
``forward_decode`` for a batch of users each at its own position), MLP, Decoder,
LM head split by vocabulary, and the Model that runs them and samples on the mesh.
Activations are token-major ``[T, width]``; the residual is width-fractured on the
layout's hidden axis. Host data is numpy; only token ids (or, for tests, logits) leave.

Trace-ready shapes: a decode step always runs ``StepInputs``' fixed slot batch (idle slots at
position -1, decoding at position 0 of the scratch page on the device) with a fixed-width page
table; prefill chunks are padded to a few lengths (``prefill_bucket``). Page-table entries past a user's pages name the scratch page (the one
past ``num_pages``), which absorbs the padded tokens' K/V. RoPE cos/sin rows are looked up on
the device in resident tables by position.

User groups (``ttdist.model.user_groups``): on a 2D mesh each column group of chips holds the KV
pages of its own users only. ``CacheConfig.num_pages`` is then the pages of ONE group (one chip's
pool); the model takes the engine's global page ids ``0..G*num_pages-1`` (group g owning
``[g*P, (g+1)*P)``) and each group's users in its range of decode slots, converts ids to its
pool's local ones, and feeds each column only its group's rows. One group: all as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ttdist.mesh import sampling
from ttdist.mesh.backend import MeshError, SamplingBatch
from ttdist.mesh.placement import REPLICATED
from ttdist.mesh.precision import DType
from ttdist.model import ccl
from ttdist.model.kv_budget import Stopwatch, fit_kv_cache
from ttdist.model.layout import TILE, Layout
from ttdist.model.rope import RopeTable
from ttdist.model.user_groups import GroupOps, GroupTable, SlotMap, UserGroupError, UserGroups, decode_rows
from ttdist.model.weights import ShardedWeights


@dataclass(frozen=True)
class CacheConfig:
    """``num_pages``: pages per user group, i.e. one chip's pool (all pages with one group); 0: as
    many as the backend's DRAM ledger has room for on a chip once the weights are placed (less
    ``reserve_fraction`` of each chip), with at most ``max_pages`` held in host RAM over every
    group's pool (simulated caches)."""

    num_pages: int
    page_size: int = 32
    dtype: DType = DType.bfloat16
    reserve_fraction: float = 0.1
    max_pages: int | None = None


class KVCache:
    """One layer's paged K and V: ``[pages + 1, kv_heads, page_size, head_dim]`` per device, one
    pool per user group (``Layout.kv_cache``: ``G * (pages + 1)`` pages in all)."""

    def __init__(self, be, layout: Layout, cache: CacheConfig, layer: int):
        # one page more than the engine's per pool: the scratch page that padded positions write to
        dims = (layout.user_groups * (cache.num_pages + 1), layout.n_kv_local * layout.n_inner, cache.page_size,
                layout.config.head_dim)
        self.k = be.paged_cache(*dims, layout.kv_cache, dtype=cache.dtype, name="kv_cache")
        self.v = be.paged_cache(*dims, layout.kv_cache, dtype=cache.dtype, name="kv_cache")


class Attention:
    """``forward_prefill`` takes a ``[W]`` page table row (every chip's pool alike) or a
    ``GroupTable``; ``forward_decode`` per-column positions and page tables when there are user
    groups (``LlamaModel.place_inputs``), each column attending for its own users."""

    def __init__(self, be, layout: Layout, weights: dict, cache: KVCache, groups: GroupOps | None = None):
        self.be, self.layout, self.cache = be, layout, cache
        self.groups = groups or GroupOps(be, layout)
        self.wqkv, self.wo = weights["wqkv"], weights["wo"]
        self.scale = layout.config.head_dim ** -0.5

    def _qkv(self, x, cos, sin, decode: bool):
        lay, be = self.layout, self.be
        qkv = ccl.finish_up(be, lay, be.linear(ccl.gather_for_up(be, lay, x), self.wqkv))
        if decode:
            qkv = self.groups.select(qkv)
        q, k, v = be.create_qkv_heads(qkv, lay.n_q_local, lay.n_kv_local, lay.config.head_dim)
        return be.rotary(q, cos, sin), be.rotary(k, cos, sin), v

    def _out(self, attn):
        return ccl.finish_down(self.be, self.layout, self.be.linear(attn, self.wo))

    def forward_prefill(self, x, cos, sin, page_table, start_pos: int):
        q, k, v = self._qkv(x, cos, sin, decode=False)
        table = page_table.table if isinstance(page_table, GroupTable) else page_table
        self.be.paged_fill_cache(self.cache.k, k, table, start_pos)
        self.be.paged_fill_cache(self.cache.v, v, table, start_pos)
        attn = self.be.sdpa_prefill(q, k, v, self.cache.k, self.cache.v, table, start_pos, self.scale)
        return self._out(self.groups.from_owner(self.be.concat_heads(attn), page_table, start_pos))

    def forward_decode(self, x, cos, sin, page_table, positions):
        q, k, v = self._qkv(x, cos, sin, decode=True)
        self.be.paged_update_cache(self.cache.k, k, positions, page_table)
        self.be.paged_update_cache(self.cache.v, v, positions, page_table)
        attn = self.be.sdpa_decode(q, self.cache.k, self.cache.v, page_table, positions, self.scale)
        return self._out(self.groups.gather(self.be.concat_heads(attn)))


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
    def __init__(self, be, layout: Layout, weights: dict, cache: KVCache, groups: GroupOps | None = None):
        self.be, self.layout = be, layout
        self.attention = Attention(be, layout, weights, cache, groups)
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

    ``tokens`` and ``rope_index`` ``[B]`` (uint32), ``positions`` ``[B]`` (int32, -1 = idle slot;
    the device holds 0 there: an idle slot decodes at position 0 of its scratch page, so paged SDPA
    writes its attention rows and no unwritten row reaches the user groups' selection),
    ``page_table`` ``[B, W]`` (int32, ids of each slot's group's pool), ``sampling`` ``[B, 4]``
    (float32, ``sampling.device_params``). With user groups, ``rope_index``, ``positions`` and
    ``page_table`` are split over the columns (each its group's B/G slots); the rest is replicated.
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
    ``lm_head_chunk``: LM-head columns per device per matmul; ``logits_dtype``: the LM head's output format;
    ``max_batch``: the decode slots (a multiple of the layout's user groups; with several groups the
    decode batch is ``decode_rows(max_batch, groups)`` rows, whole tiles)."""

    max_positions: int | None = None
    lm_head_chunk: int = 16384
    logits_dtype: DType | None = None
    max_batch: int = 32


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
        self.group_ops = GroupOps(be, self.layout)
        self.group_ops.prepare(decode_rows(options.max_batch, self.layout.user_groups))
        self.kv_fit, kv_sizing = None, Stopwatch()
        if cache.num_pages <= 0:  # as many pages as the backend's DRAM ledger has room for after the weights
            self.kv_fit = fit_kv_cache(be, lambda n: KVCache(be, self.layout, replace(cache, num_pages=n), 0),
                                       self.config.num_hidden_layers, reserve_fraction=cache.reserve_fraction,
                                       max_pages=cache.max_pages, user_groups=self.layout.user_groups)
            cache = self.cache_config = replace(cache, num_pages=self.kv_fit.num_pages)
            self.scratch_page = cache.num_pages
        # group g owns global page ids [g * P, (g + 1) * P) and decode slots [g * B/G, (g + 1) * B/G)
        self.groups = UserGroups(self.layout.user_groups, cache.num_pages, options.max_batch)
        # ttnn's paged ops take at most as many page-table entries as the cache has pages
        self.table_width = min(-(-(self.max_positions + PREFILL_BUCKETS[-1]) // cache.page_size), cache.num_pages + 1)
        self.embedding = placed["embedding"]
        self.caches = [KVCache(be, self.layout, cache, i) for i in range(self.config.num_hidden_layers)]
        self.kv_sizing_s = kv_sizing.elapsed()   # the fit and the cache's allocation (cold-start figures)
        self.layers = [
            Decoder(be, self.layout, placed[f"layers.{i}"], self.caches[i], self.group_ops) for i in range(self.config.num_hidden_layers)
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
    def table_rows(self, tables, rows: int | None = None, groups=None) -> np.ndarray:
        """Page tables ``[rows, W]`` (int32): each user's pages as ids of its group's pool (``groups``:
        each user's group, default each table's own; trailing -1s are padding), then the scratch
        page; ids checked."""
        tables = [_strip_padding(list(t)) for t in tables]
        out = np.full((rows or len(tables), self.table_width), self.scratch_page, dtype=np.int32)
        for i, t in enumerate(tables):
            if len(t) > self.table_width:
                raise MeshError(f"page table has {len(t)} pages; at most {self.table_width} fit {self.max_positions} positions")
            group = self.groups.group_of(t)
            if groups is not None and t and group != groups[i]:
                raise UserGroupError(f"a user in a slot of group {groups[i]} has pages of group {group}")
            out[i, : len(t)] = self.groups.local(t, group)
        return out

    def host_inputs(self, tokens, positions, tables, params: np.ndarray, rows: int | None = None, slots=None) -> dict:
        """Host arrays for ``StepInputs``: user i in row ``slots[i]`` (default i), other rows idle;
        a user's slot lies in its pages' group's range of slots."""
        rows = rows or len(tokens)
        slots = np.arange(len(tokens)) if slots is None else np.asarray(slots, dtype=np.int64)
        pos = np.full(rows, -1, dtype=np.int32)
        pos[slots] = positions
        ids = np.zeros((1, rows), dtype=np.uint32)
        ids[0, slots] = tokens
        table = np.full((rows, self.table_width), self.scratch_page, dtype=np.int32)
        if rows != decode_rows(rows, self.groups.count):
            raise UserGroupError(f"a decode batch of {rows} rows is not whole tiles split over {self.groups.count} user groups")
        if len(tables):
            per_group = rows // self.groups.count
            table[slots] = self.table_rows(tables, groups=[int(s) // per_group for s in slots])
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

    def prefill_table(self, pages) -> np.ndarray | GroupTable:
        """One user's prefill page table (global ids): a checked ``[W]`` row of its group's pool ids,
        as a ``GroupTable`` when there are several groups."""
        pages = _strip_padding([int(p) for p in pages])
        return self.groups.prefill_table(self.table_rows([pages])[0], self.groups.group_of(pages))

    def place_inputs(self, host: dict) -> StepInputs:
        """Device tensors for ``host`` (persistent when kept and refreshed with ``write_inputs``):
        what attention reads split over the user groups' columns, the rest replicated."""
        lay = self.layout
        placements = {"rope_index": lay.per_group_rows(1), "positions": lay.per_group_rows(0), "page_table": lay.per_group_rows(0)}
        placed = {name: self.be.input_tensor(_on_device(name, array), placements.get(name, REPLICATED), name=f"input.{name}")
                  for name, array in host.items()}
        return StepInputs(**placed, host={k: v.copy() for k, v in host.items()})

    def write_inputs(self, inputs: StepInputs, host: dict) -> int:
        """Upload only the inputs whose values changed; the number uploaded."""
        changed = 0
        for name, array in host.items():
            if not np.array_equal(inputs.host[name], array):
                self.be.write_input(getattr(inputs, name), _on_device(name, array))
                inputs.host[name] = array.copy()
                changed += 1
        return changed

    def _rope(self, index):
        return self.be.embedding(index, self.rope_cos), self.be.embedding(index, self.rope_sin)

    # ------------------------------------------------------------------ steps
    def prefill_forward(self, token_ids, start_pos: int, page_table):
        """Vocab-sharded logits of the chunk's last token; fills the cache. The chunk is padded
        to ``prefill_bucket`` tokens (after the real ones, so causal attention ignores them)."""
        x, n, padded = self.prefill_rows(token_ids, start_pos, page_table)
        # the last real token's row, picked by a one-hot matmul: the same program for every length in a bucket
        pick = np.zeros((1, padded), dtype=np.float32)
        pick[0, n - 1] = 1.0
        last = self.be.linear(self.be.from_host(pick, REPLICATED, dtype=DType.bfloat16, name="input.last_token"), x)
        return self.lm_head.forward(last)

    def prefill_all_logits(self, token_ids, page_table) -> np.ndarray:
        """Host logits ``[T, vocab]`` of every token of a prefill at position 0: each row predicts the
        next token from the true text before it (teacher forcing, as accuracy is measured)."""
        x, n, _ = self.prefill_rows(token_ids, 0, page_table)
        return self.logits_to_host(self.lm_head.forward(x))[:n]

    def prefill_rows(self, token_ids, start_pos: int, page_table):
        """The final hidden rows ``[padded, W]`` of a prefill chunk, its real length and padded length."""
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
        table = self.prefill_table(pages)
        rope_index = np.minimum(np.arange(start_pos, start_pos + padded), self.max_positions - 1)
        cos, sin = self._rope(rope_index)
        x = self.be.embedding(ids, self.embedding)
        for layer in self.layers:
            x = layer.forward_prefill(x, cos, sin, table, start_pos)
        return x, n, padded

    def decode_step(self, inputs: StepInputs):
        """Vocab-sharded logits ``[B, V/n]`` for one token per slot; reads only device tensors."""
        cos, sin = self._rope(inputs.rope_index)
        x = self.be.embedding(inputs.tokens, self.embedding)
        for layer in self.layers:
            x = layer.forward_decode(x, cos, sin, inputs.page_table, inputs.positions)
        return self.lm_head.forward(x)

    def decode_forward(self, token_ids, positions, page_tables):
        """``decode_step`` on freshly placed inputs (tests); logits of exactly these users, in order.
        With user groups each user takes a slot of its group (as many per group as the busiest needs)."""
        groups = [self.groups.group_of(_strip_padding(list(t))) for t in page_tables]
        per_group = max([groups.count(g) for g in set(groups)] + [1])
        split = UserGroups(self.groups.count, self.groups.pages, per_group * self.groups.count)
        slots = SlotMap(split.slots, split).assign([], len(groups), groups)
        rows = split.rows
        host = self.host_inputs(token_ids, positions, page_tables, np.zeros((0, sampling.PARAMS), np.float32), rows, slots)
        logits = self.decode_step(self.place_inputs(host))
        if slots == list(range(rows)):
            return logits
        pick = np.zeros((len(slots), rows), dtype=np.float32)
        pick[np.arange(len(slots)), slots] = 1.0  # the users' rows, by a one-hot matmul (exact)
        return self.be.linear(self.be.from_host(pick, REPLICATED, dtype=DType.float32, name="input.users"), logits)

    def sample(self, logits, params, allowed=None):
        """Token ids drawn on the mesh (a device tensor): ``params`` is an input tensor of device_params rows;
        ``allowed`` an input tensor of grammar mask words (``token_mask.pack``), or None for no mask."""
        if allowed is None:
            return self.be.sample(logits, self.config.vocab_size, params, self.vocab_axis)
        return self.be.sample(logits, self.config.vocab_size, params, self.vocab_axis, allowed=allowed)

    def logits_to_host(self, logits) -> np.ndarray:
        return self.be.to_host(logits)[:, : self.config.vocab_size]


def _on_device(name: str, array: np.ndarray) -> np.ndarray:
    """A step input as the device holds it: idle slots (position -1) at position 0 of their scratch page."""
    return np.maximum(array, 0) if name == "positions" else array


def _strip_padding(table: list[int]) -> list[int]:
    while table and table[-1] < 0:
        table.pop()
    return table
