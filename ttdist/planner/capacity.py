"""Per-chip DRAM: weights, KV cache per user and per page, activations; how many users fit.

Weights are the layout's own per-chip shapes (``Layout.plans()``) stored in 32x32 tiles at the
precision's dtypes (``accounting.tile_padded_bytes``), exactly what the simulator's DRAM ledger
counts when the model loads. A KV page holds K and V of ``page_size`` positions for the chip's
KV heads in every layer, as ``LlamaModel``'s paged caches do. Pages for the KV cache are what
is left of each chip's DRAM after weights, the activations of the largest step and a reserve,
the same rule as the coordinator's KV budget (``ttdist.model.runner.kv_budget``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ttdist.mesh.accounting import tile_padded_bytes
from ttdist.model.layout import Layout
from ttdist.mesh.precision import Precision
from ttdist.planner.step import StepBuilder

RESERVE_FRACTION = 0.1   # the coordinator's default (ttdist.model.runner.kv_budget)
_PER_LAYER = ("attention_norm", "wqkv", "wo", "ffn_norm", "w1", "w3", "w2")


def weight_bytes_per_chip(layout: Layout, precision: Precision) -> float:
    total = 0.0
    for plan in layout.plans():
        size = tile_padded_bytes(plan.local_shape, precision.weight_dtype(plan.name))
        total += size * (layout.config.num_hidden_layers if plan.name in _PER_LAYER else 1)
    return total


def page_bytes_per_chip(layout: Layout, precision: Precision, page_size: int) -> float:
    c = layout.config
    one = tile_padded_bytes((1, layout.n_kv_local, page_size, c.head_dim), precision.kv_cache)
    return 2 * one * c.num_hidden_layers


def activation_bytes_per_chip(layout: Layout, precision: Precision, *, batch: int, prefill_chunk: int) -> float:
    """An upper bound on the activations alive during a step: every output of one decoder layer
    (or of the LM head and sampling, if larger) plus the residual stream, in 32x32 tiles, for a
    decode batch or a prefill chunk, whichever needs more."""
    builder = StepBuilder(layout, precision)
    peak = 0.0
    for ops in (builder.decode(batch, 1), builder.prefill(prefill_chunk)):
        embed, first_layer = ops[2], _first_layer(ops)
        tail = ops[_tail_start(ops):]
        peak = max(peak, 2 * embed.out_bytes + max(sum(op.out_bytes for op in first_layer),
                                                   sum(op.out_bytes for op in tail)))
    return peak


def _first_layer(ops):
    """The ops of the first decoder layer: from the first norm to the second residual add."""
    adds = [i for i, op in enumerate(ops) if op.name == "add"]
    return ops[3: adds[1] + 1]


def _tail_start(ops) -> int:
    return max(i for i, op in enumerate(ops) if op.name == "add") + 1


@dataclass(frozen=True)
class Memory:
    """Bytes on one chip (every chip of the mesh holds the same amounts)."""

    dram_per_chip: int
    weights: int
    activations: int
    reserve: int
    kv_page: int
    kv_per_user: int          # at the plan's context, whole pages
    kv_pages: int             # pages that fit after weights, activations and reserve
    max_users: int            # users at the plan's context that fit in those pages (every user group's)
    user_groups: int = 1      # column groups each holding its own users' pages (Layout.user_groups)

    def to_json(self) -> dict:
        return asdict(self)


def memory(layout: Layout, precision: Precision, *, context: int, batch: int, page_size: int,
           prefill_chunk: int, reserve_fraction: float = RESERVE_FRACTION) -> Memory:
    dram = layout.spec.dram_bytes_per_chip
    weights = weight_bytes_per_chip(layout, precision)
    acts = activation_bytes_per_chip(layout, precision, batch=batch, prefill_chunk=prefill_chunk)
    reserve = int(dram * reserve_fraction)
    page = page_bytes_per_chip(layout, precision, page_size)
    per_user_pages = -(-context // page_size)
    free = dram - weights - acts - reserve
    pages = int(free // page) if free > 0 else 0
    groups = layout.user_groups  # a Galaxy's columns each hold a pool of `pages` for their own users
    return Memory(dram, int(weights), int(acts), reserve, int(page), int(page * per_user_pages), pages,
                  groups * (pages // per_user_pages), groups)
