"""Hugging Face Llama checkpoints -> layout-ready weights, with a converted-weight cache.

``read_checkpoint`` reads ``config.json`` + ``*.safetensors`` with numpy only (bf16 is
widened to float32), checking every tensor's presence and shape. ``prepare`` rearranges
and zero-pads the weights into the layout's global arrays (query / KV heads grouped per
inner-axis device, ``[K, N]`` matmul orientation) so a backend's ``from_host`` shards them
with the layout's placements. ``convert_checkpoint`` writes them once to a cache keyed by
(checkpoint hash, layout, mesh shape, dtype) with a manifest; ``load_converted`` reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ttdist.mesh.placement import Placements, Replicate, Shard
from ttdist.mesh.precision import DType
from ttdist.mesh.spec import MeshSpec, parse_mesh
from ttdist.model.config import CheckpointError, LlamaConfig
from ttdist.model.layout import Layout, _pad_axis

CACHE_VERSION = 2  # bump whenever prepare() or the layout changes what it writes
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "I32": np.int32}


# ---------------------------------------------------------------------- reading safetensors
def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one safetensors file as float32 numpy arrays (bf16 widened)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    if len(raw) < 8:
        raise CheckpointError(f"{path}: truncated (no header)")
    (header_len,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8 : 8 + header_len])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header") from None
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        kind = info.get("dtype")
        if kind not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {kind}")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        dtype = np.dtype(_DTYPES[kind])
        if base + end > len(raw) or end - start != int(np.prod(shape)) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} is truncated or its size does not match shape {shape}")
        arr = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=base + start).reshape(shape)
        if kind == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.astype(np.float32) if arr.dtype != np.float32 else arr
    return out


def read_checkpoint(path: str | Path) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """Config and HF-named float32 tensors of a checkpoint directory, shapes checked."""
    path = Path(path)
    config = LlamaConfig.from_dir(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors files in the checkpoint directory")
    tensors: dict[str, np.ndarray] = {}
    origin: dict[str, Path] = {}
    for file in files:
        for name, arr in read_safetensors(file).items():
            tensors[name] = arr
            origin[name] = file
    for name, shape in expected_shapes(config).items():
        if name not in tensors:
            raise CheckpointError(f"{path}: tensor {name!r} is missing")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(
                f"{origin[name]}: tensor {name!r} has shape {tuple(tensors[name].shape)}, config.json says {shape}"
            )
        if not np.isfinite(tensors[name]).all():
            raise CheckpointError(f"{origin[name]}: tensor {name!r} contains NaN or inf")
    return config, tensors


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


# ---------------------------------------------------------------------- layout-ready arrays
def _heads(weight_t: np.ndarray, ids: list[int], hd: int) -> np.ndarray:
    """Columns of ``weight_t`` ([K, n*hd]) for head ids; -1 gives zero columns."""
    cols = [weight_t[:, h * hd : (h + 1) * hd] if h >= 0 else np.zeros((weight_t.shape[0], hd), np.float32) for h in ids]
    return np.concatenate(cols, axis=1)


def prepare_layer(layout: Layout, hf: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    c, hd = layout.config, layout.config.head_dim
    p = f"model.layers.{i}."
    q_t = layout.pad_hidden(hf[p + "self_attn.q_proj.weight"].T, 0)
    k_t = layout.pad_hidden(hf[p + "self_attn.k_proj.weight"].T, 0)
    v_t = layout.pad_hidden(hf[p + "self_attn.v_proj.weight"].T, 0)
    o = layout.pad_hidden(hf[p + "self_attn.o_proj.weight"], 0)  # [H, nq*hd]: columns per head
    qkv_blocks, o_blocks = [], []
    for d in range(layout.n_inner):
        qkv_blocks.append(np.concatenate([
            _heads(q_t, layout.q_heads[d], hd),
            _heads(k_t, layout.kv_heads[d], hd),
            _heads(v_t, layout.kv_heads[d], hd),
        ], axis=1))
        o_blocks.append(_heads(o, layout.q_heads[d], hd).T)
    ff = layout.ff
    return {
        "attention_norm": layout.pad_hidden(hf[p + "input_layernorm.weight"], 0),
        "wqkv": np.concatenate(qkv_blocks, axis=1),
        "wo": layout.pad_hidden(np.concatenate(o_blocks, axis=0), 1),
        "ffn_norm": layout.pad_hidden(hf[p + "post_attention_layernorm.weight"], 0),
        "w1": _pad_axis(layout.pad_hidden(hf[p + "mlp.gate_proj.weight"].T, 0), 1, ff),
        "w3": _pad_axis(layout.pad_hidden(hf[p + "mlp.up_proj.weight"].T, 0), 1, ff),
        "w2": layout.pad_hidden(_pad_axis(hf[p + "mlp.down_proj.weight"].T, 0, ff), 1),
    }


def prepare_top(layout: Layout, hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    c = layout.config
    embed = hf["model.embed_tokens.weight"]
    head = embed if c.tie_word_embeddings else hf["lm_head.weight"]
    return {
        "embedding": layout.pad_hidden(embed, 1),
        "norm": layout.pad_hidden(hf["model.norm.weight"], 0),
        "lm_head": _pad_axis(layout.pad_hidden(head.T, 0), 1, layout.vocab),
    }


@dataclass
class ShardedWeights:
    """Layout-ready global arrays for one (checkpoint, mesh, dtype); picklable for Ray."""

    config: LlamaConfig
    mesh: MeshSpec
    dtype: DType
    arrays: dict[str, np.ndarray]
    source: str = ""
    align: int = 32

    def layout(self) -> Layout:
        return Layout(self.config, self.mesh, align=self.align)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def prepare(config: LlamaConfig, hf: dict[str, np.ndarray], mesh: MeshSpec, dtype: DType, *, progress: bool = False, source: str = "") -> ShardedWeights:
    layout = Layout(config, mesh)
    arrays = prepare_top(layout, hf)
    layers = range(config.num_hidden_layers)
    for i in _progress(layers, "convert", progress):
        for name, arr in prepare_layer(layout, hf, i).items():
            arrays[f"layers.{i}.{name}"] = np.ascontiguousarray(arr, dtype=np.float32)
    return ShardedWeights(config, mesh, dtype, arrays, source)


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="layer", file=sys.stderr)


# ---------------------------------------------------------------------- converted-weight cache
def checkpoint_hash(path: str | Path) -> str:
    """Content hash of config.json and the safetensors files."""
    digest = hashlib.blake2b(digest_size=16)
    path = Path(path)
    for file in [path / "config.json", *sorted(path.glob("*.safetensors"))]:
        digest.update(file.name.encode())
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("TTDIST_CACHE", Path.home() / ".cache" / "ttdist")) / "weights"


def convert_checkpoint(path: str | Path, *, mesh: str | MeshSpec = "1x1", dtype: str | DType = "bfloat16", cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Convert once and return the cache entry's directory (reused when it exists)."""
    spec = parse_mesh(mesh) if isinstance(mesh, str) else mesh
    dtype = DType.parse(dtype)
    config = LlamaConfig.from_dir(path)
    layout = Layout(config, spec)
    key = f"{checkpoint_hash(path)}-{layout.key}-{dtype.value}-v{CACHE_VERSION}"
    entry = Path(cache_dir or default_cache_dir()) / key
    if (entry / "manifest.json").exists():
        return entry
    _, hf = read_checkpoint(path)
    weights = prepare(config, hf, spec, dtype, progress=progress, source=str(path))
    tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    store = {name: _to_storage(arr, dtype) for name, arr in weights.arrays.items()}
    np.savez(tmp / "weights.npz", **store)
    manifest = {
        "version": CACHE_VERSION,
        "checkpoint": str(Path(path).resolve()),
        "checkpoint_hash": key.split("-")[0],
        "layout": layout.key,
        "layout_description": layout.describe(),
        "mesh": spec.shape_str,
        "mesh_name": spec.name,
        "dtype": dtype.value,
        "config": json.loads((Path(path) / "config.json").read_text()),
        "tensors": {name: list(arr.shape) for name, arr in weights.arrays.items()},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    try:
        tmp.rename(entry)
    except OSError:  # another process converted it first
        pass
    return entry


def _to_storage(arr: np.ndarray, dtype: DType) -> np.ndarray:
    """float32 stays float32; lower precisions are stored as bf16 bits (the device rounds further)."""
    if dtype is DType.float32:
        return arr
    bits = arr.astype(np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def load_converted(entry: str | Path) -> ShardedWeights:
    entry = Path(entry)
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        stored = np.load(entry / "weights.npz")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{entry}: unreadable converted-weight cache ({err})") from None
    config = LlamaConfig.from_dict(manifest["config"], str(entry / "manifest.json"))
    arrays = {}
    for name, shape in manifest["tensors"].items():
        if name not in stored.files:
            raise CheckpointError(f"{entry / 'weights.npz'}: tensor {name!r} is missing")
        arr = stored[name]
        if arr.dtype == np.uint16:
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        if list(arr.shape) != shape:
            raise CheckpointError(f"{entry / 'weights.npz'}: tensor {name!r} has shape {arr.shape}, manifest says {shape}")
        arrays[name] = arr
    spec = parse_mesh(manifest["mesh_name"])
    return ShardedWeights(config, spec, DType.parse(manifest["dtype"]), arrays, manifest["checkpoint"])


def load_weights(path: str | Path, *, mesh: str | MeshSpec = "1x1", dtype: str | DType = "float32", cache_dir: str | Path | None = None, progress: bool = False) -> ShardedWeights:
    """Layout-ready weights for a checkpoint, through the converted-weight cache."""
    return load_converted(convert_checkpoint(path, mesh=mesh, dtype=dtype, cache_dir=cache_dir, progress=progress))
