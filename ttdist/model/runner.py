"""``MeshModelRunner``: the engine's ModelRunner on a mesh backend (sim or ttnn).

It turns the engine's plain-Python inputs into numpy page tables and positions, runs the
model, and samples on the mesh. ``kv_budget`` sizes the paged KV cache from the mesh's
DRAM: pages = (chip DRAM - weights - reserve) / bytes per page per chip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttdist.engine.runner import DecodeInput, PrefillInput, RunnerInfo, SamplingSpec
from ttdist.mesh import make_backend
from ttdist.mesh.backend import SamplingBatch
from ttdist.mesh.precision import DType
from ttdist.mesh.spec import MeshSpec, parse_mesh
from ttdist.model.config import LlamaConfig
from ttdist.model.layout import Layout
from ttdist.model.llama import CacheConfig, LlamaModel
from ttdist.model.weights import ShardedWeights, load_weights

DEFAULT_MAX_PAGES = 4096


@dataclass(frozen=True)
class KvBudget:
    weight_bytes_per_chip: int
    page_bytes_per_chip: int
    reserve_bytes_per_chip: int
    num_pages: int


def weight_bytes_per_chip(layout: Layout, dtype: DType) -> int:
    """Tile-padded bytes one chip holds for the weights (matmul weights in ``dtype``)."""
    from math import prod

    def tiles(shape):
        dims = list(shape) if len(shape) > 1 else [1, *shape]
        dims[-1] = -(-dims[-1] // 32) * 32
        dims[-2] = -(-dims[-2] // 32) * 32
        return prod(dims)

    per_layer = 0.0
    top = 0.0
    for plan in layout.plans():
        is_matmul = len(plan.local_shape) == 2 and plan.name != "embedding"
        bpe = (dtype if is_matmul else DType.bfloat16).bytes_per_element
        if dtype is DType.float32:
            bpe = 4.0
        size = tiles(plan.local_shape) * bpe
        if plan.name in ("embedding", "norm", "lm_head"):
            top += size
        else:
            per_layer += size
    return int(top + per_layer * layout.config.num_hidden_layers)


def page_bytes_per_chip(layout: Layout, page_size: int, dtype: DType) -> int:
    """K and V for one page in every layer, on one chip."""
    c = layout.config
    per = layout.n_kv_local * page_size * c.head_dim * dtype.bytes_per_element
    return int(2 * per * c.num_hidden_layers)


def kv_budget(path_or_config, *, mesh: str | MeshSpec, dtype: str | DType = "bfloat16", page_size: int = 32, reserve_fraction: float = 0.1, kv_dtype: str | DType = "bfloat16") -> KvBudget:
    config = path_or_config if isinstance(path_or_config, LlamaConfig) else LlamaConfig.from_dir(path_or_config)
    spec = parse_mesh(mesh) if isinstance(mesh, str) else mesh
    layout = Layout(config, spec)
    weights = weight_bytes_per_chip(layout, DType.parse(dtype))
    page = page_bytes_per_chip(layout, page_size, DType.parse(kv_dtype))
    reserve = int(spec.dram_bytes_per_chip * reserve_fraction)
    free = spec.dram_bytes_per_chip - weights - reserve
    if free < page:
        raise MemoryError(
            f"{config.num_hidden_layers}-layer model needs {weights:,} bytes of weights per chip on {spec.shape_str}; "
            f"{spec.dram_bytes_per_chip:,} bytes of DRAM minus a {reserve:,} byte reserve leaves no room for the KV cache"
        )
    return KvBudget(weights, page, reserve, free // page)


def _sampling_batch(specs: list[SamplingSpec]) -> SamplingBatch:
    return SamplingBatch(
        temperature=np.array([s.temperature for s in specs], dtype=np.float64),
        top_k=np.array([s.top_k for s in specs], dtype=np.int64),
        top_p=np.array([s.top_p for s in specs], dtype=np.float64),
        seed=np.array([-1 if s.seed is None else s.seed for s in specs], dtype=np.int64),
        step=np.array([s.step for s in specs], dtype=np.int64),
    )


def _page_matrix(tables: list[list[int]]) -> np.ndarray:
    width = max((len(t) for t in tables), default=1) or 1
    out = np.full((len(tables), width), -1, dtype=np.int64)
    for i, t in enumerate(tables):
        out[i, : len(t)] = t
    return out


class MeshModelRunner:
    """Runs prefill chunks and decode batches of a Llama on one mesh."""

    def __init__(self, weights: ShardedWeights, *, backend: str = "sim", page_size: int = 32, num_pages: int | None = None,
                 max_batch: int = 32, max_context: int | None = None, kv_dtype: str | DType | None = None, backend_options: dict | None = None):
        config = weights.config
        kv = DType.float32 if weights.dtype is DType.float32 else DType.parse(kv_dtype or "bfloat16")
        if num_pages is None:
            budget = kv_budget(config, mesh=weights.mesh, dtype=weights.dtype, page_size=page_size, kv_dtype=kv)
            num_pages = min(budget.num_pages, DEFAULT_MAX_PAGES)
        self.backend = make_backend(weights.mesh, backend, **(backend_options or {}))
        self.model = LlamaModel(self.backend, weights, CacheConfig(num_pages, page_size, kv))
        self.info = RunnerInfo(
            vocab_size=config.vocab_size,
            max_context=min(max_context or config.max_position_embeddings, config.max_position_embeddings),
            page_size=page_size,
            num_pages=num_pages,
            max_batch=max_batch,
            eos_token_ids=tuple(config.eos_token_ids),
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, mesh: str = "1x1", backend: str = "sim", dtype: str = "float32",
                        page_size: int = 32, num_pages: int | None = None, max_batch: int = 32, max_context: int | None = None,
                        cache_dir: str | Path | None = None, **options) -> "MeshModelRunner":
        weights = load_weights(path, mesh=mesh, dtype=dtype, cache_dir=cache_dir)
        return cls(weights, backend=backend, page_size=page_size, num_pages=num_pages, max_batch=max_batch, max_context=max_context, **options)

    @classmethod
    def from_sharded(cls, weights: ShardedWeights, **options) -> "MeshModelRunner":
        return cls(weights, **options)

    def prefill(self, inp: PrefillInput) -> int | None:
        logits = self.model.prefill_forward(inp.token_ids, inp.start_pos, inp.page_table)
        if not inp.sample:
            return None
        return int(self.model.sample(logits, _sampling_batch([inp.sampling]))[0])

    def decode(self, inp: DecodeInput) -> list[int]:
        logits = self.model.decode_forward(inp.token_ids, inp.positions, _page_matrix(inp.page_tables))
        return [int(t) for t in self.model.sample(logits, _sampling_batch(inp.sampling))]

    # for tests and benchmarks: the logits themselves
    def prefill_logits(self, token_ids, start_pos: int, page_table) -> np.ndarray:
        return self.model.logits_to_host(self.model.prefill_forward(token_ids, start_pos, page_table))

    def decode_logits(self, token_ids, positions, page_tables) -> np.ndarray:
        return self.model.logits_to_host(self.model.decode_forward(token_ids, positions, _page_matrix(page_tables)))
