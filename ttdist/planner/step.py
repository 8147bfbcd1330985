"""The device ops of one decode step (or one prefill chunk), read off the model's own layout.

The list mirrors ``ttdist.model.llama`` call for call: RoPE rows and token embeddings looked
up on the device, the same collectives from ``ttdist.model.ccl`` (1D: all-gather before
column-parallel matmuls, reduce-scatter after row-parallel ones; 2D: all-reduce of partial
sums), the LM head in column chunks, prefill chunks padded to ``prefill_bucket`` lengths, and
sampling on the mesh (local top-K, all-gather of the candidates). Shapes are the layout's
per-chip shapes, dtypes the model's (bfloat16 activations, float32 norm statistics and sampling
candidates; weights and KV cache as the precision says). Each op carries what the
roofline needs: activation bytes in and out on one chip, weight bytes and flops for a matmul,
KV bytes for attention, and for a collective the full tensor's bytes as
``ttdist.mesh.accounting`` counts them. ``tests/planner`` checks the list against the simulator
running the real model: the same op sequence, collective records and bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttdist.mesh import sampling
from ttdist.mesh.accounting import tile_padded_bytes
from ttdist.mesh.precision import DType, Precision
from ttdist.model.layout import TILE, Layout
from ttdist.model.llama import ModelOptions, prefill_bucket

ACT = DType.bfloat16.bytes_per_element
F32 = DType.float32.bytes_per_element


@dataclass(frozen=True)
class Op:
    name: str                        # the Backend method the model calls
    kind: str                        # "matmul", "ccl", "op" or "host" (a read back to the host)
    act_bytes: float = 0.0           # activations read + written on one chip
    weight_bytes: float = 0.0        # weight bytes one chip streams from DRAM (matmul)
    weight_dtype: DType | None = None
    flops: float = 0.0               # per chip
    kv_bytes: float = 0.0            # KV cache bytes read or written on one chip
    axis: int = -1                   # collective: mesh axis
    full_bytes: float = 0.0          # collective: bytes of the full tensor (accounting's B)
    inside: str = ""                 # a collective a backend op runs itself (sampling's gathers)
    out_bytes: float = 0.0           # its outputs on one chip, in 32x32 tiles (what DRAM holds)
    positions: float = 0.0           # paged SDPA decode: context positions each (user, KV head) stream walks
    scores: float = 0.0              # prefill SDPA: query-key scores computed on one chip (causal)


def _tiles(shapes) -> float:
    """Tile-padded bytes of output shapes; a shape may end with its bytes per element (default bf16)."""
    total = 0.0
    for shape in shapes:
        dims, bpe = (shape[:-1], shape[-1]) if isinstance(shape[-1], float) else (shape, ACT)
        total += tile_padded_bytes(dims, DType.float32) / F32 * bpe
    return total


class StepBuilder:
    """Builds the op list for ``tokens`` rows through the model on ``layout``."""

    def __init__(self, layout: Layout, precision: Precision, *, page_size: int = 32,
                 options: ModelOptions | None = None, host_sampling: bool = False):
        self.lay = layout
        self.host_sampling = host_sampling   # logits read back and sampled on the host, not on the mesh
        self.prec = precision
        self.page_size = page_size
        self.options = options or ModelOptions()
        self.hd = layout.config.head_dim
        self.hl = layout.hidden_local                      # residual width on one chip
        self.hk = layout.hidden if layout.one_d else layout.hidden_local  # matmul input width
        self.kvb = precision.kv_cache.bytes_per_element
        self.ops: list[Op] = []

    # ------------------------------------------------------------------ primitives
    def _op(self, name: str, act: float, *outs: tuple, **extra) -> None:
        self.ops.append(Op(name, "op", act_bytes=act, out_bytes=_tiles(outs), **extra))

    def _ccl(self, name: str, axis: int, full: float, *outs: tuple, inside: str = "") -> None:
        self.ops.append(Op(name, "ccl", axis=axis, full_bytes=full, inside=inside, out_bytes=_tiles(outs)))

    def _linear(self, t: int, kind: str, k: int, n: int) -> None:
        dtype = self.prec.weight_dtype(kind)
        self.ops.append(Op("linear", "matmul", act_bytes=(t * k + t * n) * ACT, out_bytes=_tiles([(t, n)]),
                           weight_bytes=tile_padded_bytes((k, n), dtype), weight_dtype=dtype, flops=2.0 * t * k * n))

    def _embed(self, t: int, rope_rows: int | None = None) -> None:
        """RoPE cos and sin rows (looked up in bfloat16, like every activation; ``rope_rows`` per chip
        in decode with user groups), then the token embeddings."""
        r = t if rope_rows is None else rope_rows
        self._op("embedding", r * self.hd * ACT, (r, self.hd))
        self._op("embedding", r * self.hd * ACT, (r, self.hd))
        self._op("embedding", t * self.hl * ACT, (t, self.hl))

    def _norm(self, t: int) -> None:
        lay, hl = self.lay, self.hl
        if lay.n_hidden == 1:
            self._op("rms_norm", 2 * t * hl * ACT, (t, hl))
            return
        self._op("rms_norm_pre_all_gather", t * hl * ACT + t * F32, (t, 1, F32))
        self._ccl("all_gather", lay.hidden_axis, t * lay.n_hidden * F32, (t, lay.n_hidden, F32))
        self._op("rms_norm_post_all_gather", 2 * t * hl * ACT + t * lay.n_hidden * F32, (t, hl))

    def _gather_for_up(self, t: int) -> None:
        if self.lay.one_d:
            self._ccl("all_gather", self.lay.hidden_axis, t * self.lay.hidden * ACT, (t, self.lay.hidden))

    def _finish_up(self, t: int, n: int) -> None:
        if not self.lay.one_d:
            self._ccl("all_reduce", self.lay.hidden_axis, t * n * ACT, (t, n))

    def _finish_down(self, t: int) -> None:
        lay = self.lay
        if lay.one_d:
            self._ccl("reduce_scatter", lay.inner_axis, t * lay.hidden * ACT, (t, self.hl))
        else:
            self._ccl("all_reduce", lay.inner_axis, t * self.hl * ACT, (t, self.hl))

    # ------------------------------------------------------------------ blocks
    def _group_rows(self, t: int) -> int:
        """Decode rows one chip attends for: its user group's share of the ``t`` slots."""
        return -(-t // self.lay.user_groups)

    def _qkv(self, t: int, decode: bool = False) -> None:
        lay, hd = self.lay, self.hd
        nq, nkv = lay.n_q_local, lay.n_kv_local
        self._gather_for_up(t)
        self._linear(t, "wqkv", self.hk, lay.qkv_local)
        self._finish_up(t, lay.qkv_local)
        if decode and lay.user_groups > 1:  # each column picks its group's rows with a one-hot [b, t] matmul
            b, q = self._group_rows(t), lay.qkv_local
            self._op("linear", (b * t + t * q + b * q) * ACT, (b, q), flops=2.0 * b * t * q)
            t = b
        self._op("create_qkv_heads", t * lay.qkv_local * ACT + t * (nq + 2 * nkv) * hd * ACT,
                 (t, nq, hd), (t, nkv, hd), (t, nkv, hd))
        for heads in (nq, nkv):
            self._op("rotary", 2 * t * heads * hd * ACT + 2 * t * hd * ACT, (t, heads, hd))

    def _attention_out(self, t: int, decode: bool = False, owner_mask: bool = False) -> None:
        lay, w = self.lay, self.lay.n_q_local * self.hd
        rows = self._group_rows(t) if decode and lay.user_groups > 1 else t
        self._op("concat_heads", 2 * rows * w * ACT, (rows, w))
        if rows != t:  # each column's group rows gathered back to every slot
            self._ccl("all_gather", lay.group_axis, rows * lay.user_groups * w * ACT, (rows * lay.user_groups, w))
        if owner_mask:  # a prefill chunk that read cached positions: the owner column's rows to every column
            self._op("multiply", (2 * t * w + 1) * ACT, (t, w))
            self._ccl("all_reduce", lay.group_axis, t * w * ACT, (t, w))
        self._linear(t, "wo", w, self.hk)
        self._finish_down(t)

    def _mlp(self, t: int) -> None:
        ff = self.lay.ff_local
        self._gather_for_up(t)
        for kind in ("w1", "w3"):
            self._linear(t, kind, self.hk, ff)
            self._finish_up(t, ff)
        self._op("silu_mul", 3 * t * ff * ACT, (t, ff))
        self._linear(t, "w2", ff, self.hk)
        self._finish_down(t)

    def _add(self, t: int) -> None:
        self._op("add", 3 * t * self.hl * ACT, (t, self.hl))

    def lm_head_chunks(self) -> list[int]:
        """Columns per device of each LM-head matmul (``LMHead.split``)."""
        width = self.lay.vocab_local
        step = max(TILE, self.options.lm_head_chunk // TILE * TILE)
        return [min(step, width - i) for i in range(0, width, step)]

    def _lm_head(self, t: int) -> None:
        self._norm(t)
        self._gather_for_up(t)
        chunks = self.lm_head_chunks()
        for n in chunks:
            self._linear(t, "lm_head", self.hk, n)
            self._finish_up(t, n)
        if len(chunks) > 1:
            self._op("concat", 2 * t * self.lay.vocab_local * ACT, (t, self.lay.vocab_local))

    def _sample(self, t: int) -> None:
        """Local top-K of each chip's vocab slice, then the candidates gathered along the vocab axis;
        or, sampling on the host, every row's logits (the padded vocab, bfloat16) read back."""
        lay = self.lay
        if self.host_sampling:
            self.ops.append(Op("to_host", "host", act_bytes=t * lay.vocab * ACT))
            return
        k = sampling.local_k(lay.vocab_local, lay.vocab, lay.config.vocab_size)
        self._op("sample", t * lay.vocab_local * ACT + t * DType.int32.bytes_per_element, (t, k, F32), (t, k, F32))
        for _values_then_ids in range(2):
            self._ccl("all_gather", lay.inner_axis, t * k * lay.n_inner * F32, (t, k * lay.n_inner, F32), inside="sample")

    def _kv_read(self, users: int, context: int) -> float:
        """K and V of ``users`` users at ``context`` positions, whole pages, on one chip."""
        pages = -(-context // self.page_size)
        return 2.0 * users * pages * self.page_size * self.lay.n_kv_local * self.hd * self.kvb

    def _layer(self, t: int, attention, decode: bool = False, owner_mask: bool = False) -> None:
        self._norm(t)
        self._qkv(t, decode)
        attention()
        self._attention_out(t, decode, owner_mask)
        self._add(t)
        self._norm(t)
        self._mlp(t)
        self._add(t)

    # ------------------------------------------------------------------ steps
    def decode(self, batch: int, context: int, active: int | None = None) -> list[Op]:
        """One decode step and its sampling: ``batch`` slots, each attending over ``context`` positions;
        ``active`` of them hold users whose KV cache is read (default all; a fixed-shape trace runs
        every slot, but attention reads only real users' pages)."""
        t, hd = batch, self.hd
        nq, nkv = self.lay.n_q_local, self.lay.n_kv_local
        b = self._group_rows(t)  # with user groups each chip attends for its group's users only
        readers = b if active is None else self._group_rows(min(active, t))

        def attention():
            for _cache in ("k", "v"):
                self._op("paged_update_cache", b * nkv * hd * ACT, kv_bytes=b * nkv * hd * self.kvb)
            self._op("sdpa_decode", 2 * b * nq * hd * ACT, (b, nq, hd), kv_bytes=self._kv_read(readers, context),
                     flops=4.0 * b * context * nq * hd, positions=float(context))

        self.ops = []
        self._embed(t, b)
        for _ in range(self.lay.config.num_hidden_layers):
            self._layer(t, attention, decode=True)
        self._lm_head(t)
        self._sample(t)
        return self.ops

    def prefill(self, tokens: int, start: int = 0) -> list[Op]:
        """One user's prefill chunk of ``tokens`` positions after ``start`` cached ones, padded to
        its bucket as the model pads it, then the first token sampled."""
        t, hd = prefill_bucket(tokens), self.hd
        nq, nkv = self.lay.n_q_local, self.lay.n_kv_local

        def attention():
            for _cache in ("k", "v"):
                self._op("paged_fill_cache", t * nkv * hd * ACT, kv_bytes=t * nkv * hd * self.kvb)
            self._op("sdpa_prefill", 2 * t * (nq + nkv) * hd * ACT, (t, nq, hd), kv_bytes=self._kv_read(1, start + t),
                     flops=4.0 * t * (start + (t + 1) / 2) * nq * hd, scores=t * (start + (t + 1) / 2) * nq)

        self.ops = []
        self._embed(t)
        for _ in range(self.lay.config.num_hidden_layers):
            self._layer(t, attention, owner_mask=start > 0 and self.lay.user_groups > 1)
        # the last real token's row, picked by a one-hot [1, T] matmul (one program per bucket)
        self._op("linear", (t + 1) * self.hl * ACT, (1, self.hl), flops=2.0 * t * self.hl)
        self._lm_head(1)
        self._sample(1)
        return self.ops
