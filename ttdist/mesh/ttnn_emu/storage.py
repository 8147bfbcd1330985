"""How emulated chips hold values: data formats rounded as on Wormhole, tile padding, poison.

A device buffer is one numpy array ``[R', C', *padded_shape]``: chip ``(r, c)`` holds
``data[r % R', c % C']``, so a mesh dim of one entry is a value every chip on that axis
holds (stored once, broadcast by numpy: identical per-chip work is one batched op).

Formats (``round_to``): float32 as is; bfloat16 rounded to nearest even (ml_dtypes);
bfloat8_b / bfloat4_b as shared-exponent blocks of 16 along the last dim (one face row),
exactly ``ttdist.mesh.precision``'s emulation; integers cast. Floats are kept as float32
arrays holding the rounded values.

Poison (``settings``): what memory nobody wrote reads as. The padded rows and columns of a
tile that an op produced, the padded heads of the decode head ops, and every output of a
captured (not yet replayed) trace hold it. ``settings.poison`` is a float (default
``2**20``, finite: on chips garbage times a zero weight row is zero) or ``"nan"``, which makes
any use of garbage loud. Host uploads tilize with zeros in the padding, as ttnn does.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from ttdist.mesh.precision import block_float_round_numpy
from ttdist.mesh.ttnn_emu.types import TILE, DataType, Layout

BF16 = np.dtype(ml_dtypes.bfloat16)
INT_POISON = 0x5EADBEEF


@dataclass
class Settings:
    """Module settings of the emulator (``ttdist.mesh.ttnn_emu.settings``)."""

    poison: float | str = float(2**20)
    num_devices: int = 32

    def float_poison(self) -> float:
        return float("nan") if self.poison == "nan" else float(self.poison)


settings = Settings()


def padded_shape(shape: tuple, layout: Layout) -> tuple:
    """ttnn's padded shape: the last two dims rounded up to whole tiles in TILE layout."""
    shape = tuple(int(s) for s in shape)
    if layout is not Layout.TILE:
        return shape
    if len(shape) == 1:
        return (TILE, _up(shape[0]))
    return shape[:-2] + (_up(shape[-2]), _up(shape[-1]))


def _up(n: int) -> int:
    return -(-n // TILE) * TILE


def poison_value(dtype: DataType):
    return settings.float_poison() if dtype.is_float else INT_POISON % (np.iinfo(dtype.numpy).max + 1)


def poisoned(shape: tuple, dtype: DataType) -> np.ndarray:
    """A buffer nobody wrote."""
    return np.full(shape, poison_value(dtype), dtype=dtype.numpy)


def round_to(values: np.ndarray, dtype: DataType) -> np.ndarray:
    """``values`` as ``dtype`` stores them (floats returned as float32 holding the rounded values)."""
    if dtype is DataType.FLOAT32:
        return np.array(values, dtype=np.float32)  # always a fresh array: buffers never alias
    if dtype is DataType.BFLOAT16:
        return np.asarray(values, dtype=np.float32).astype(BF16).astype(np.float32)
    if dtype is DataType.BFLOAT8_B:
        return block_float_round_numpy(values, 7)
    if dtype is DataType.BFLOAT4_B:
        return block_float_round_numpy(values, 3)
    values = np.asarray(values)
    if values.dtype.kind == "f":
        values = np.trunc(values)
    return values.astype(dtype.numpy)


def place(values: np.ndarray, padded: tuple, dtype: DataType, fill=None) -> np.ndarray:
    """``values`` ``[R', C', *logical]`` rounded to ``dtype`` inside a ``[R', C', *padded]`` buffer
    whose padding holds ``fill`` (poison by default)."""
    data = round_to(values, dtype)
    lead = data.shape[:2]
    if data.shape[2:] == tuple(padded):
        return data
    out = np.full(lead + tuple(padded), poison_value(dtype) if fill is None else fill, dtype=dtype.numpy)
    out[logical_index(data.shape[2:], len(padded))] = data
    return out


def logical_index(shape: tuple, rank: int):
    """The index of the logical region in a ``[R', C', *padded]`` buffer."""
    lead = len(shape) - rank
    if lead:  # a 1-d logical shape inside a 2-d padded tile shape
        return (slice(None), slice(None), 0) + tuple(slice(0, s) for s in shape[lead:])
    return (slice(None), slice(None)) + tuple(slice(0, s) for s in shape)


def check_layout(dtype: DataType, layout: Layout, what: str) -> None:
    if dtype.is_block_float and layout is not Layout.TILE:
        raise RuntimeError(f"TT_FATAL {what}: {dtype} is a tile format and needs TILE layout, got {layout}")
