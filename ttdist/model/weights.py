"""Hugging Face Llama checkpoints -> every chip's weight pieces, through the converted-weight cache.

``layer_tensors`` / ``top_tensors`` rearrange and zero-pad HF tensors into the layout's global
arrays (query / KV heads grouped per inner-axis device, ``[K, N]`` matmul orientation), one
tensor at a time; ``weight_cache.to_devices`` cuts each into the ``[R', C', *local]`` pieces a
backend's ``from_host_per_device`` uploads. ``convert_checkpoint`` streams a checkpoint
(``checkpoint.Checkpoint``) through that into a cache entry keyed by (checkpoint identity,
layout, storage dtype, format version); ``load_converted`` opens an entry lazily, so a
replica reads only its own pieces, one tensor at a time. No torch anywhere on this path.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttdist.mesh.precision import DType, Precision
from ttdist.mesh.spec import MeshSpec, parse_mesh
from ttdist.model import weight_cache as wc
from ttdist.model.checkpoint import Checkpoint
from ttdist.model.config import CheckpointError, LlamaConfig
from ttdist.model.layout import Layout, _pad_axis

CACHE_VERSION = wc.CACHE_VERSION


def expected_shapes(c: LlamaConfig) -> dict[str, tuple[int, ...]]:
    hd, h = c.head_dim, c.hidden_size
    out = {"model.embed_tokens.weight": (c.vocab_size, h), "model.norm.weight": (h,)}
    if not c.tie_word_embeddings:
        out["lm_head.weight"] = (c.vocab_size, h)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        out.update({
            p + "self_attn.q_proj.weight": (c.num_attention_heads * hd, h),
            p + "self_attn.k_proj.weight": (c.num_key_value_heads * hd, h),
            p + "self_attn.v_proj.weight": (c.num_key_value_heads * hd, h),
            p + "self_attn.o_proj.weight": (h, c.num_attention_heads * hd),
            p + "mlp.gate_proj.weight": (c.intermediate_size, h),
            p + "mlp.up_proj.weight": (c.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, c.intermediate_size),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        })
    return out


def open_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint whose every expected tensor is present with its config.json shape."""
    ckpt = Checkpoint(path)
    ckpt.check(expected_shapes(ckpt.config))
    return ckpt


def read_checkpoint(path: str | Path) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """Config and every HF-named tensor as float32 (for small models and tests), all checked."""
    ckpt = open_checkpoint(path)
    return ckpt.config, {name: ckpt.read(name, dtype=np.float32) for name in expected_shapes(ckpt.config)}


# ---------------------------------------------------------------------- layout-ready arrays
def _heads(weight_t: np.ndarray, ids: list[int], hd: int) -> np.ndarray:
    """Columns of ``weight_t`` ([K, n*hd]) for head ids; -1 gives zero columns."""
    zero = np.zeros((weight_t.shape[0], hd), weight_t.dtype)
    return np.concatenate([weight_t[:, h * hd : (h + 1) * hd] if h >= 0 else zero for h in ids], axis=1)


def layer_tensors(layout: Layout, hf: Mapping, i: int):
    """``(kind, global array)`` of layer ``i`` one at a time; each reads only its own HF tensors."""
    hd, ff, p = layout.config.head_dim, layout.ff, f"model.layers.{i}."
    yield "attention_norm", layout.pad_hidden(hf[p + "input_layernorm.weight"], 0)
    q_t = layout.pad_hidden(hf[p + "self_attn.q_proj.weight"].T, 0)
    k_t = layout.pad_hidden(hf[p + "self_attn.k_proj.weight"].T, 0)
    v_t = layout.pad_hidden(hf[p + "self_attn.v_proj.weight"].T, 0)
    yield "wqkv", np.concatenate([
        np.concatenate([_heads(q_t, layout.q_heads[d], hd), _heads(k_t, layout.kv_heads[d], hd),
                        _heads(v_t, layout.kv_heads[d], hd)], axis=1)
        for d in range(layout.n_inner)
    ], axis=1)
    del q_t, k_t, v_t
    o = layout.pad_hidden(hf[p + "self_attn.o_proj.weight"], 0)  # [H, nq*hd]: columns per head
    yield "wo", layout.pad_hidden(np.concatenate([_heads(o, layout.q_heads[d], hd).T for d in range(layout.n_inner)], axis=0), 1)
    del o
    yield "ffn_norm", layout.pad_hidden(hf[p + "post_attention_layernorm.weight"], 0)
    yield "w1", _pad_axis(layout.pad_hidden(hf[p + "mlp.gate_proj.weight"].T, 0), 1, ff)
    yield "w3", _pad_axis(layout.pad_hidden(hf[p + "mlp.up_proj.weight"].T, 0), 1, ff)
    yield "w2", layout.pad_hidden(_pad_axis(hf[p + "mlp.down_proj.weight"].T, 0, ff), 1)


def prepare_layer(layout: Layout, hf: Mapping, i: int) -> dict[str, np.ndarray]:
    return dict(layer_tensors(layout, hf, i))


def norm_tensor(layout: Layout, weight: np.ndarray) -> np.ndarray:
    return layout.pad_hidden(weight, 0)


def prepare_top(layout: Layout, hf: Mapping) -> dict[str, np.ndarray]:
    c = layout.config
    embed = hf["model.embed_tokens.weight"]
    head = embed if c.tie_word_embeddings else hf["lm_head.weight"]
    return {
        "embedding": layout.pad_hidden(embed, 1),
        "norm": norm_tensor(layout, hf["model.norm.weight"]),
        "lm_head": _pad_axis(layout.pad_hidden(head.T, 0), 1, layout.vocab),
    }


@dataclass
class ShardedWeights:
    """Every chip's weights for one (checkpoint, mesh): ``arrays[name]`` is ``[R', C', *local]``
    (float32; in memory, or read on demand from a cache entry). Picklable for Ray."""

    config: LlamaConfig
    mesh: MeshSpec
    dtype: DType
    arrays: Mapping[str, np.ndarray]
    source: str = ""
    align: int = 32
    precision: Precision | None = None

    def __post_init__(self) -> None:
        if self.precision is None:
            self.precision = Precision.uniform(self.dtype)

    def layout(self) -> Layout:
        return Layout(self.config, self.mesh, align=self.align)

    def placements(self, name: str):
        plans = {p.name: p for p in self.layout().plans()}
        return plans[name.rsplit(".", 1)[-1]].placements


def prepare(config: LlamaConfig, hf: Mapping, mesh: MeshSpec, dtype: DType | str, *, source: str = "",
            precision: Precision | str | None = None) -> ShardedWeights:
    """In-memory per-device weights from HF-named arrays (small models and tests)."""
    layout = Layout(config, mesh)
    table = {p.name: p.placements for p in layout.plans()}
    arrays = {k: wc.to_devices(np.asarray(a, np.float32), table[k], mesh.shape) for k, a in prepare_top(layout, hf).items()}
    for i in range(config.num_hidden_layers):
        for kind, array in layer_tensors(layout, hf, i):
            arrays[f"layers.{i}.{kind}"] = wc.to_devices(np.asarray(array, np.float32), table[kind], mesh.shape)
    dtype = DType.parse(dtype)
    return ShardedWeights(config, mesh, dtype, arrays, source, precision=Precision.parse(precision or dtype))


# ---------------------------------------------------------------------- converted-weight cache
def default_cache_dir() -> Path:
    return Path(os.environ.get("TTDIST_CACHE", Path.home() / ".cache" / "ttdist")) / "weights"


def storage_dtype(precision: Precision) -> np.dtype:
    return np.dtype(np.float32) if precision.needs_float32_storage else wc.BF16


def convert_checkpoint(path: str | Path, *, mesh: str | MeshSpec = "1x1", dtype: str | DType | Precision = "bfloat16",
                       cache_dir: str | Path | None = None, progress: bool = True, verify_hash: bool = False) -> Path:
    """Convert once and return the cache entry's directory (reused when it exists).

    The entry is keyed by the checkpoint's cheap identity (config, headers, sizes, mtimes);
    ``verify_hash`` also hashes every byte and reconverts when the entry recorded another hash.
    """
    spec = parse_mesh(mesh) if isinstance(mesh, str) else mesh
    precision = Precision.parse(dtype)
    storage = storage_dtype(precision)
    ckpt = open_checkpoint(path)
    layout = Layout(ckpt.config, spec)
    identity = ckpt.identity()
    entry = Path(cache_dir or default_cache_dir()) / f"{identity}-{layout.key}-{'f32' if storage == np.float32 else 'bf16'}-v{CACHE_VERSION}"
    content = ckpt.content_hash() if verify_hash else None
    if (entry / wc.MANIFEST).exists():
        recorded = json.loads((entry / wc.MANIFEST).read_text()).get("content_hash")
        if content is None or recorded in (None, content):
            if content is not None and recorded is None:
                _record_hash(entry, content)
            return entry
        shutil.rmtree(entry, ignore_errors=True)
    tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tensors = wc.write_entry(ckpt, layout, storage, tmp, progress=progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = {
        "version": CACHE_VERSION, "checkpoint": str(Path(path).resolve()), "checkpoint_identity": identity,
        "content_hash": content, "layout": layout.key, "layout_description": layout.describe(),
        "mesh": spec.shape_str, "mesh_name": spec.name, "dtype": precision.name,
        "storage": "float32" if storage == np.float32 else "bfloat16",
        "config": json.loads((Path(path) / "config.json").read_text()),
        "files": {f.name: f.stat().st_size for f in sorted(tmp.glob("*.safetensors"))},
        "tensors": tensors,
    }
    (tmp / wc.MANIFEST).write_text(json.dumps(manifest, indent=1))
    try:
        tmp.rename(entry)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _record_hash(entry: Path, content: str) -> None:
    manifest = json.loads((entry / wc.MANIFEST).read_text())
    manifest["content_hash"] = content
    tmp = entry / (wc.MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.rename(entry / wc.MANIFEST)


def load_converted(entry: str | Path, *, precision: Precision | str | None = None) -> ShardedWeights:
    """A cache entry as ``ShardedWeights`` whose arrays are read from disk when placed."""
    entry = Path(entry)
    manifest = wc.read_manifest(entry)
    config = LlamaConfig.from_dict(manifest["config"], str(entry / wc.MANIFEST))
    chosen = Precision.parse(precision or manifest["dtype"])
    if chosen.needs_float32_storage and manifest["storage"] != "float32":
        raise CheckpointError(f"{entry}: stored in {manifest['storage']}; precision {chosen.name} needs a float32 conversion")
    spec = parse_mesh(manifest["mesh_name"])
    uniform = DType.float32 if manifest["storage"] == "float32" else chosen.wqkv
    return ShardedWeights(config, spec, uniform, wc.CachedArrays(entry, manifest["tensors"]), manifest["checkpoint"],
                          precision=chosen)


@dataclass(frozen=True)
class WeightSource:
    """What a replica is handed to build its model: a cache entry on its node or shards to
    fetch through Ray, and the precision to upload them in."""

    entry: str | None = None
    remote: wc.RemoteShards | None = None
    precision: str = ""

    def open(self) -> ShardedWeights:
        entry = self.entry if self.remote is None else str(self.remote.fetch())
        return load_converted(entry, precision=self.precision or None)


def open_weights(weights) -> ShardedWeights:
    """``ShardedWeights`` from whatever a replica was handed (cache path, source, or weights)."""
    if isinstance(weights, (str, Path)):
        return load_converted(weights)
    if isinstance(weights, WeightSource):
        return weights.open()
    return weights


def load_weights(path: str | Path, *, mesh: str | MeshSpec = "1x1", dtype: str | DType | Precision = "float32",
                 cache_dir: str | Path | None = None, progress: bool = False) -> ShardedWeights:
    """Layout-ready weights for a checkpoint, through the converted-weight cache."""
    entry = convert_checkpoint(path, mesh=mesh, dtype=dtype, cache_dir=cache_dir, progress=progress)
    return load_converted(entry, precision=dtype)
