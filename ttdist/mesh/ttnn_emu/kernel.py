"""What every emulated op is made of: checks, an output tensor, and a kernel.

An op checks its arguments at call time (as ttnn's validation does), allocates its outputs
(poisoned buffers: they are written only when the kernel runs) and hands the device a
kernel closure. The kernel reads its inputs' buffers (``read``) and writes its outputs
(``write``) when it runs: at once, or at every replay of a captured trace.
"""

from __future__ import annotations

import numpy as np

from ttdist.mesh.ttnn_emu import storage
from ttdist.mesh.ttnn_emu.tensor import Tensor
from ttdist.mesh.ttnn_emu.types import DataType, Layout, MemoryConfig


class OpError(RuntimeError):
    """An argument ttnn's validation rejects (its TT_FATAL), named with the op."""


def fatal(op: str, message: str) -> OpError:
    return OpError(f"TT_FATAL {op}: {message}")


def device_of(op: str, *tensors: Tensor):
    """The one device all of ``tensors`` live on (each checked alive and on a device)."""
    device = None
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: expected a ttnn.Tensor, got {type(t).__name__}")
        buf = t.live_buffer()
        if device is None:
            device = buf.device
        elif buf.device is not device:
            raise fatal(op, "all tensors must be on the same mesh device")
    return device


def output(device, shape, dtype: DataType, layout: Layout, memory_config: MemoryConfig) -> Tensor:
    """A new device tensor whose buffer nobody has written yet."""
    storage.check_layout(dtype, layout, "output")
    t = Tensor._make(tuple(int(s) for s in shape), dtype, layout)
    t._buffer = device.allocate(storage.poisoned((1, 1) + tuple(t.padded_shape), dtype), t, memory_config)
    return t


def read(t: Tensor) -> np.ndarray:
    """The logical values ``[R', C', *shape]`` of ``t``'s buffer as it is now (a view)."""
    data = t._buffer.data
    if tuple(t.shape) == tuple(t.padded_shape):
        return data
    return data[storage.logical_index(t.shape, len(t.padded_shape))]


def read_padded(t: Tensor) -> np.ndarray:
    """The whole buffer, padding included (what a kernel that reads whole tiles sees)."""
    return t._buffer.data


def write(t: Tensor, values: np.ndarray) -> None:
    """Values ``[R', C', *shape]`` into ``t``'s buffer, rounded to its dtype, padding poisoned."""
    t._buffer.data = storage.place(values, tuple(t.padded_shape), t.dtype)


def write_padded(t: Tensor, values: np.ndarray) -> None:
    """A whole padded buffer (a kernel that writes whole tiles), rounded to ``t``'s dtype."""
    t._buffer.data = storage.round_to(values, t.dtype)


def require_dtype(op: str, t: Tensor, allowed, what: str = "input") -> None:
    if t.dtype not in allowed:
        names = ", ".join(sorted(d.name for d in allowed))
        raise fatal(op, f"{what} dtype must be one of {names}, got {t.dtype.name}")


def require_layout(op: str, t: Tensor, layout: Layout, what: str = "input") -> None:
    if t.layout is not layout:
        raise fatal(op, f"{what} must be in {layout.name} layout, got {t.layout.name}")


def require_rank(op: str, t: Tensor, rank: int, what: str = "input") -> None:
    if len(t.shape) != rank:
        raise fatal(op, f"{what} must be rank {rank}, got shape {list(t.shape)}")


def no_extra(op: str, kwargs: dict) -> None:
    """Keyword arguments an op accepts but the emulator does not model: refused, named."""
    unknown = {k: v for k, v in kwargs.items() if v is not None}
    if unknown:
        raise NotImplementedError(f"ttnn emulator: {op} argument(s) {', '.join(sorted(unknown))} are not modeled")


def normalize_dim(op: str, dim: int, rank: int) -> int:
    if not -rank <= dim < rank:
        raise fatal(op, f"dim {dim} is out of range for rank {rank}")
    return dim % rank


FLOAT_TYPES = frozenset({DataType.BFLOAT16, DataType.FLOAT32, DataType.BFLOAT8_B, DataType.BFLOAT4_B})
INDEX_TYPES = frozenset({DataType.UINT32, DataType.INT32})
