"""Per-chip DRAM: weights, KV cache per user and per page, activations; how many users fit.

Weights are the layout's own per-chip shapes (``Layout.plans()``) stored in 32x32 tiles at the
precision's dtypes (``accounting.tile_padded_bytes``), exactly what the simulator's DRAM ledger
counts when the model loads. A KV page holds K and V of ``page_size`` positions for the chip's
KV heads in every layer, as ``LlamaModel``'s paged caches do. Pages for the KV cache are what
is left of each chip's DRAM after weights, the activations of the largest step (a decode batch or
one prefill chunk: long prompts are prefilled in chunks, so a 128K context needs only a chunk's
activations) and what the runtime itself keeps in DRAM: the decode trace region and the
collectives' persistent buffers. ``reserve_fraction`` instead keeps the coordinator's flat rule
(``ttdist.model.runner.kv_budget``: 10 % of DRAM).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ttdist.mesh.accounting import tile_padded_bytes
from ttdist.model.layout import Layout
from ttdist.mesh.precision import Precision
from ttdist.planner.step import StepBuilder

RESERVE_FRACTION = 0.1   # the coordinator's default (ttdist.model.runner.kv_budget)
# DRAM each chip sets aside for the captured decode trace: the Galaxy demo's vLLM server runs
# with trace_region_size 184915840 (models/demos/llama3_70b_galaxy/README.md); the largest any
# published Llama configuration asks for, so every system is planned with it.
TRACE_REGION_BYTES = 184_915_840
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


def ccl_buffer_bytes_per_chip(layout: Layout, precision: Precision, *, batch: int, prefill_chunk: int) -> float:
    """Persistent buffers of the asynchronous collectives (fabric CCLs write into preallocated
    intermediate buffers): the largest collective output of a decode step or a prefill chunk."""
    builder = StepBuilder(layout, precision)
    sizes = [op.out_bytes for ops in (builder.decode(batch, 1), builder.prefill(prefill_chunk))
             for op in ops if op.kind == "ccl"]
    return max(sizes, default=0.0)


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
    reserve: int              # trace region + collective buffers (or the flat fraction when asked)
    kv_page: int
    kv_per_user: int          # at the plan's context, whole pages
    kv_pages: int             # pages that fit after weights, activations and reserve
    max_users: int            # users at the plan's context that fit in those pages (every user group's)
    user_groups: int = 1      # column groups each holding its own users' pages (Layout.user_groups)
    trace_region: int = 0
    ccl_buffers: int = 0
    prefill_chunk: int = 0    # the prefill chunk the activations are sized for

    def to_json(self) -> dict:
        return asdict(self)


def memory(layout: Layout, precision: Precision, *, context: int, batch: int, page_size: int,
           prefill_chunk: int, reserve_fraction: float | None = None) -> Memory:
    dram = layout.spec.dram_bytes_per_chip
    weights = weight_bytes_per_chip(layout, precision)
    acts = activation_bytes_per_chip(layout, precision, batch=batch, prefill_chunk=prefill_chunk)
    if reserve_fraction is None:
        trace = TRACE_REGION_BYTES
        ccl = int(ccl_buffer_bytes_per_chip(layout, precision, batch=batch, prefill_chunk=prefill_chunk))
        reserve = trace + ccl
    else:
        trace, ccl, reserve = 0, 0, int(dram * reserve_fraction)
    page = page_bytes_per_chip(layout, precision, page_size)
    per_user_pages = -(-context // page_size)
    free = dram - weights - acts - reserve
    pages = int(free // page) if free > 0 else 0
    groups = layout.user_groups  # a Galaxy's columns each hold a pool of `pages` for their own users
    return Memory(dram, int(weights), int(acts), reserve, int(page), int(page * per_user_pages), pages,
                  groups * (pages // per_user_pages), groups, trace, ccl, prefill_chunk)
