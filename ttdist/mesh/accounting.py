"""What the mesh spends: bytes moved by collectives and bytes held in each chip's DRAM.

Collective data movement uses the tt-metal LLM guide's formulas (section 3.3.9), where
``B = K*N*DF`` is the size in bytes of the full (gathered, or pre-reduction) tensor and
``D`` the number of devices along the axis:

=============  ======================  ======================
op             Line                    Ring
=============  ======================  ======================
all_gather     (B / D) * (D - 1) * D   B * D * log2(D)
reduce_scatter B * (1 - 1/D)           B * (D - 1) / D
=============  ======================  ======================

``all_reduce`` is a reduce-scatter followed by an all-gather of the same full tensor, as
in ttnn's composite all-reduce; its cost is the sum of both.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass, field

from ttdist.errors import PermanentError
from ttdist.mesh.precision import DType
from ttdist.mesh.spec import MeshSpec, Topology

TILE = 32


def tile_padded_bytes(local_shape, dtype: DType) -> float:
    """Bytes one chip holds for a tensor stored in 32x32 tiles (last two dims padded)."""
    dims = list(local_shape) or [1]
    if len(dims) == 1:
        dims = [1] + dims
    dims[-1] = -(-dims[-1] // TILE) * TILE
    dims[-2] = -(-dims[-2] // TILE) * TILE
    return math.prod(dims) * dtype.bytes_per_element


def all_gather_bytes(full_bytes: float, devices: int, topology: Topology) -> float:
    if devices <= 1:
        return 0.0
    if topology is Topology.RING:
        return full_bytes * devices * math.log2(devices)
    return full_bytes / devices * (devices - 1) * devices


def reduce_scatter_bytes(full_bytes: float, devices: int, topology: Topology) -> float:
    if devices <= 1:
        return 0.0
    return full_bytes * (devices - 1) / devices


def all_reduce_bytes(full_bytes: float, devices: int, topology: Topology) -> float:
    return reduce_scatter_bytes(full_bytes, devices, topology) + all_gather_bytes(full_bytes, devices, topology)


COLLECTIVE_BYTES = {"all_gather": all_gather_bytes, "reduce_scatter": reduce_scatter_bytes, "all_reduce": all_reduce_bytes}


@dataclass(frozen=True)
class CclRecord:
    op: str
    cluster_axis: int
    devices: int
    topology: Topology
    full_bytes: float
    bytes_moved: float


class CclLedger:
    """The collectives run on a mesh as counters (count and bytes moved per op and axis), plus
    the most recent ``keep`` records for inspection. Memory stays bounded however long a
    replica serves: nothing grows per collective beyond the ring."""

    def __init__(self, keep: int = 4096) -> None:
        self._recent: deque[CclRecord] = deque(maxlen=keep)
        self._count: dict[tuple[str, int], int] = defaultdict(int)
        self._bytes: dict[tuple[str, int], float] = defaultdict(float)
        self.recorded = 0                 # records ever (the ring keeps the last ``keep``)

    def record_collective(self, op: str, spec: MeshSpec, axis: int, full_elems: int, dtype: DType,
                          topology: Topology | None = None) -> None:
        """Record collective ``op`` on mesh ``axis`` of ``spec`` over a full (gathered, or
        pre-reduction) tensor of ``full_elems`` elements of ``dtype``; ``topology`` defaults to the axis's."""
        topo = topology or spec.topology[axis]
        n = spec.shape[axis]
        full = full_elems * dtype.bytes_per_element
        self.record(CclRecord(op, axis, n, topo, full, COLLECTIVE_BYTES[op](full, n, topo)))

    def record(self, rec: CclRecord) -> None:
        self._recent.append(rec)
        key = (rec.op, rec.cluster_axis)
        self._count[key] += 1
        self._bytes[key] += rec.bytes_moved
        self.recorded += 1

    @property
    def records(self) -> list[CclRecord]:
        """The most recent records, oldest first (all of them until the ring is full)."""
        return list(self._recent)

    def bytes_per_axis(self) -> dict[int, float]:
        out: dict[int, float] = defaultdict(float)
        for (_, axis), moved in self._bytes.items():
            out[axis] += moved
        return dict(out)

    def total_bytes(self) -> float:
        return sum(self._bytes.values())

    def count(self, op: str | None = None) -> int:
        return sum(n for (name, _), n in self._count.items() if op is None or name == op)

    def clear(self) -> None:
        self._recent.clear()
        self._count.clear()
        self._bytes.clear()
        self.recorded = 0


class DramOverflowError(PermanentError, MemoryError):
    """A tensor does not fit in a chip's DRAM."""


WEIGHTS_PREFIX = "weights."
KV_CACHE = "kv_cache"


@dataclass(frozen=True)
class ChipDram:
    """One chip's DRAM from the ledger: capacity and what holds it (bytes)."""

    capacity: int
    weights: int
    kv_cache: int
    other: int

    @property
    def used(self) -> int:
        return self.weights + self.kv_cache + self.other

    @property
    def free(self) -> int:
        return self.capacity - self.used


@dataclass
class DramLedger:
    """Bytes held in each chip's DRAM; every allocation is checked against capacity."""

    spec: MeshSpec
    used: dict[tuple[int, int], float] = field(default_factory=dict)
    peak: dict[tuple[int, int], float] = field(default_factory=dict)
    by_name: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def __post_init__(self) -> None:
        for chip in self.spec.chips():
            self.used.setdefault(chip, 0.0)
            self.peak.setdefault(chip, 0.0)

    def allocate(self, name: str, bytes_per_chip: float) -> None:
        capacity = self.spec.dram_bytes_per_chip
        for chip in self.spec.chips():
            if self.used[chip] + bytes_per_chip > capacity:
                raise DramOverflowError(
                    f"chip {chip} of mesh {self.spec.name}: tensor {name!r} needs {bytes_per_chip:,.0f} bytes, "
                    f"{self.used[chip]:,.0f} of {capacity:,} bytes are already in use"
                )
        for chip in self.spec.chips():
            self.used[chip] += bytes_per_chip
            self.peak[chip] = max(self.peak[chip], self.used[chip])
        self.by_name[name] += bytes_per_chip

    def free(self, name: str, bytes_per_chip: float) -> None:
        for chip in self.spec.chips():
            self.used[chip] -= bytes_per_chip
        self.by_name[name] -= bytes_per_chip

    def used_per_chip(self) -> float:
        return max(self.used.values())

    def usage(self) -> ChipDram:
        """The fullest chip's DRAM by kind: weights (``weights.*``), KV cache, everything else."""
        weights = sum(v for k, v in self.by_name.items() if k.startswith(WEIGHTS_PREFIX))
        kv = sum(v for k, v in self.by_name.items() if k == KV_CACHE)
        used = self.used_per_chip()
        return ChipDram(int(self.spec.dram_bytes_per_chip), int(weights), int(kv), int(round(used - weights - kv)))
