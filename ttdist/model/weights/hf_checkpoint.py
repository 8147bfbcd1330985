"""Hugging Face Llama checkpoints, read lazily: one tensor (or a range of its rows) at a time.

``Checkpoint`` opens a checkpoint directory: ``config.json`` (plain JSON), then the shard
list from ``model.safetensors.index.json`` when there is one (else every ``*.safetensors``),
then each file's header only. Tensor data is read on demand with ``readinto`` at the
header's offsets, so nothing is mapped or held beyond the array asked for and peak memory
follows the largest tensor, not the model. bf16 stays bf16 (``ml_dtypes.bfloat16``).

Headers are parsed by ``safetensors_file.read_header`` (streaming needs each tensor's byte
offsets, which the ``safetensors`` library does not expose) and every field is checked. Every
problem is a ``CheckpointError`` naming the file and tensor. ``expected_shapes`` is the HF
tensor names and shapes a ``config.json`` implies; ``open_checkpoint`` checks them all.

``identity`` is the cheap checkpoint key (config, index, and each file's name, size, mtime
and header bytes: no data read); ``content_hash`` reads every byte, only on request.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttdist.model.config import CheckpointError, LlamaConfig
from ttdist.model.weights.safetensors_file import NUMPY_DTYPES, read_header

INDEX = "model.safetensors.index.json"
# bits of the exponent field: a value is inf or NaN when all of them are set
_EXPONENT = {"BF16": (np.uint16, 0x7F80), "F16": (np.uint16, 0x7C00), "F32": (np.uint32, 0x7F800000)}
_CHECK_ELEMS = 1 << 24


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes lie."""

    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # from the start of the file
    nbytes: int

    @property
    def row_bytes(self) -> int:
        return self.nbytes // self.shape[0] if self.shape and self.shape[0] else self.nbytes


def tensor_infos(file: Path) -> dict[str, TensorInfo]:
    base, table = read_header(file)
    size = file.stat().st_size
    out = {}
    for name, info in table.items():
        if name == "__metadata__":
            continue
        try:
            kind, shape, (start, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{file}: tensor {name!r} has a corrupt header entry") from None
        if kind not in NUMPY_DTYPES:
            raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype {kind} (use BF16, F16 or F32)")
        expected = int(np.prod(shape, dtype=np.int64)) * NUMPY_DTYPES[kind].itemsize
        if end - start != expected or start < 0:
            raise CheckpointError(f"{file}: tensor {name!r} has {end - start} bytes, its shape {shape} needs {expected}")
        if base + end > size:
            raise CheckpointError(f"{file}: tensor {name!r} is truncated (file has {size} bytes, tensor ends at {base + end})")
        out[name] = TensorInfo(file, name, kind, shape, base + start, expected)
    return out


class Checkpoint:
    """A checkpoint directory: its config and where every tensor lies (no data read)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = LlamaConfig.from_dir(self.path)
        self.files = self._files()
        self.tensors: dict[str, TensorInfo] = {}
        for file in self.files:
            self.tensors.update(tensor_infos(file))
        self._index = self._read_index()

    def _read_index(self) -> dict[str, str]:
        index = self.path / INDEX
        if not index.exists():
            return {}
        try:
            return dict(json.loads(index.read_text())["weight_map"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index}: not a safetensors index ({err})") from None

    def _files(self) -> list[Path]:
        index = self.path / INDEX
        if index.exists():
            names = sorted(set(self._read_index().values()))
            missing = [n for n in names if not (self.path / n).is_file()]
            if missing:
                raise CheckpointError(f"{index}: names {missing[0]!r}, which is not in the checkpoint directory")
            files = [self.path / n for n in names]
        else:
            files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{self.path}: no *.safetensors files in the checkpoint directory")
        return files

    # ------------------------------------------------------------------ checks
    def check(self, expected: dict[str, tuple[int, ...]]) -> None:
        """Every expected tensor is present with its shape (headers only)."""
        for name, shape in expected.items():
            info = self.tensors.get(name)
            if info is None:
                where = f"{self.path / self._index[name]}" if name in self._index else str(self.path)
                raise CheckpointError(f"{where}: tensor {name!r} is missing")
            if info.shape != shape:
                raise CheckpointError(f"{info.file}: tensor {name!r} has shape {info.shape}, config.json says {shape}")

    # ------------------------------------------------------------------ data
    def read(self, name: str, rows: tuple[int, int] | None = None, *, dtype=None) -> np.ndarray:
        """Tensor ``name`` (or its rows ``[start, end)``) as a fresh array, checked finite;
        in its own dtype, or cast to ``dtype`` (bf16 as ``ml_dtypes.bfloat16``)."""
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing")
        start, end = rows if rows is not None else (0, info.shape[0] if info.shape else 1)
        shape = ((end - start, *info.shape[1:]) if rows is not None else info.shape)
        out = np.empty(shape, NUMPY_DTYPES[info.dtype])
        want = out.nbytes
        try:
            with open(info.file, "rb", buffering=0) as fh:
                fh.seek(info.offset + start * info.row_bytes)
                got = fh.readinto(out.reshape(-1).view(np.uint8)) if want else 0
        except OSError as err:
            raise CheckpointError(f"{info.file}: tensor {name!r}: cannot read ({err.strerror})") from None
        if got != want:
            raise CheckpointError(f"{info.file}: tensor {name!r} is truncated (read {got} of {want} bytes)")
        _check_finite(out, info)
        if dtype is not None and out.dtype != np.dtype(dtype):
            out = out.astype(dtype)
        return out

    # ------------------------------------------------------------------ identity
    def identity(self) -> str:
        """Cheap key: config, index and each file's name, size, mtime and header (no data)."""
        digest = hashlib.blake2b(digest_size=16)
        for extra in ("config.json", INDEX):
            file = self.path / extra
            if file.exists():
                digest.update(extra.encode() + b"\0" + file.read_bytes())
        for file in self.files:
            st = file.stat()
            base, _ = read_header(file)
            with open(file, "rb") as fh:
                header = fh.read(base)
            digest.update(f"{file.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode() + header)
        return digest.hexdigest()

    def content_hash(self) -> str:
        """Hash of every byte of config.json, the index and the safetensors files."""
        digest = hashlib.blake2b(digest_size=16)
        extras = [self.path / n for n in ("config.json", INDEX) if (self.path / n).exists()]
        for file in [*extras, *self.files]:
            digest.update(file.name.encode())
            with open(file, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
        return digest.hexdigest()


def _check_finite(array: np.ndarray, info: TensorInfo) -> None:
    """NaN / inf check on the exponent bits, in chunks (no full-size temporary)."""
    kind, mask = _EXPONENT[info.dtype]
    bits = array.reshape(-1).view(kind)
    for i in range(0, bits.size, _CHECK_ELEMS):
        chunk = bits[i : i + _CHECK_ELEMS]
        if ((chunk & mask) == mask).any():
            raise CheckpointError(f"{info.file}: tensor {info.name!r} contains NaN or inf")


def expected_shapes(c: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name of a Llama checkpoint with ``config`` ``c``, and its shape."""
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
