"""ttnn's value types on the emulator: data types, layouts, memory and shard configs, core
grids, compute-kernel and program configs, mesh shapes and the enums the backend names.

They mirror the classes ttnn 0.81.1 binds from C++ (``ttnn/types.py``, ``ttnn._ttnn``): the
same constructor arguments and attributes, so code written against ttnn builds them
unchanged. Program configs keep their arguments as attributes (ops read what they check);
an unknown keyword is a ``TypeError`` as in the bindings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

TILE = 32


class _Enum(enum.Enum):
    """An enum that prints as ttnn's bound enums do (``DataType.BFLOAT16``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    __str__ = __repr__


class DataType(_Enum):
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"
    UINT32 = "uint32"
    BFLOAT8_B = "bfloat8_b"
    BFLOAT4_B = "bfloat4_b"
    UINT8 = "uint8"
    UINT16 = "uint16"
    INT32 = "int32"

    @property
    def is_float(self) -> bool:
        return self in FLOATS

    @property
    def is_block_float(self) -> bool:
        return self in (DataType.BFLOAT8_B, DataType.BFLOAT4_B)

    @property
    def numpy(self) -> np.dtype:
        """How the emulator stores values of this type (floats as float32 holding rounded values)."""
        return np.dtype(np.float32) if self.is_float else np.dtype(_INT_STORAGE[self])

    @property
    def tile_bytes(self) -> int:
        """Bytes of one 32x32 tile in device memory (block floats: a 16-byte exponent section per face row group)."""
        return _TILE_BYTES[self]

    @property
    def element_bytes(self) -> int:
        """Bytes of one value in a row-major page (block floats are tile-only)."""
        return _ELEMENT_BYTES[self]


FLOATS = frozenset({DataType.BFLOAT16, DataType.FLOAT32, DataType.BFLOAT8_B, DataType.BFLOAT4_B})
_INT_STORAGE = {DataType.UINT32: np.uint32, DataType.INT32: np.int32, DataType.UINT16: np.uint16, DataType.UINT8: np.uint8}
_TILE_BYTES = {DataType.BFLOAT16: 2048, DataType.FLOAT32: 4096, DataType.UINT32: 4096, DataType.INT32: 4096,
               DataType.BFLOAT8_B: 1088, DataType.BFLOAT4_B: 576, DataType.UINT16: 2048, DataType.UINT8: 1024}
_ELEMENT_BYTES = {DataType.BFLOAT16: 2, DataType.FLOAT32: 4, DataType.UINT32: 4, DataType.INT32: 4, DataType.UINT16: 2,
                  DataType.UINT8: 1, DataType.BFLOAT8_B: 1, DataType.BFLOAT4_B: 1}


class Layout(_Enum):
    ROW_MAJOR = 0
    TILE = 1


class TensorMemoryLayout(_Enum):
    INTERLEAVED = 0
    HEIGHT_SHARDED = 2
    WIDTH_SHARDED = 3
    BLOCK_SHARDED = 4


class BufferType(_Enum):
    DRAM = 0
    L1 = 1


ShardOrientation = _Enum("ShardOrientation", "ROW_MAJOR COL_MAJOR")
ShardStrategy = _Enum("ShardStrategy", "HEIGHT WIDTH BLOCK")
MathFidelity = _Enum("MathFidelity", "LoFi HiFi2 HiFi3 HiFi4")
Topology = _Enum("Topology", "NeighborExchange Linear Ring Mesh Torus")
FabricConfig = _Enum("FabricConfig", "DISABLED FABRIC_1D FABRIC_1D_RING FABRIC_2D CUSTOM")
DispatchCoreType = _Enum("DispatchCoreType", "WORKER ETH")
DispatchCoreAxis = _Enum("DispatchCoreAxis", "ROW COL")
UnaryOpType = _Enum("UnaryOpType", "SILU RELU GELU EXP SIGMOID RECIP SQRT")
ShardMode = _Enum("ShardMode", "PHYSICAL LOGICAL")
StorageType = _Enum("StorageType", "HOST DEVICE")


@dataclass(frozen=True)
class CoreCoord:
    x: int
    y: int


@dataclass(frozen=True)
class CoreRange:
    start: CoreCoord
    end: CoreCoord

    def num_cores(self) -> int:
        return (self.end.x - self.start.x + 1) * (self.end.y - self.start.y + 1)


class CoreRangeSet:
    def __init__(self, ranges=()):
        self.ranges_ = tuple(sorted(ranges if not isinstance(ranges, CoreRange) else [ranges],
                                    key=lambda r: (r.start.y, r.start.x)))

    def ranges(self):
        return list(self.ranges_)

    def num_cores(self) -> int:
        return sum(r.num_cores() for r in self.ranges_)

    def bounding_box(self) -> CoreRange:
        xs = [c for r in self.ranges_ for c in (r.start.x, r.end.x)]
        ys = [c for r in self.ranges_ for c in (r.start.y, r.end.y)]
        return CoreRange(CoreCoord(min(xs), min(ys)), CoreCoord(max(xs), max(ys)))

    def __eq__(self, other) -> bool:
        return isinstance(other, CoreRangeSet) and self.ranges_ == other.ranges_

    def __hash__(self) -> int:
        return hash(self.ranges_)

    def __repr__(self) -> str:
        return f"CoreRangeSet({list(self.ranges_)})"


@dataclass(frozen=True)
class CoreGrid:
    x: int
    y: int

    @property
    def num_cores(self) -> int:
        return self.x * self.y


@dataclass(frozen=True)
class ShardSpec:
    grid: CoreRangeSet
    shape: tuple
    orientation: ShardOrientation = ShardOrientation.ROW_MAJOR

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    def num_cores(self) -> int:
        return self.grid.num_cores()


@dataclass(frozen=True)
class MemoryConfig:
    memory_layout: TensorMemoryLayout = TensorMemoryLayout.INTERLEAVED
    buffer_type: BufferType = BufferType.DRAM
    shard_spec: ShardSpec | None = None

    def is_sharded(self) -> bool:
        return self.memory_layout is not TensorMemoryLayout.INTERLEAVED

    @property
    def kind(self) -> tuple:
        """What the emulator's checks compare: buffer and memory layout (shard geometry aside)."""
        return (self.buffer_type, self.memory_layout)


DRAM_MEMORY_CONFIG = MemoryConfig(TensorMemoryLayout.INTERLEAVED, BufferType.DRAM)
L1_MEMORY_CONFIG = MemoryConfig(TensorMemoryLayout.INTERLEAVED, BufferType.L1)
L1_HEIGHT_SHARDED_MEMORY_CONFIG = MemoryConfig(TensorMemoryLayout.HEIGHT_SHARDED, BufferType.L1)
L1_WIDTH_SHARDED_MEMORY_CONFIG = MemoryConfig(TensorMemoryLayout.WIDTH_SHARDED, BufferType.L1)
L1_BLOCK_SHARDED_MEMORY_CONFIG = MemoryConfig(TensorMemoryLayout.BLOCK_SHARDED, BufferType.L1)

_STRATEGY_LAYOUT = {ShardStrategy.HEIGHT: TensorMemoryLayout.HEIGHT_SHARDED, ShardStrategy.WIDTH: TensorMemoryLayout.WIDTH_SHARDED,
                    ShardStrategy.BLOCK: TensorMemoryLayout.BLOCK_SHARDED}


def create_sharded_memory_config(shape, core_grid, strategy, orientation=None, use_height_and_width_as_shard_shape=False):
    """ttnn.create_sharded_memory_config (``ttnn/core.py``): with
    ``use_height_and_width_as_shard_shape`` the shape is the shard shape itself; otherwise the
    tensor shape is split over the grid (height over all cores, width over all, block over y x x)."""
    grid = core_grid if isinstance(core_grid, CoreRangeSet) else CoreRangeSet(
        {CoreRange(CoreCoord(0, 0), CoreCoord(core_grid.x - 1, core_grid.y - 1))})
    orientation = orientation or ShardOrientation.ROW_MAJOR
    if use_height_and_width_as_shard_shape:
        shard = tuple(shape)
    else:
        shape = tuple(shape)
        height = int(np.prod(shape[:-1]))
        cores = grid.num_cores()
        box = grid.bounding_box()
        rows, cols = box.end.y - box.start.y + 1, box.end.x - box.start.x + 1
        shard = {ShardStrategy.HEIGHT: (-(-height // cores), shape[-1]),
                 ShardStrategy.WIDTH: (height, -(-shape[-1] // cores)),
                 ShardStrategy.BLOCK: (-(-height // rows), -(-shape[-1] // cols))}[strategy]
    return MemoryConfig(_STRATEGY_LAYOUT[strategy], BufferType.L1, ShardSpec(grid, shard, orientation))


def num_cores_to_corerangeset(num_cores: int, grid: CoreCoord, row_wise: bool = False) -> CoreRangeSet:
    """The first ``num_cores`` cores of ``grid``, filled row by row (``row_wise``) or column by column."""
    if num_cores > grid.x * grid.y:
        raise RuntimeError(f"num_cores_to_corerangeset: {num_cores} cores do not fit a {grid.x}x{grid.y} grid")
    major, minor = (grid.x, grid.y) if row_wise else (grid.y, grid.x)
    full, rest = divmod(num_cores, major)
    ranges = []

    def rng(a0, b0, a1, b1):
        return CoreRange(CoreCoord(a0, b0), CoreCoord(a1, b1)) if row_wise else CoreRange(CoreCoord(b0, a0), CoreCoord(b1, a1))

    if full:
        ranges.append(rng(0, 0, major - 1, full - 1))
    if rest:
        ranges.append(rng(0, full, rest - 1, full))
    return CoreRangeSet(set(ranges))


class _Config:
    """A config object that keeps its keyword arguments (program and compute-kernel configs)."""

    FIELDS: tuple = ()

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown argument(s) {', '.join(sorted(unknown))}")
        for name in self.FIELDS:
            setattr(self, name, kwargs.get(name))

    def _key(self):
        return tuple((n, repr(getattr(self, n))) for n in self.FIELDS)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.FIELDS if getattr(self, n) is not None)
        return f"{type(self).__name__}({args})"


class WormholeComputeKernelConfig(_Config):
    FIELDS = ("math_fidelity", "math_approx_mode", "fp32_dest_acc_en", "packer_l1_acc", "dst_full_sync_en", "throttle_level")


class MatmulMultiCoreReuseMultiCastProgramConfig(_Config):
    FIELDS = ("compute_with_storage_grid_size", "in0_block_w", "out_subblock_h", "out_subblock_w", "out_block_h",
              "out_block_w", "per_core_M", "per_core_N", "transpose_mcast", "fused_activation", "fuse_batch")


class MatmulMultiCoreReuseMultiCast1DProgramConfig(_Config):
    FIELDS = ("compute_with_storage_grid_size", "in0_block_w", "out_subblock_h", "out_subblock_w", "out_block_h",
              "out_block_w", "per_core_M", "per_core_N", "fuse_batch", "fused_activation", "mcast_in0", "gather_in0",
              "hop_cores", "num_global_cb_receivers", "untilize_out")


class MatmulMultiCoreReuseMultiCastDRAMShardedProgramConfig(_Config):
    FIELDS = ("in0_block_w", "per_core_M", "per_core_N", "fused_activation")


class SDPAProgramConfig(_Config):
    FIELDS = ("compute_with_storage_grid_size", "sub_core_grids", "q_chunk_size", "k_chunk_size", "exp_approx_mode",
              "max_cores_per_head_batch")


@dataclass(frozen=True)
class DispatchCoreConfig:
    type: DispatchCoreType = DispatchCoreType.WORKER
    axis: DispatchCoreAxis = DispatchCoreAxis.ROW


@dataclass(frozen=True)
class MeshShape:
    rows: int
    cols: int

    def __iter__(self):
        return iter((self.rows, self.cols))

    def __getitem__(self, i: int) -> int:
        return (self.rows, self.cols)[i]

    def __len__(self) -> int:
        return 2

    def mesh_size(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class MeshCoordinate:
    row: int
    col: int

    def __iter__(self):
        return iter((self.row, self.col))


@dataclass(frozen=True)
class PlacementShard:
    dim: int


@dataclass(frozen=True)
class PlacementReplicate:
    pass


@dataclass(frozen=True)
class MeshMapperConfig:
    placements: list = field(default_factory=list)

    def __post_init__(self):
        object.__setattr__(self, "placements", tuple(self.placements))
