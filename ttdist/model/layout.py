"""How Llama is fractured over a mesh: the one table every weight and activation asks.

Two mesh axes play two roles:

* ``hidden_axis`` carries the residual stream, width-fractured (``Shard(-1)``);
* ``inner_axis`` carries attention heads and the MLP's intermediate dim.

On a 1xN mesh (N300, T3000) both roles fall on axis 1: QKV / FF1 / FF3 are column
parallel on an all-gathered activation, WO / FF2 are row parallel and their partial sums
are reduce-scattered back into the fractured residual (the guide's 1D scheme). On an RxC
mesh with R > 1 (Galaxy 8x4) the inner axis is 0: every matmul weight is block-sharded
over both axes and partial sums are all-reduced along the axis that splits the inner
(contraction) dim (the guide's 2D scheme). Forward code calls ``up`` / ``down``-style
helpers in ``ccl.py`` that read these two fields; nothing branches on a system name.

Padding keeps the math exact: hidden, intermediate and vocab are zero-padded so every
per-device piece is a whole number of tiles; query heads are padded to a multiple of the
inner-axis size (padded heads have zero WQ rows and WO columns); each device holds the KV
heads its query heads use: each KV group's query heads are padded to whole blocks of G heads
that share one KV head, so a KV head is duplicated only on the chips holding its blocks.

User groups (tt_transformers' ``batch_size_per_device_group``): on a 2D mesh the heads already
fill the inner axis, so without more the KV cache would be replicated on every column of the
hidden axis. Instead the users are split over the ``user_groups`` column groups (the hidden
axis' size on a 2D mesh, 1 on a 1D mesh): column g holds KV pages only for group g's users,
its own pool of pages (``kv_cache``: pages sharded over the hidden axis, heads over the inner
axis), and the attention inputs of a decode step are per column (``per_group_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttdist.mesh.placement import Placements, Replicate, Shard
from ttdist.mesh.spec import MeshSpec
from ttdist.model.config import LlamaConfig

TILE = 32


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class WeightPlan:
    """One weight kind: its per-device shape and its placement per mesh axis."""

    name: str
    local_shape: tuple[int, ...]
    placements: Placements


class Layout:
    """Sharding plan for one model config on one mesh."""

    def __init__(self, config: LlamaConfig, spec: MeshSpec, *, align: int = TILE):
        self.config = config
        self.spec = spec
        self.align = align
        self.inner_axis = 1 if spec.rows == 1 else 0
        self.hidden_axis = 1
        self.one_d = self.inner_axis == self.hidden_axis
        self.n_hidden = spec.shape[self.hidden_axis]
        self.n_inner = spec.shape[self.inner_axis]
        # 2D: each column group of the hidden axis holds the KV pages of its own users
        self.user_groups = 1 if self.one_d else self.n_hidden
        self.group_axis = self.hidden_axis

        hd = config.head_dim
        self.hidden = _round_up(config.hidden_size, self.n_hidden * align)
        self.hidden_local = self.hidden // self.n_hidden
        self.ff = _round_up(config.intermediate_size, self.n_inner * align)
        self.ff_local = self.ff // self.n_inner
        self.vocab = _round_up(config.vocab_size, self.n_inner * align)
        self.vocab_local = self.vocab // self.n_inner

        self.group, blocks_per_device = self._choose_head_blocks()
        self.n_q_local = self.group * blocks_per_device
        self.n_kv_local = blocks_per_device
        self.q_heads, self.kv_heads = self._assign_heads(blocks_per_device)
        self.qkv_local = (self.n_q_local + 2 * self.n_kv_local) * hd

    # ------------------------------------------------------------------ heads
    def _choose_head_blocks(self) -> tuple[int, int]:
        """Block size G and blocks per device k for the query heads.

        Each KV group's query heads are zero-padded to a multiple of G and cut into blocks of
        G heads that share one KV head; every device holds k blocks (so k KV heads and G*k
        query heads). Pick the smallest per-device QKV width (G*k + 2k heads) that fits all
        blocks on the inner axis.
        """
        c = self.config
        per_kv = c.num_attention_heads // c.num_key_value_heads
        best = None
        for g in range(1, per_kv + 1):
            blocks = c.num_key_value_heads * -(-per_kv // g)
            k = -(-blocks // self.n_inner)
            cost = (g * k + 2 * k, g * k)
            if best is None or cost < best[0]:
                best = (cost, g, k)
        return best[1], best[2]

    def _assign_heads(self, k: int) -> tuple[list[list[int]], list[list[int]]]:
        """Query head ids (-1 = zero padding) and KV head ids per inner-axis device."""
        c = self.config
        per_kv = c.num_attention_heads // c.num_key_value_heads
        g = self.group
        blocks = []
        for kv in range(c.num_key_value_heads):
            heads = list(range(kv * per_kv, (kv + 1) * per_kv))
            heads += [-1] * (-len(heads) % g)
            blocks += [(heads[i : i + g], kv) for i in range(0, len(heads), g)]
        blocks += [([-1] * g, 0)] * (self.n_inner * k - len(blocks))
        q_heads = [sum((b[0] for b in blocks[d * k : (d + 1) * k]), []) for d in range(self.n_inner)]
        kv_heads = [[b[1] for b in blocks[d * k : (d + 1) * k]] for d in range(self.n_inner)]
        return q_heads, kv_heads

    # ------------------------------------------------------------------ placements
    def _on(self, hidden: object, inner: object) -> Placements:
        """Placements given what lies on the hidden and inner axes (same axis in 1D)."""
        out: list = [Replicate(), Replicate()]
        out[self.hidden_axis] = hidden
        if not self.one_d:
            out[self.inner_axis] = inner
        elif inner is not None and not isinstance(inner, Replicate):
            out[self.inner_axis] = inner
        return (out[0], out[1])

    @property
    def residual(self) -> Placements:
        """The residual stream ``[T, hidden]``: width-fractured on the hidden axis."""
        return self._on(Shard(1), Replicate())

    def up_weight(self) -> Placements:
        """``[hidden, inner]`` weights (QKV, FF1, FF3, LM head)."""
        if self.one_d:
            return self._on(Shard(1), None)
        return self._on(Shard(0), Shard(1))

    def down_weight(self) -> Placements:
        """``[inner, hidden]`` weights (WO, FF2)."""
        if self.one_d:
            return self._on(Shard(0), None)
        return self._on(Shard(1), Shard(0))

    @property
    def heads(self) -> Placements:
        """Head tensors and the KV cache: heads split on the inner axis."""
        out: list = [Replicate(), Replicate()]
        out[self.inner_axis] = Shard(1)
        return (out[0], out[1])

    @property
    def kv_cache(self) -> Placements:
        """The paged KV cache ``[groups * pages, kv_heads, page_size, hd]``: heads split on the inner
        axis and, with several user groups, each group's pool of pages on its column."""
        out = list(self.heads)
        if self.user_groups > 1:
            out[self.group_axis] = Shard(0)
        return (out[0], out[1])

    def per_group_rows(self, dim: int = 0) -> Placements:
        """A step input whose ``dim`` runs over the slot batch, each group's slots on its column
        (replicated with one group)."""
        out: list = [Replicate(), Replicate()]
        if self.user_groups > 1:
            out[self.group_axis] = Shard(dim)
        return (out[0], out[1])

    def plans(self) -> list[WeightPlan]:
        """The table: every weight kind, its per-device shape and placement."""
        hd = self.config.head_dim
        hl = self.hidden_local if not self.one_d else self.hidden
        return [
            WeightPlan("embedding", (self.config.vocab_size, self.hidden_local), self.residual),
            WeightPlan("attention_norm", (self.hidden_local,), self._on(Shard(0), Replicate())),
            WeightPlan("wqkv", (hl, self.qkv_local), self.up_weight()),
            WeightPlan("wo", (self.n_q_local * hd, hl), self.down_weight()),
            WeightPlan("ffn_norm", (self.hidden_local,), self._on(Shard(0), Replicate())),
            WeightPlan("w1", (hl, self.ff_local), self.up_weight()),
            WeightPlan("w3", (hl, self.ff_local), self.up_weight()),
            WeightPlan("w2", (self.ff_local, hl), self.down_weight()),
            WeightPlan("norm", (self.hidden_local,), self._on(Shard(0), Replicate())),
            WeightPlan("lm_head", (hl, self.vocab_local), self.up_weight()),
        ]

    def describe(self) -> str:
        return (
            f"{self.spec.shape_str} {'1D' if self.one_d else '2D'}: hidden {self.config.hidden_size}->{self.hidden} "
            f"on axis {self.hidden_axis}, heads {self.config.num_attention_heads}->{self.n_q_local * self.n_inner} "
            f"({self.n_q_local}/dev, kv {self.n_kv_local}/dev, group {self.group}) and ff {self.ff} on axis {self.inner_axis}, "
            f"vocab {self.vocab}"
        )

    @property
    def key(self) -> str:
        """Names this layout in the converted-weight cache."""
        return f"{'1d' if self.one_d else '2d'}-{self.spec.shape_str}-a{self.align}-g{self.group}k{self.n_kv_local}"

    # ------------------------------------------------------------------ host weights
    def pad_hidden(self, array: np.ndarray, axis: int) -> np.ndarray:
        """``array`` zero-padded along ``axis`` to the padded hidden size."""
        return pad_axis(array, axis, self.hidden)


def pad_axis(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    extra = size - array.shape[axis]
    if extra == 0:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, extra)
    return np.pad(array, widths)
