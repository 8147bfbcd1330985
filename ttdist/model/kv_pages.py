"""A replica's KV pages as host arrays, for the engine's KV tiers (``ttdist.engine.kv_tiers``).

A page read is every layer's K and V of one engine page id, ``[layers, 2, kv_heads, page_size,
head_dim]``, exactly as the chips hold it: a float32 cache reads back float32; a bfloat16 or
bfloat8_b cache holds values that bfloat16 represents exactly (a bfloat8_b block is a 7-bit
mantissa under a shared exponent), so it travels as bfloat16 bits (uint16), half the bytes.
With user groups the engine's id ``g * P + i`` is page ``i`` of group g's pool, stored at
``g * (P + 1) + i`` (each pool has its scratch page); the array holds no trace of the group,
so a page read from one group's pool may be written into another's.

``identity`` names what the pages mean: the weights (a digest of the config and the embedding
table), the layout, the backend, the KV dtype and the page size. Pages travel only between
runners with the same identity.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import xxhash

from ttdist.mesh.backend import MeshError
from ttdist.mesh.precision import DType


def identity(weights, backend: str, kv_dtype: DType, page_size: int) -> str:
    digest = xxhash.xxh3_64()
    digest.update(json.dumps(asdict(weights.config), sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(weights.arrays["embedding"]).view(np.uint8).reshape(-1).data)
    return f"llama-{digest.hexdigest()}|{weights.layout().key}|{backend}|kv={DType.parse(kv_dtype).value}|page={page_size}"


def cache_index(model, page_ids: list[int]) -> list[int]:
    """Engine page ids -> indices of dim 0 of the paged caches (each pool followed by its scratch page)."""
    pages = model.groups.pages
    out = []
    for pid in page_ids:
        group, index = divmod(int(pid), pages)
        if not 0 <= group < model.groups.count:
            raise MeshError(f"page {pid} is outside the {model.groups.total_pages} pages of this runner")
        out.append(group * (pages + 1) + index)
    return out


def read(backend, model, page_ids: list[int]) -> list[np.ndarray]:
    index = cache_index(model, page_ids)
    layers = np.stack([np.stack([backend.read_pages(c.k, index), backend.read_pages(c.v, index)]) for c in model.caches])
    compact = model.cache_config.dtype is not DType.float32
    return [_to_bf16_bits(page) if compact else page for page in np.moveaxis(layers, 2, 0)]


def write(backend, model, page_ids: list[int], pages: list[np.ndarray]) -> None:
    index = cache_index(model, page_ids)
    data = np.stack([_from_bf16_bits(p) if p.dtype == np.uint16 else np.asarray(p, np.float32) for p in pages])
    want = (len(model.caches), 2)
    if data.shape[1:3] != want:
        raise MeshError(f"KV pages hold {data.shape[1:3]} (layers, K/V); this model needs {want}")
    for layer, cache in enumerate(model.caches):
        backend.write_pages(cache.k, index, data[:, layer, 0])
        backend.write_pages(cache.v, index, data[:, layer, 1])


def _to_bf16_bits(page: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(page, dtype=np.float32).view(np.uint32)
    if np.any(bits & 0xFFFF):
        raise MeshError("a bfloat16 / bfloat8_b KV page holds values bfloat16 cannot represent exactly")
    return (bits >> 16).astype(np.uint16)


def _from_bf16_bits(page: np.ndarray) -> np.ndarray:
    return (page.astype(np.uint32) << 16).view(np.float32)
