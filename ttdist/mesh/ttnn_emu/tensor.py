"""``ttnn.Tensor`` on emulated chips: host tensors and device (mesh) tensors.

A host tensor holds its values in a numpy array ``[R', C', *padded]`` (one entry per
mesh axis when it is a single-device host tensor, the mapper's or ``from_host_shards``'
per-device pieces otherwise). A device tensor holds a ``Buffer`` on its mesh device; the
buffer's ``data`` is the per-chip array (see ``storage``). A tensor's ``shape`` is its
logical shape, ``padded_shape`` the tile-padded one, as ttnn reports them.

Use after ``deallocate`` raises ``TensorDeallocated``; a device tensor's values are read
back only through ``cpu()`` / ``get_device_tensors`` then ``to_numpy()``, which, as in ttnn
0.81.1, does not convert bfloat16 (numpy has none): typecast to float32 on device first.
"""

from __future__ import annotations

import numpy as np

from ttdist.mesh.ttnn_emu import storage
from ttdist.mesh.ttnn_emu.types import DRAM_MEMORY_CONFIG, TILE, DataType, Layout, MemoryConfig, StorageType

_NUMPY_TYPES = {np.dtype(np.float32): DataType.FLOAT32, np.dtype(np.int32): DataType.INT32,
                np.dtype(np.uint32): DataType.UINT32, np.dtype(np.uint16): DataType.UINT16, np.dtype(np.uint8): DataType.UINT8}


class TensorDeallocated(RuntimeError):
    """A device tensor was used after ``ttnn.deallocate``."""


class Shape(tuple):
    """ttnn.Shape: a tuple of ints that prints like ttnn's."""

    def __new__(cls, dims):
        return super().__new__(cls, (int(d) for d in dims))

    @property
    def rank(self) -> int:
        return len(self)

    def __repr__(self) -> str:
        return f"Shape({list(self)})"

    __str__ = __repr__


class Buffer:
    """One device allocation: the per-chip values and where they live.

    ``owner`` is the trace id that allocated it during a capture (None outside one): a
    trace may free and reuse its own buffers, but replaying a trace that reads a buffer
    freed outside it is an error. ``shared``: ``data`` is also a host tensor's array, so an op
    that writes the buffer in place copies it first. ``queues``: (queue, "r"/"w") -> (op index,
    op name) of the last op of each command queue that read / wrote it (``queues.Queues``)."""

    __slots__ = ("data", "device", "memory_config", "freed", "owner", "nbytes", "shared", "queues")

    def __init__(self, data: np.ndarray, device, memory_config: MemoryConfig, nbytes: int, owner=None, shared: bool = False):
        self.data = data
        self.device = device
        self.memory_config = memory_config
        self.freed = False
        self.owner = owner
        self.nbytes = nbytes
        self.shared = shared
        self.queues: dict = {}


class Tensor:
    """``ttnn.Tensor(array, dtype, device, layout, mesh_mapper=None, ...)`` or an op's output."""

    def __init__(self, data=None, dtype=None, device=None, layout=Layout.ROW_MAJOR, mesh_mapper=None, tile=None,
                 memory_config=None, pad_value=None, **unknown):
        if unknown:
            raise TypeError(f"ttnn.Tensor: argument(s) {', '.join(sorted(unknown))} are not modeled by the emulator")
        if data is None:
            raise TypeError("ttnn.Tensor: the emulator builds tensors from numpy arrays")
        array = np.asarray(data)
        if array.dtype not in _NUMPY_TYPES:
            raise TypeError(f"ttnn.Tensor: numpy dtype {array.dtype} is not one ttnn takes (float32, int32, uint32, uint16, uint8)")
        dtype = dtype or _NUMPY_TYPES[array.dtype]
        storage.check_layout(dtype, layout, "ttnn.Tensor")
        pieces = mesh_mapper.split(array) if mesh_mapper is not None else array[None, None]
        self._init(pieces.shape[2:], dtype, layout, host=_tilize(pieces, dtype, layout, pad_value),
                   mesh_shape=mesh_mapper.mesh_shape if mesh_mapper is not None else None)
        if device is not None:
            moved = self.to(device, memory_config or DRAM_MEMORY_CONFIG)
            self.__dict__.update(moved.__dict__)

    def _init(self, shape, dtype: DataType, layout: Layout, *, host=None, buffer=None, mesh_shape=None):
        self._shape = Shape(shape)
        self._padded = Shape(storage.padded_shape(self._shape, layout))
        self._dtype = dtype
        self._layout = layout
        self._host = host
        self._buffer = buffer
        self._mesh_shape = mesh_shape
        self._deallocated = False

    @classmethod
    def _make(cls, shape, dtype, layout, *, host=None, buffer=None, mesh_shape=None) -> "Tensor":
        t = cls.__new__(cls)
        t._init(shape, dtype, layout, host=host, buffer=buffer, mesh_shape=mesh_shape)
        return t

    # ------------------------------------------------------------------ what ttnn reports
    @property
    def shape(self) -> Shape:
        return self._shape

    @property
    def padded_shape(self) -> Shape:
        return self._padded

    @property
    def dtype(self) -> DataType:
        return self._dtype

    @property
    def layout(self) -> Layout:
        return self._layout

    def get_dtype(self) -> DataType:
        return self._dtype

    def get_layout(self) -> Layout:
        return self._layout

    def memory_config(self) -> MemoryConfig:
        return self._buffer.memory_config if self._buffer is not None else DRAM_MEMORY_CONFIG

    def storage_type(self) -> StorageType:
        return StorageType.DEVICE if self._buffer is not None else StorageType.HOST

    def is_allocated(self) -> bool:
        return not self._deallocated

    def device(self):
        return self._buffer.device if self._buffer is not None else None

    def __repr__(self) -> str:
        where = "device" if self._buffer is not None else "host"
        return f"ttnn.Tensor(emulated {where}, shape={list(self._shape)}, dtype={self._dtype}, layout={self._layout})"

    # ------------------------------------------------------------------ geometry
    def buffer_num_pages(self) -> int:
        """Pages of one chip's buffer: tiles in TILE layout, rows in ROW_MAJOR."""
        if self._layout is Layout.TILE:
            return int(np.prod(self._padded[:-2], dtype=np.int64)) * (self._padded[-2] // TILE) * (self._padded[-1] // TILE)
        return int(np.prod(self._padded[:-1], dtype=np.int64))

    def buffer_aligned_page_size(self) -> int:
        if self._layout is Layout.TILE:
            return self._dtype.tile_bytes
        return -(-self._padded[-1] * self._dtype.element_bytes // 32) * 32

    def live_buffer(self) -> Buffer:
        """The device buffer, checked: not deallocated, on a device."""
        self._check_alive()
        if self._buffer is None:
            raise RuntimeError("TT_FATAL: the operation needs a device tensor, got a host tensor (use .to(device))")
        if self._buffer.freed:  # freed through another tensor of the same buffer (a per-chip view)
            raise TensorDeallocated(f"tensor {list(self._shape)} {self._dtype}: its device buffer was deallocated")
        return self._buffer

    def _check_alive(self) -> None:
        if self._deallocated:
            raise TensorDeallocated(f"tensor {list(self._shape)} {self._dtype} was deallocated and is used again")

    # ------------------------------------------------------------------ host <-> device
    def to(self, device, memory_config: MemoryConfig | None = None, cq_id=None) -> "Tensor":
        """Upload a host tensor: every chip gets its piece (a single host tensor is replicated)."""
        self._check_alive()
        if self._buffer is not None:
            raise RuntimeError("ttnn.Tensor.to: the tensor is already on a device")
        return device.upload(self, memory_config or DRAM_MEMORY_CONFIG, cq_id)

    def cpu(self, blocking: bool = True, cq_id=None) -> "Tensor":
        """Read a device tensor back (a host tensor of the same per-chip pieces)."""
        self._check_alive()
        if self._buffer is None:
            return self
        return self._make(self._shape, self._dtype, self._layout, host=self._buffer.device.read(self, cq_id, blocking),
                          mesh_shape=self._buffer.device.shape_tuple)

    def to_list(self) -> list:
        """A single host tensor's logical values as a flat list (bfloat16 included)."""
        self._check_alive()
        if self._dtype is DataType.BFLOAT16:
            return self._make(self._shape, DataType.FLOAT32, self._layout, host=self._host, mesh_shape=self._mesh_shape).to_list()
        return self.to_numpy().reshape(-1).tolist()

    def to_numpy(self) -> np.ndarray:
        """A single host tensor's logical values (floats as float32)."""
        self._check_alive()
        if self._buffer is not None:
            raise RuntimeError("to_numpy: read a device tensor back with .cpu() first")
        if self._host.shape[:2] != (1, 1):
            raise RuntimeError("to_numpy: a multi-device host tensor; take its pieces with ttnn.get_device_tensors")
        if self._dtype is DataType.BFLOAT16:
            raise TypeError("to_numpy: numpy has no bfloat16 (ttnn 0.81.1 returns an empty object array); typecast to float32 on device first")
        values = self._host[(0, 0) + storage.logical_index(self._shape, len(self._padded))[2:]]
        return np.array(values, dtype=np.float32 if self._dtype.is_float else self._dtype.numpy)

    def deallocate(self, force: bool = True) -> None:
        if self._buffer is not None and not self._deallocated:
            self._buffer.device.free(self._buffer)
        self._deallocated = True


def _tilize(pieces: np.ndarray, dtype: DataType, layout: Layout, pad_value) -> np.ndarray:
    """Host values in ``dtype``; TILE layout pads the tiles with ``pad_value`` (zero), as ttnn's tilize does."""
    padded = storage.padded_shape(pieces.shape[2:], layout)
    return storage.place(pieces, padded, dtype, fill=0 if pad_value is None else pad_value)
