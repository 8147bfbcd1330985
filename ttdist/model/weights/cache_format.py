"""The converted-weight cache on disk: what every chip gets, one safetensors file per layer.

An entry is a directory named by (checkpoint identity, layout key, storage dtype, format
version) holding ``top.safetensors`` (embedding, final norm, LM head), ``layer-NNNN.safetensors``
per decoder layer and ``manifest.json`` (written last; an entry without one is incomplete).
Each tensor is stored per device as ``[R', C', *local]``: a mesh axis the tensor is sharded on
has one entry per chip, a replicated axis one entry for all (the simulator's own store shape),
so ``array[r, c]`` is exactly chip ``(r, c)``'s piece, contiguous in the file.

Storage is bf16 (float32 when float32 is asked for): block-float formats are packed from bf16
when a backend uploads them, so one entry serves every precision. ``convert`` writes entries,
``sharded_load`` reads them; this module is what both agree on (names, the tensor table, the
manifest) and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttdist.mesh.placement import Placements
from ttdist.mesh.precision import Precision
from ttdist.model.config import CheckpointError
from ttdist.model.layout import Layout
from ttdist.model.weights.layout_arrays import stored_shape
from ttdist.model.weights.safetensors_file import BF16

CACHE_VERSION = 3  # bump whenever the layout or this format changes what is written
MANIFEST = "manifest.json"
TOP = "top.safetensors"
TOP_KINDS = ("embedding", "norm", "lm_head")


def layer_file(i: int) -> str:
    return f"layer-{i:04d}.safetensors"


def default_cache_dir() -> Path:
    return Path(os.environ.get("TTDIST_CACHE", Path.home() / ".cache" / "ttdist")) / "weights"


def storage_dtype(precision: Precision) -> np.dtype:
    """What an entry stores for ``precision``: float32 where it needs it, else bf16."""
    return np.dtype(np.float32) if precision.needs_float32_storage else BF16


def storage_name(storage: np.dtype) -> str:
    return "float32" if storage == np.float32 else "bfloat16"


def entry_name(identity: str, layout: Layout, storage: np.dtype) -> str:
    """The directory name of the entry for a checkpoint identity, layout and storage dtype."""
    return f"{identity}-{layout.key}-{'f32' if storage == np.float32 else 'bf16'}-v{CACHE_VERSION}"


@dataclass(frozen=True)
class Plan:
    """One stored tensor: its file, placements and ``[R', C', *local]`` shape."""

    name: str
    kind: str
    file: str
    placements: Placements
    shape: tuple[int, ...]


def plans(layout: Layout) -> list[Plan]:
    """Every tensor an entry for ``layout`` stores, top file first, then layer by layer."""
    table = {p.name: p for p in layout.plans()}
    mesh = layout.spec.shape

    def plan(name: str, kind: str, file: str) -> Plan:
        p = table[kind]
        return Plan(name, kind, file, p.placements, stored_shape(p.local_shape, p.placements, mesh))

    out = [plan(k, k, TOP) for k in TOP_KINDS]
    layer_kinds = [k for k in table if k not in TOP_KINDS]
    for i in range(layout.config.num_hidden_layers):
        out += [plan(f"layers.{i}.{k}", k, layer_file(i)) for k in layer_kinds]
    return out


def by_file(tensors: list[Plan]) -> dict[str, list[Plan]]:
    """The plans grouped per file, in order."""
    out: dict[str, list[Plan]] = {}
    for p in tensors:
        out.setdefault(p.file, []).append(p)
    return out


def tensor_table(tensors: list[Plan]) -> dict[str, dict]:
    """The manifest's ``tensors``: each stored tensor's file and shape."""
    return {p.name: {"file": p.file, "shape": list(p.shape)} for p in tensors}


# ---------------------------------------------------------------------- manifest
def read_manifest(entry: Path) -> dict:
    """An entry's manifest, its format version and every file's size checked."""
    try:
        manifest = json.loads((Path(entry) / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{entry}: unreadable converted-weight cache ({err})") from None
    if manifest.get("version") != CACHE_VERSION:
        raise CheckpointError(f"{entry}: cache format v{manifest.get('version')}, this ttdist reads v{CACHE_VERSION}")
    for name, size in manifest["files"].items():
        file = Path(entry) / name
        if not file.is_file() or file.stat().st_size != size:
            raise CheckpointError(f"{file}: converted shard is missing or has the wrong size (convert again)")
    return manifest


def write_manifest(directory: Path, manifest: dict) -> None:
    """``manifest.json`` into ``directory``, replaced whole (never half written)."""
    tmp = Path(directory) / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.rename(Path(directory) / MANIFEST)


def record_content_hash(entry: Path, content: str) -> None:
    manifest = json.loads((Path(entry) / MANIFEST).read_text())
    manifest["content_hash"] = content
    write_manifest(entry, manifest)


def file_sizes(directory: Path) -> dict[str, int]:
    """The manifest's ``files``: each safetensors file of an entry and its size."""
    return {f.name: f.stat().st_size for f in sorted(Path(directory).glob("*.safetensors"))}


def publish(tmp: Path, entry: Path) -> None:
    """A complete entry written at ``tmp`` becomes ``entry``; when another process published it
    first, this copy is dropped."""
    try:
        tmp.rename(entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
