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
heads its query heads use, duplicated when one KV head serves heads on several devices.
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

        hd = config.head_dim
        self.hidden = _round_up(config.hidden_size, self.n_hidden * align)
        self.hidden_local = self.hidden // self.n_hidden
        self.ff = _round_up(config.intermediate_size, self.n_inner * align)
        self.ff_local = self.ff // self.n_inner
        self.vocab = _round_up(config.vocab_size, self.n_inner * align)
        self.vocab_local = self.vocab // self.n_inner

        self.n_q_local = -(-config.num_attention_heads // self.n_inner)
        self.q_heads = self._assign_q_heads()
        self.group, self.kv_heads = self._assign_kv_heads()
        self.n_kv_local = self.n_q_local // self.group
        self.qkv_local = (self.n_q_local + 2 * self.n_kv_local) * hd

    # ------------------------------------------------------------------ heads
    def _assign_q_heads(self) -> list[list[int]]:
        """Query head ids per inner-axis device; -1 marks a zero padding head."""
        n = self.config.num_attention_heads
        out = []
        for d in range(self.n_inner):
            ids = range(d * self.n_q_local, (d + 1) * self.n_q_local)
            out.append([h if h < n else -1 for h in ids])
        return out

    def _assign_kv_heads(self) -> tuple[int, list[list[int]]]:
        """Largest GQA group size that is regular on every device, and each device's KV heads."""
        per_kv = self.config.num_attention_heads // self.config.num_key_value_heads
        for group in range(self.n_q_local, 0, -1):
            if self.n_q_local % group:
                continue
            kv_lists = []
            for heads in self.q_heads:
                kv = []
                for start in range(0, self.n_q_local, group):
                    used = {h // per_kv for h in heads[start : start + group] if h >= 0}
                    if len(used) > 1:
                        break
                    kv.append(used.pop() if used else (kv[-1] if kv else 0))
                else:
                    kv_lists.append(kv)
                    continue
                break
            if len(kv_lists) == self.n_inner:
                return group, kv_lists
        raise AssertionError("group size 1 always works")

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
        return f"{'1d' if self.one_d else '2d'}-{self.spec.shape_str}-a{self.align}"

    # ------------------------------------------------------------------ sharding host weights
    def inner_coord(self, r: int, c: int) -> int:
        return (r, c)[self.inner_axis]

    def hidden_coord(self, r: int, c: int) -> int:
        return (r, c)[self.hidden_axis]

    def pad_hidden(self, array: np.ndarray, axis: int) -> np.ndarray:
        return _pad_axis(array, axis, self.hidden)


def _pad_axis(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    extra = size - array.shape[axis]
    if extra == 0:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, extra)
    return np.pad(array, widths)
