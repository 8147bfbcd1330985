"""A Hugging Face checkpoint -> a converted-weight cache entry for one layout, streamed.

``convert_checkpoint`` opens the checkpoint (``hf_checkpoint``), builds each layer tensor from
the HF tensors it reads (``layout_arrays``), cuts it into every chip's pieces and writes them at
their offsets (``cache_format`` names the files and tensors), one tensor at a time. The
embedding and LM head (the largest tensors) are built in row slabs, so peak memory is a small
multiple of one tensor and whole files are never widened to float32. bf16 stays bf16 (as its
uint16 bits) all the way. No torch anywhere on this path.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ttdist.mesh.placement import Replicate
from ttdist.mesh.precision import DType, Precision
from ttdist.mesh.spec import MeshSpec, parse_mesh
from ttdist.model.layout import Layout
from ttdist.model.weights import cache_format as cf
from ttdist.model.weights.cache_format import Plan
from ttdist.model.weights.hf_checkpoint import Checkpoint, open_checkpoint
from ttdist.model.weights.layout_arrays import layer_tensors, to_devices
from ttdist.model.weights.safetensors_file import BF16, ShardFileWriter

SLAB_BYTES = 64 << 20


def convert_checkpoint(path: str | Path, *, mesh: str | MeshSpec = "1x1", dtype: str | DType | Precision = "bfloat16",
                       cache_dir: str | Path | None = None, progress: bool = True, verify_hash: bool = False) -> Path:
    """Convert once and return the cache entry's directory (reused when it exists).

    The entry is keyed by the checkpoint's cheap identity (config, headers, sizes, mtimes);
    ``verify_hash`` also hashes every byte and reconverts when the entry recorded another hash.
    """
    spec = parse_mesh(mesh) if isinstance(mesh, str) else mesh
    precision = Precision.parse(dtype)
    storage = cf.storage_dtype(precision)
    ckpt = open_checkpoint(path)
    layout = Layout(ckpt.config, spec)
    identity = ckpt.identity()
    entry = Path(cache_dir or cf.default_cache_dir()) / cf.entry_name(identity, layout, storage)
    content = ckpt.content_hash() if verify_hash else None
    if (entry / cf.MANIFEST).exists():
        recorded = json.loads((entry / cf.MANIFEST).read_text()).get("content_hash")
        if content is None or recorded in (None, content):
            if content is not None and recorded is None:
                cf.record_content_hash(entry, content)
            return entry
        shutil.rmtree(entry, ignore_errors=True)
    tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tensors = write_entry(ckpt, layout, storage, tmp, progress=progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cf.write_manifest(tmp, {
        "version": cf.CACHE_VERSION, "checkpoint": str(Path(path).resolve()), "checkpoint_identity": identity,
        "content_hash": content, "layout": layout.key, "layout_description": layout.describe(),
        "mesh": spec.shape_str, "mesh_name": spec.name, "dtype": precision.name, "storage": cf.storage_name(storage),
        "config": json.loads((Path(path) / "config.json").read_text()),
        "files": cf.file_sizes(tmp), "tensors": tensors,
    })
    cf.publish(tmp, entry)
    return entry


def write_entry(ckpt: Checkpoint, layout: Layout, storage: np.dtype, out: Path, *, progress: bool = False) -> dict[str, dict]:
    """Every chip's pieces of ``ckpt`` into directory ``out``; returns the manifest's tensor table."""
    tensors = cf.plans(layout)
    files = cf.by_file(tensors)
    top = {p.kind: p for p in files[cf.TOP]}
    w = _writer(out / cf.TOP, files[cf.TOP], storage)
    _write_embedding(ckpt, layout, storage, w, top["embedding"])
    norm = layout.pad_hidden(_bits(ckpt.read("model.norm.weight", dtype=storage)), 0)
    w.write("norm", to_devices(norm, top["norm"].placements, layout.spec.shape))
    _write_lm_head(ckpt, layout, storage, w, top["lm_head"])
    w.close()
    hf = _Lazy(ckpt, storage)
    for i in _progress(range(layout.config.num_hidden_layers), "convert", progress):
        group = {p.kind: p for p in files[cf.layer_file(i)]}
        w = _writer(out / cf.layer_file(i), list(group.values()), storage)
        for kind, array in layer_tensors(layout, hf, i):
            plan = group[kind]
            pieces = to_devices(array, plan.placements, layout.spec.shape)
            _check_shape(plan, pieces.shape)
            w.write(plan.name, pieces)
            del array, pieces
        w.close()
    return cf.tensor_table(tensors)


def _writer(path: Path, group: list[Plan], storage: np.dtype) -> ShardFileWriter:
    return ShardFileWriter(path, {p.name: (storage, p.shape) for p in group})


def _check_shape(plan: Plan, got) -> None:
    if tuple(got) != plan.shape:
        raise AssertionError(f"layout made {plan.name} {tuple(got)}, its plan says {plan.shape}")


class _Lazy:
    """HF-named tensors read from the checkpoint when asked, in the storage dtype."""

    def __init__(self, ckpt: Checkpoint, storage: np.dtype):
        self.ckpt, self.storage = ckpt, storage

    def __getitem__(self, name: str) -> np.ndarray:
        return _bits(self.ckpt.read(name, dtype=self.storage))


def _bits(array: np.ndarray) -> np.ndarray:
    """bf16 as its uint16 bits: transposes, pads and concatenations then take numpy's native
    copy loops (zero bits are +0.0, so padding is unchanged)."""
    return array.view(np.uint16) if array.dtype == BF16 else array


def _slab_rows(row_bytes: int) -> int:
    return max(1, SLAB_BYTES // max(row_bytes, 1))


def _write_embedding(ckpt: Checkpoint, layout: Layout, storage: np.dtype, w: ShardFileWriter, plan: Plan) -> None:
    """Row slabs of the embedding straight into every chip's piece (rows are never split)."""
    name = "model.embed_tokens.weight"
    vocab = ckpt.tensors[name].shape[0]
    step = _slab_rows(ckpt.tensors[name].row_bytes)
    rp, cp, _, width = plan.shape
    for start in range(0, vocab, step):
        end = min(start + step, vocab)
        rows = layout.pad_hidden(_bits(ckpt.read(name, (start, end), dtype=storage)), 1)
        pieces = to_devices(rows, plan.placements, layout.spec.shape)  # [R', C', n, width]
        for r in range(rp):
            for c in range(cp):
                w.write(plan.name, pieces[r, c], ((r * cp + c) * vocab + start) * width * storage.itemsize)


def _write_lm_head(ckpt: Checkpoint, layout: Layout, storage: np.dtype, w: ShardFileWriter, plan: Plan) -> None:
    """The LM head ``[hidden, vocab]`` one inner-axis slab of vocab columns at a time: slab j is
    what the chips at inner coordinate j hold before the hidden axis cuts it."""
    c = layout.config
    name = "model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
    vl, inner = layout.vocab_local, layout.inner_axis
    slab_placements = tuple(Replicate() if a == inner else p for a, p in enumerate(plan.placements))
    step = _slab_rows(ckpt.tensors[name].row_bytes)
    rp, cp = plan.shape[:2]
    piece_bytes = int(np.prod(plan.shape[2:])) * storage.itemsize
    for j in range(layout.n_inner):
        slab = _bits(np.zeros((layout.hidden, vl), storage))
        for start in range(j * vl, min((j + 1) * vl, c.vocab_size), step):
            end = min(start + step, (j + 1) * vl, c.vocab_size)
            slab[: c.hidden_size, start - j * vl : end - j * vl] = _bits(ckpt.read(name, (start, end), dtype=storage)).T
        pieces = to_devices(slab, slab_placements, layout.spec.shape)  # one entry on the inner axis
        for r in range(rp):
            for col in range(cp):
                if (r, col)[inner] == j:
                    w.write(plan.name, pieces[r if inner else 0, 0 if inner else col], (r * cp + col) * piece_bytes)
        del slab, pieces


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="layer", file=sys.stderr)
