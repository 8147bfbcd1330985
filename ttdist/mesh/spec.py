"""Mesh topology: named Tenstorrent systems and any RxC simulated mesh.

A mesh is a 2D grid of Wormhole chips. Axis 0 runs down the rows, axis 1 across the
columns (ttnn's ``cluster_axis``). Each axis is a Line or a Ring of Ethernet links.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from ttdist.errors import PermanentError
from ttdist.mesh.errors import MeshError

GB = 10**9
GiB = 2**30


class Topology(enum.Enum):
    LINE = "line"
    RING = "ring"


class MeshSpecError(PermanentError, ValueError):
    """A mesh name or shape that ttdist cannot build."""


@dataclass(frozen=True)
class MeshSpec:
    """One mesh of chips: its shape, links and per-chip memory figures."""

    name: str
    rows: int
    cols: int
    topology: tuple[Topology, Topology] = (Topology.LINE, Topology.LINE)
    links: tuple[int, int] = (1, 1)
    dram_bytes_per_chip: int = 12 * GiB
    dram_bandwidth_gbps: float = 288.0  # peak GB/s per chip (Wormhole)
    link_bandwidth_gbps: float = 12.5  # GB/s per Ethernet link direction (100 Gb/s)

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise MeshSpecError(f"mesh {self.name!r}: shape must be at least 1x1, got {self.rows}x{self.cols}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def num_chips(self) -> int:
        return self.rows * self.cols

    @property
    def shape_str(self) -> str:
        return f"{self.rows}x{self.cols}"

    def resolve_axis(self, op: str, cluster_axis: int | None) -> int:
        """The mesh axis a collective runs on; ``None`` means the whole of a 1D mesh."""
        if cluster_axis is None:
            if self.rows > 1 and self.cols > 1:
                raise MeshError(f"{op}: cluster_axis is required on the 2D mesh {self.shape_str}")
            return 0 if self.rows > 1 else 1
        if cluster_axis not in (0, 1):
            raise MeshError(f"{op}: cluster_axis must be 0, 1 or None, got {cluster_axis}")
        return cluster_axis

    def chips(self) -> list[tuple[int, int]]:
        return [(r, c) for r in range(self.rows) for c in range(self.cols)]


# Published Wormhole systems. TG (Galaxy): 8x4 grid, rows and columns are lines,
# 4 links along axis 0 and 3 along axis 1 (tt-metal LLM guide, section 3.3.1).
SYSTEMS: dict[str, MeshSpec] = {
    "n150": MeshSpec("n150", 1, 1),
    "n300": MeshSpec("n300", 1, 2),
    "t3k": MeshSpec("t3k", 1, 8, topology=(Topology.LINE, Topology.RING)),
    "tg": MeshSpec("tg", 8, 4, links=(4, 3)),
}

_RXC = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_mesh(text: str) -> MeshSpec:
    """A named system (n150, n300, t3k, tg) or any ``RxC`` shape (Line topology)."""
    key = text.strip().lower()
    if key in SYSTEMS:
        return SYSTEMS[key]
    match = _RXC.match(key)
    if not match:
        names = ", ".join(SYSTEMS)
        raise MeshSpecError(f"unknown mesh {text!r}: use one of {names} or a shape such as 2x4")
    rows, cols = int(match.group(1)), int(match.group(2))
    if rows * cols > 1024:
        raise MeshSpecError(f"mesh {text!r} has {rows * cols} chips; the limit is 1024")
    return MeshSpec(f"{rows}x{cols}", rows, cols)


def too_few_chips(spec: MeshSpec, have: int, visible: str | None = None) -> str:
    """The one-line message for a mesh that needs more chips than a host shows, naming the fix."""
    seen = f"TT_VISIBLE_DEVICES={visible} shows" if visible else "this host has"
    fits = sorted((s.num_chips, name) for name, s in SYSTEMS.items() if s.num_chips <= have)
    hint = f"use --mesh {fits[-1][1]} (or a smaller mesh)" if fits else "check the chips with tt-smi"
    return f"mesh {spec.name} ({spec.shape_str}) needs {spec.num_chips} chips but {seen} {have}: {hint}"
