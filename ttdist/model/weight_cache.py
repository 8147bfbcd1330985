"""The converted-weight cache: what every chip gets, on disk, one safetensors file per layer.

An entry is a directory named by (checkpoint identity, layout key, storage dtype, format
version) holding ``top.safetensors`` (embedding, final norm, LM head), ``layer-NNNN.safetensors``
per decoder layer and ``manifest.json`` (written last; an entry without one is incomplete).
Each tensor is stored per device as ``[R', C', *local]``: a mesh axis the tensor is sharded on
has one entry per chip, a replicated axis one entry for all (the simulator's own store shape),
so ``array[r, c]`` is exactly chip ``(r, c)``'s piece, contiguous in the file.

Conversion streams: layer tensors are built one at a time from the tensors they read; the
embedding and LM head (the largest tensors) are built in row slabs, so peak memory is a small
multiple of one tensor. Storage is bf16 (float32 when float32 is asked for): block-float
formats are packed from bf16 when a backend uploads them, so one entry serves every precision.

A replica on the converting node memory-maps the entry (``load``); one on another node gets
the files through the Ray object store one at a time (``RemoteShards``) and writes them into
its own node-local copy first.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np

from ttdist.mesh.placement import Placements, Replicate, Shard, normalize
from ttdist.model.checkpoint import NUMPY_DTYPES, Checkpoint, read_header
from ttdist.model.config import CheckpointError
from ttdist.model.layout import Layout

CACHE_VERSION = 3  # bump whenever the layout or this format changes what is written
MANIFEST = "manifest.json"
TOP = "top.safetensors"
TOP_KINDS = ("embedding", "norm", "lm_head")
SLAB_BYTES = 64 << 20
BF16 = np.dtype(ml_dtypes.bfloat16)
_CODE = {BF16: "BF16", np.dtype(np.float32): "F32"}


def layer_file(i: int) -> str:
    return f"layer-{i:04d}.safetensors"


# ---------------------------------------------------------------------- per-device pieces
def stored_shape(local: tuple[int, ...], placements: Placements, mesh_shape: tuple[int, int]) -> tuple[int, ...]:
    p = normalize(placements, len(local))
    return tuple(n if isinstance(p[a], Shard) and n > 1 else 1 for a, n in enumerate(mesh_shape)) + tuple(local)


def to_devices(array: np.ndarray, placements: Placements, mesh_shape: tuple[int, int]) -> np.ndarray:
    """``[R', C', *local]``: the pieces each chip holds, cut exactly as a backend's ``from_host``
    cuts a global array (axis 0 first, then axis 1; replicated axes kept once)."""
    placements = normalize(placements, array.ndim)
    out = array[None, None]
    for axis in (0, 1):
        p, n = placements[axis], mesh_shape[axis]
        if not isinstance(p, Shard) or n == 1:
            continue
        dim, size = 2 + p.dim, out.shape[2 + p.dim]
        if size % n:
            raise CheckpointError(f"dim {p.dim} of size {size} does not split evenly over {n} devices on axis {axis}")
        split = out.reshape(out.shape[:dim] + (n, size // n) + out.shape[dim + 1 :])
        out = np.moveaxis(split, dim, axis).squeeze(axis + 1)
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------- writing
class ShardFileWriter:
    """One safetensors file whose tensors are declared up front and written at their offsets."""

    def __init__(self, path: Path, tensors: dict[str, tuple[np.dtype, tuple[int, ...]]]):
        table, offset = {}, 0
        for name, (dtype, shape) in tensors.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            table[name] = {"dtype": _CODE[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        header = json.dumps(table, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        self.base = 8 + len(header)
        self.table = table
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self.fd, len(header).to_bytes(8, "little") + header, 0)
        os.ftruncate(self.fd, self.base + offset)

    def write(self, name: str, array: np.ndarray, at_byte: int = 0) -> None:
        """Bytes of ``array`` (C order) into tensor ``name`` starting ``at_byte`` into it."""
        start, end = self.table[name]["data_offsets"]
        view = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        if start + at_byte + len(view) > end:
            raise ValueError(f"write of {len(view)} bytes at {at_byte} overruns tensor {name!r}")
        pos = self.base + start + at_byte
        while len(view):
            done = os.pwrite(self.fd, view, pos)
            view, pos = view[done:], pos + done

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


@dataclass(frozen=True)
class Plan:
    """One stored tensor: its file, placements and ``[R', C', *local]`` shape."""

    name: str
    kind: str
    file: str
    placements: Placements
    shape: tuple[int, ...]


def plans(layout: Layout) -> list[Plan]:
    table = {p.name: p for p in layout.plans()}
    mesh = layout.spec.shape
    out = [Plan(k, k, TOP, table[k].placements, stored_shape(table[k].local_shape, table[k].placements, mesh)) for k in TOP_KINDS]
    layer_kinds = [k for k in table if k not in TOP_KINDS]
    for i in range(layout.config.num_hidden_layers):
        for k in layer_kinds:
            p = table[k]
            out.append(Plan(f"layers.{i}.{k}", k, layer_file(i), p.placements, stored_shape(p.local_shape, p.placements, mesh)))
    return out


def _writer(path: Path, group: list[Plan], storage: np.dtype) -> ShardFileWriter:
    return ShardFileWriter(path, {p.name: (storage, p.shape) for p in group})


def write_entry(ckpt: Checkpoint, layout: Layout, storage: np.dtype, out: Path, *, progress: bool = False) -> dict[str, list]:
    """Every chip's pieces of ``ckpt`` into directory ``out``; returns the tensor table."""
    from ttdist.model.weights import layer_tensors, norm_tensor

    by_file: dict[str, list[Plan]] = {}
    for p in plans(layout):
        by_file.setdefault(p.file, []).append(p)
    top = {p.kind: p for p in by_file[TOP]}
    w = _writer(out / TOP, by_file[TOP], storage)
    _write_embedding(ckpt, layout, storage, w, top["embedding"])
    norm = _bits(ckpt.read("model.norm.weight", dtype=storage))
    w.write("norm", to_devices(norm_tensor(layout, norm), top["norm"].placements, layout.spec.shape))
    _write_lm_head(ckpt, layout, storage, w, top["lm_head"])
    w.close()
    hf = _Lazy(ckpt, storage)
    for i in _progress(range(layout.config.num_hidden_layers), "convert", progress):
        group = {p.kind: p for p in by_file[layer_file(i)]}
        w = _writer(out / layer_file(i), list(group.values()), storage)
        for kind, array in layer_tensors(layout, hf, i):
            plan = group[kind]
            pieces = to_devices(array, plan.placements, layout.spec.shape)
            _check_shape(plan, pieces.shape)
            w.write(plan.name, pieces)
            del array, pieces
        w.close()
    return {p.name: {"file": p.file, "shape": list(p.shape)} for ps in by_file.values() for p in ps}


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


# ---------------------------------------------------------------------- reading
class CachedArrays:
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

    def keys(self):
        return self.tensors.keys()

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name) -> bool:
        return name in self.tensors

    def items(self):
        for name in self.tensors:
            yield name, self[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

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

    def nbytes(self) -> int:
        return sum(int(np.prod(t["shape"])) for t in self.tensors.values()) * 4


def read_manifest(entry: Path) -> dict:
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


# ---------------------------------------------------------------------- other nodes
TRANSFER_CHUNK = 256 << 20


@dataclass
class RemoteShards:
    """A cache entry for a replica on another node: the manifest and object refs of each file's
    chunks (at most ``TRANSFER_CHUNK`` bytes each).

    The refs sit inside this object, so Ray does not fetch them with the call; the replica gets
    one chunk at a time (``fetch``) into a node-local copy of the entry, and the coordinator
    reads one chunk at a time to put them.
    """

    name: str
    manifest: dict
    refs: dict[str, list] = field(default_factory=dict)

    @classmethod
    def put(cls, entry: str | Path) -> "RemoteShards":
        import ray

        entry = Path(entry)
        manifest = read_manifest(entry)
        refs: dict[str, list] = {}
        for name in manifest["files"]:
            with open(entry / name, "rb") as fh:
                refs[name] = []
                while chunk := fh.read(TRANSFER_CHUNK):
                    refs[name].append(ray.put(chunk))
                    del chunk
        return cls(entry.name, manifest, refs)

    def fetch(self, root: str | Path | None = None) -> Path:
        import ray

        dest = Path(root or Path(tempfile.gettempdir()) / "ttdist-weights") / self.name
        if (dest / MANIFEST).exists():
            return dest
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, chunks in self.refs.items():
            with open(tmp / name, "wb") as fh:
                for ref in chunks:
                    fh.write(ray.get(ref))
        (tmp / MANIFEST).write_text(json.dumps(self.manifest, indent=1))
        try:
            tmp.rename(dest)
        except OSError:  # another replica on this node fetched it first
            shutil.rmtree(tmp, ignore_errors=True)
        return dest
