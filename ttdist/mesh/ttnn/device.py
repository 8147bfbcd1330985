"""Opening a ttnn mesh (or submesh) for a ``MeshSpec``, decode traces, and the DRAM report.

Fabric: ``FABRIC_1D_RING`` when an axis of the spec is a ring (T3000), else ``FABRIC_1D``
(N300 line, Galaxy rows and columns). ``TtnnOptions`` holds everything the caller may
choose; it is validated once here.

Dispatch cores (``dispatch_core``): ``auto`` takes what the platform recommends: on chips,
ttnn's cluster-aware default (``DispatchCoreConfig()``); on a mock cluster, dispatch on a row
of worker cores, the one choice under which the mock's harvested N300 / T3000 chips report
the grid they validate against (8x7). ``worker_row``, ``worker_col``, ``eth_row`` and
``eth_col`` choose one explicitly. Every program config takes its core grid from the opened
device (``compute_with_storage_grid_size``), so it follows the dispatch choice.

Before opening, the spec's chip count is checked against the chips this process sees
(``TT_VISIBLE_DEVICES``), so a mesh the system lacks is a ``MeshError`` naming the fix.

Command queues (``command_queues``, tt-metal's "Multiple CQs"): a mesh the backend opens on chips
has two. Every program runs on queue 0 (``COMPUTE_CQ``); the KV tiers' page reads back from and
uploads to the chips run on queue 1 (``TRANSFER_CQ``), ordered against queue 0 by events
(``order``), as the guide uses a second queue for I/O. Programs stay on queue 0: ttnn refuses a
program on queue 1 while queue 0 owns the sub-device ("Can't enqueue program from cq 1"). A
device handed in (``device`` / ``parent``) is taken to have one queue unless ``command_queues=2``
says so (ttnn cannot be asked how many a mesh was opened with); with one, everything runs on
queue 0. A mock cluster opens one queue by default: under the worker-row dispatch its grid
needs there are no dispatch cores for a second ("No more available dispatch cores").

Tracing: ``DecodeTrace`` captures one decode step (``begin_trace_capture`` /
``end_trace_capture``) and replays it with ``execute_trace``. Inputs that change per step
must live in persistent device tensors refreshed with ``copy_host_to_device_tensor``
before each replay. Mock clusters cannot capture a trace (the capture crashes the
process), so ``MeshHandle.can_trace`` is False there and callers run the step eagerly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import ttnn

from ttdist.mesh.backend import MeshError
from ttdist.mesh.spec import MeshSpec, Topology, too_few_chips
from ttdist.mesh.ttnn.configs import Grid, interleaved_bytes

DEFAULT_TRACE_REGION = 64 << 20
DISPATCH_AUTO = "auto"
COMPUTE_CQ = 0      # the steps (and their traces) run here
TRANSFER_CQ = 1     # KV page transfers, where the mesh has a second queue


@dataclass(frozen=True)
class TtnnOptions:
    """How the backend opens and uses the chips.

    ``device``: an already opened mesh device to share (tests open each mesh once);
    ``parent`` + ``offset``: carve a submesh of ``spec``'s shape out of a bigger mesh;
    ``worker_grid``: limit ops to this many worker columns x rows (default: the device's grid);
    ``dram_sharded_decode``: decode matmuls read DRAM-sharded weights (the guide's choice);
    ``trace_region_bytes``: device memory reserved for decode traces;
    ``dispatch_core``: ``auto`` or ``<worker|eth>_<row|col>`` (see the module doc);
    ``command_queues``: 1 or 2 (None: 2 for a mesh the backend opens on chips, else 1).
    """

    device: object = None
    parent: object = None
    offset: tuple[int, int] = (0, 0)
    worker_grid: tuple[int, int] | None = None
    dram_sharded_decode: bool = True
    trace_region_bytes: int = DEFAULT_TRACE_REGION
    dispatch_core: str = DISPATCH_AUTO
    command_queues: int | None = None

    @classmethod
    def from_kwargs(cls, options: dict) -> "TtnnOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise MeshError(f"ttnn backend: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        opts = cls(**options)
        if opts.worker_grid is not None and (len(opts.worker_grid) != 2 or min(opts.worker_grid) < 1):
            raise MeshError(f"ttnn backend: worker_grid must be (columns, rows) >= 1, got {opts.worker_grid}")
        dispatch_config(opts.dispatch_core)
        if opts.command_queues not in (None, 1, 2):
            raise MeshError(f"ttnn backend: command_queues must be 1 or 2, got {opts.command_queues}")
        return opts


@dataclass
class MeshHandle:
    device: object
    grid: Grid
    owned: bool
    dram_baseline: int
    command_queues: int = 1

    @property
    def can_trace(self) -> bool:
        return not mock_cluster()

    def close(self) -> None:
        if self.owned and self.device is not None:
            ttnn.close_mesh_device(self.device)
            self.device = None


def fabric_for(spec: MeshSpec):
    if spec.num_chips == 1:
        return None
    if Topology.RING in spec.topology:
        return ttnn.FabricConfig.FABRIC_1D_RING
    return ttnn.FabricConfig.FABRIC_1D


def mock_cluster() -> bool:
    """True where ttnn runs on mocked chips (a mock cluster descriptor is set)."""
    return bool(os.environ.get("TT_METAL_MOCK_CLUSTER_DESC_PATH"))


def dispatch_config(name: str):
    """ttnn's ``DispatchCoreConfig`` for a ``dispatch_core`` setting; None = ttnn's own default."""
    if name == DISPATCH_AUTO:
        return dispatch_config("worker_row") if mock_cluster() else None
    kind, _, axis = name.partition("_")
    core_type = getattr(ttnn.DispatchCoreType, kind.upper(), None) if kind else None
    core_axis = getattr(ttnn.DispatchCoreAxis, axis.upper(), None) if axis else None
    if core_type is None or core_axis is None:
        raise MeshError(f"ttnn backend: dispatch_core {name!r} is not one of auto, worker_row, worker_col, eth_row, eth_col")
    return ttnn.DispatchCoreConfig(core_type, core_axis)


def check_chips(spec: MeshSpec) -> None:
    """A ``MeshError`` naming the fix where this process sees fewer chips than ``spec`` needs."""
    have = int(ttnn.get_num_devices())
    if have < spec.num_chips:
        raise MeshError(too_few_chips(spec, have, os.environ.get("TT_VISIBLE_DEVICES")))


def open_device(spec: MeshSpec, trace_region_bytes: int = DEFAULT_TRACE_REGION, dispatch_core: str = DISPATCH_AUTO,
                command_queues: int = 1):
    """Open the whole mesh for ``spec`` (checks the chip count, sets the fabric first) with
    ``command_queues`` command queues."""
    dispatch = dispatch_config(dispatch_core)
    check_chips(spec)
    fabric = fabric_for(spec)
    if fabric is not None:
        ttnn.set_fabric_config(fabric)
    extra = {} if dispatch is None else {"dispatch_core_config": dispatch}
    return ttnn.open_mesh_device(ttnn.MeshShape(spec.rows, spec.cols), trace_region_size=trace_region_bytes,
                                 num_command_queues=command_queues, **extra)


def open_mesh(spec: MeshSpec, options: TtnnOptions) -> MeshHandle:
    owned, queues = False, options.command_queues or 1
    if options.device is not None:
        device = options.device
    elif options.parent is not None:
        device = options.parent.create_submesh(ttnn.MeshShape(spec.rows, spec.cols), ttnn.MeshCoordinate(*options.offset))
    else:
        queues = options.command_queues or (1 if mock_cluster() else 2)
        device, owned = open_device(spec, options.trace_region_bytes, options.dispatch_core, queues), True
    shape = tuple(device.shape)
    if shape != spec.shape:
        raise MeshError(f"ttnn backend: the device mesh is {shape[0]}x{shape[1]} but the spec {spec.name!r} is {spec.shape_str}")
    full = device.compute_with_storage_grid_size()
    gx, gy = options.worker_grid or (full.x, full.y)
    grid = Grid(min(gx, full.x), min(gy, full.y))
    return MeshHandle(device, grid, owned, dram_allocated(device), queues)


def transfer_cq(handle: MeshHandle):
    """The queue KV page transfers use: ``TRANSFER_CQ`` on a two-queue mesh, else None (queue 0)."""
    return ttnn.QueueId(TRANSFER_CQ) if handle.command_queues > 1 else None


def order(handle: MeshHandle, first: int, then: int) -> None:
    """What queue ``then`` is given next runs after everything queue ``first`` was given so far: an
    event recorded on ``first`` that ``then`` waits for on the device (``wait_for_event``), or, on a
    mock cluster (where ``wait_for_event`` crashes the process, as trace capture does), that the
    host waits for (``event_synchronize``) before it enqueues more."""
    if handle.command_queues < 2:
        return
    event = ttnn.record_event(handle.device, ttnn.QueueId(first))
    if mock_cluster():
        ttnn.event_synchronize(event)
    else:
        ttnn.wait_for_event(ttnn.QueueId(then), event)



def dram_allocated(device) -> int:
    """Bytes ttnn's allocator holds in one chip's DRAM (the allocator runs in lock-step over the mesh)."""
    view = ttnn.get_memory_view(device, ttnn.BufferType.DRAM)
    return int(view.total_bytes_allocated_per_bank) * int(view.num_banks)


@dataclass(frozen=True)
class DramReport:
    """Per-chip DRAM: the simulator-rule ledger, ttnn's allocator, and the layout each tensor got."""

    ledger_bytes: float
    allocator_bytes: int
    layout_bytes: int
    by_kind: dict


def tensor_dram_bytes(value) -> int:
    """DRAM one chip reserves for a device tensor, from its buffer geometry."""
    memory = value.memory_config()
    if memory.buffer_type != ttnn.BufferType.DRAM:
        return 0
    pages, page = value.buffer_num_pages(), value.buffer_aligned_page_size()
    if memory.is_sharded():
        spec = memory.shard_spec
        shards = spec.num_cores()
        return -(-pages // shards) * shards * page
    return interleaved_bytes(pages, page)


def dram_report(backend) -> DramReport:
    by_kind: dict[str, list[float]] = {}
    layout = 0
    for t in list(backend._live):
        if t.value is None:
            continue
        got = tensor_dram_bytes(t.value)
        layout += got
        entry = by_kind.setdefault(t.kind, [0.0, 0])
        entry[0] += _ledger_share(t)
        entry[1] += got
    allocator = dram_allocated(backend.device) - backend.mesh.dram_baseline
    return DramReport(backend.dram.used_per_chip(), allocator, layout, {k: tuple(v) for k, v in by_kind.items()})


def _ledger_share(t) -> float:
    from ttdist.mesh.accounting import tile_padded_bytes

    return tile_padded_bytes(t.shape, t.dtype)


class DecodeTrace:
    """One captured decode step, replayed with ``execute_trace`` (hardware only)."""

    def __init__(self, handle: MeshHandle):
        if not handle.can_trace:
            raise MeshError("trace capture needs real chips: mock clusters crash in begin_trace_capture")
        self.device = handle.device
        self.trace_id = None

    def capture(self, step):
        self.trace_id = ttnn.begin_trace_capture(self.device, cq_id=0)
        try:
            out = step()
        finally:
            ttnn.end_trace_capture(self.device, self.trace_id, cq_id=0)
        return out

    def replay(self) -> None:
        ttnn.execute_trace(self.device, self.trace_id, cq_id=0, blocking=False)

    def release(self) -> None:
        if self.trace_id is not None:
            ttnn.release_trace(self.device, self.trace_id)
            self.trace_id = None
