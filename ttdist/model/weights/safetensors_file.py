"""The safetensors file format at the byte level: reading a header, writing tensors at their offsets.

A safetensors file is one little-endian u64 header length, a JSON table (``dtype``, ``shape``,
``data_offsets`` per tensor, offsets counted from the end of the header) and the tensors' bytes.
Both Hugging Face checkpoints (``hf_checkpoint``) and the converted-weight cache
(``cache_format``) are such files; this module is what both read and write them with.

Why by hand and not through the ``safetensors`` library (a dependency all the same; the tests
and the tiny checkpoints use ``safetensors.numpy``):

* Writing streams. ``safetensors.numpy.save_file`` takes every tensor of a file at once, in
  memory: a converted layer file of Llama-3.1-70B is ~1.7 GB and the top file (embedding and LM
  head) ~4.2 GB in bf16, and conversion fills the embedding and LM head in row slabs precisely so
  that such a tensor is never whole in memory (peak RSS stays near one tensor, see
  bench/bench_weights.py). ``ShardFileWriter`` declares the table up front and ``pwrite``s each
  piece at its offset as it is made.
* Reading streams. Tensors (or row ranges of them) are read with ``readinto`` / ``np.memmap`` at
  the header's offsets, which the library does not expose, and ``safetensors.numpy`` cannot load
  BF16 at all (numpy has no bfloat16; ``ml_dtypes.bfloat16`` stands in here, without torch).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from ttdist.model.config import CheckpointError

MAX_HEADER = 100 << 20
BF16 = np.dtype(ml_dtypes.bfloat16)
NUMPY_DTYPES = {"BF16": BF16, "F16": np.dtype(np.float16), "F32": np.dtype(np.float32)}
_CODE = {BF16: "BF16", np.dtype(np.float32): "F32"}


def read_header(file: Path) -> tuple[int, dict]:
    """``(data start, header table)`` of one safetensors file, every field checked."""
    try:
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file}: truncated (no header)")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER:
                raise CheckpointError(f"{file}: corrupt safetensors header (length {length})")
            raw = fh.read(length)
    except OSError as err:
        raise CheckpointError(f"{file}: cannot read ({err.strerror})") from None
    if len(raw) < length:
        raise CheckpointError(f"{file}: truncated (header cut short)")
    try:
        table = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{file}: corrupt safetensors header") from None
    if not isinstance(table, dict):
        raise CheckpointError(f"{file}: corrupt safetensors header")
    return 8 + length, table


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
