"""Every chip's weights for a replica: ``ShardedWeights``, read back from a cache entry.

``load_converted`` opens an entry (``cache_format``) lazily: ``CachedArrays`` memory-maps one
tensor's pieces at a time when the model places it, so a replica reads only its own pieces and
holds one tensor at a time. ``load_weights`` converts first where needed; ``prepare`` builds the
same ``ShardedWeights`` in memory from HF-named arrays (small models and tests). No torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttdist.mesh.precision import DType, Precision
from ttdist.mesh.spec import MeshSpec, parse_mesh
from ttdist.model.config import CheckpointError, LlamaConfig
from ttdist.model.layout import Layout
from ttdist.model.weights import cache_format as cf
from ttdist.model.weights.convert import convert_checkpoint
from ttdist.model.weights.layout_arrays import layer_tensors, to_devices, top_tensors
from ttdist.model.weights.safetensors_file import NUMPY_DTYPES, read_header


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


class CachedArrays(Mapping):
    """``name -> [R', C', *local]`` float32 arrays read from an entry's files on demand.

    Each item memory-maps its own piece of its file and returns a float32 copy (what the
    backends upload), so one tensor at a time is resident. Picklable: it holds paths only.
    """

    def __init__(self, entry: Path, tensors: dict[str, dict]):
        self.entry = Path(entry)
        self.tensors = tensors
        self._bases: dict[str, tuple[int, dict]] = {}

    def __getstate__(self):
        return {"entry": self.entry, "tensors": self.tensors}

    def __setstate__(self, state):
        self.__init__(state["entry"], state["tensors"])

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name) -> bool:  # without reading the tensor
        return name in self.tensors

    def mapped(self, name: str) -> np.ndarray:
        """Tensor ``name`` memory-mapped in its stored dtype (``[r, c]`` is chip (r, c)'s piece)."""
        info = self.tensors[name]
        file = self.entry / info["file"]
        if info["file"] not in self._bases:
            self._bases[info["file"]] = read_header(file)
        base, table = self._bases[info["file"]]
        entry = table.get(name)
        if entry is None:
            raise CheckpointError(f"{file}: tensor {name!r} is missing")
        shape = tuple(entry["shape"])
        if list(shape) != list(info["shape"]):
            raise CheckpointError(f"{file}: tensor {name!r} has shape {shape}, manifest says {tuple(info['shape'])}")
        start, end = entry["data_offsets"]
        if base + end > file.stat().st_size:
            raise CheckpointError(f"{file}: tensor {name!r} is truncated")
        return np.memmap(file, NUMPY_DTYPES[entry["dtype"]], "r", offset=base + start, shape=shape)

    def __getitem__(self, name: str) -> np.ndarray:
        mapped = self.mapped(name)
        out = np.array(mapped, dtype=np.float32)
        del mapped
        return out


def load_converted(entry: str | Path, *, precision: Precision | str | None = None) -> ShardedWeights:
    """A cache entry as ``ShardedWeights`` whose arrays are read from disk when placed."""
    entry = Path(entry)
    manifest = cf.read_manifest(entry)
    config = LlamaConfig.from_dict(manifest["config"], str(entry / cf.MANIFEST))
    chosen = Precision.parse(precision or manifest["dtype"])
    if chosen.needs_float32_storage and manifest["storage"] != "float32":
        raise CheckpointError(f"{entry}: stored in {manifest['storage']}; precision {chosen.name} needs a float32 conversion")
    spec = parse_mesh(manifest["mesh_name"])
    uniform = DType.float32 if manifest["storage"] == "float32" else chosen.wqkv
    return ShardedWeights(config, spec, uniform, CachedArrays(entry, manifest["tensors"]), manifest["checkpoint"],
                          precision=chosen)


def load_weights(path: str | Path, *, mesh: str | MeshSpec = "1x1", dtype: str | DType | Precision = "float32",
                 cache_dir: str | Path | None = None, progress: bool = False) -> ShardedWeights:
    """Layout-ready weights for a checkpoint, through the converted-weight cache."""
    entry = convert_checkpoint(path, mesh=mesh, dtype=dtype, cache_dir=cache_dir, progress=progress)
    return load_converted(entry, precision=dtype)


def prepare(config: LlamaConfig, hf: Mapping, mesh: MeshSpec, dtype: DType | str, *, source: str = "",
            precision: Precision | str | None = None) -> ShardedWeights:
    """In-memory per-device weights from HF-named arrays (small models and tests)."""
    layout = Layout(config, mesh)
    table = {p.name: p.placements for p in layout.plans()}
    arrays = {k: to_devices(np.asarray(a, np.float32), table[k], mesh.shape) for k, a in top_tensors(layout, hf).items()}
    for i in range(config.num_hidden_layers):
        for kind, array in layer_tensors(layout, hf, i):
            arrays[f"layers.{i}.{kind}"] = to_devices(np.asarray(array, np.float32), table[kind], mesh.shape)
    dtype = DType.parse(dtype)
    return ShardedWeights(config, mesh, dtype, arrays, source, precision=Precision.parse(precision or dtype))
