"""Emulated mesh devices: opening and closing, allocation, host transfers, the program cache
and traces.

``open_mesh_device(MeshShape(R, C))`` picks the system from the shape (1x1 N150, 1x2 N300,
1x8 T3000, 8x4 Galaxy, any other RxC a generic Wormhole mesh) and its worker grid: 8x8 on
N150/N300/T3000 and 8x9 on a Galaxy with ttnn's default dispatch; dispatch on a row (column)
of worker cores takes that row (column) away (the mock kit's N300/T3000 report 8x7).

Every op goes through ``MeshDevice.launch``: it checks that its tensors are alive and on
this device, counts the program in the program cache (one entry per distinct op, tensor
specs and attributes, like ttnn's cache), and runs the op's kernel at once, or, between
``begin_trace_capture`` and ``end_trace_capture``, records it. A recorded kernel reads the
buffers it names when the trace is executed, so a trace sees what was written into its input
buffers (``copy_host_to_device_tensor``) and nothing of a tensor made anew; outputs of
captured ops hold poison until the first replay and keep their buffers across replays.
As on chips, host writes and reads are refused while a trace is being captured, and a replay
that reads a buffer freed outside the trace raises. Ops and transfers run on command queues
(``queues``: opened with ``num_command_queues``; events order them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttdist.mesh.ttnn_emu import storage
from ttdist.mesh.ttnn_emu.queues import Queues, queue_of
from ttdist.mesh.ttnn_emu.tensor import Buffer, Tensor
from ttdist.mesh.ttnn_emu.types import (BufferType, CoreCoord, DispatchCoreAxis, DispatchCoreConfig, DispatchCoreType, FabricConfig,
                                        Layout, MemoryConfig, MeshCoordinate, MeshShape, TILE)

SYSTEMS = {(1, 1): "n150", (1, 2): "n300", (1, 8): "t3k", (8, 4): "tg"}
DRAM_BANKS = 12
DRAM_BYTES = 12 * 1024**3
_OPEN_ARGS = {"l1_small_size", "trace_region_size", "num_command_queues", "dispatch_core_config", "offset",
              "physical_device_ids", "worker_l1_size", "mesh_shape"}


class TraceError(RuntimeError):
    """A host transfer during a capture, or a replay that reads a freed buffer."""


@dataclass
class _State:
    fabric: FabricConfig = FabricConfig.DISABLED


_state = _State()


def set_fabric_config(config, *args, **kwargs) -> None:
    _state.fabric = config


def get_num_devices() -> int:
    return storage.settings.num_devices


@dataclass
class _Trace:
    ops: list
    done: bool = False


class MeshDevice:
    """One emulated mesh (or submesh) of Wormhole chips."""

    def __init__(self, shape: MeshShape, *, trace_region_size: int = 0, dispatch=None, parent=None, num_command_queues: int = 1):
        self.shape = MeshShape(int(shape[0]), int(shape[1]))
        self.shape_tuple = (self.shape.rows, self.shape.cols)
        self.system = SYSTEMS.get(self.shape_tuple, f"{self.shape.rows}x{self.shape.cols}")
        self.fabric = _state.fabric
        self.trace_region_size = trace_region_size
        self.dispatch = dispatch
        self.parent = parent
        self.queues = Queues(num_command_queues)
        self.closed = False
        self.programs: set = set()
        self.dram_bytes = 0
        self.traces: dict[int, _Trace] = {}
        self.capturing: int | None = None
        self._next_trace = 0

    # ------------------------------------------------------------------ what ttnn reports
    def compute_with_storage_grid_size(self) -> CoreCoord:
        x, y = (8, 9) if self.system == "tg" else (8, 8)
        if self.dispatch is not None and self.dispatch.type is DispatchCoreType.WORKER:
            x, y = (x, y - 1) if self.dispatch.axis is DispatchCoreAxis.ROW else (x - 1, y)
            y = max(y, 9) if self.system == "tg" else y
        return CoreCoord(x, y)

    def get_num_devices(self) -> int:
        return self.shape.rows * self.shape.cols

    def dram_grid_size(self) -> CoreCoord:
        return CoreCoord(DRAM_BANKS, 1)

    def num_program_cache_entries(self) -> int:
        return len(self.programs)

    def enable_program_cache(self) -> None:
        pass

    def clear_program_cache(self) -> None:
        self.programs.clear()

    def create_submesh(self, shape: MeshShape, offset: MeshCoordinate | None = None) -> "MeshDevice":
        rows, cols = int(shape[0]), int(shape[1])
        r0, c0 = (offset.row, offset.col) if offset is not None else (0, 0)
        if r0 + rows > self.shape.rows or c0 + cols > self.shape.cols:
            raise RuntimeError(f"create_submesh: {rows}x{cols} at {r0},{c0} does not fit the {self.shape.rows}x{self.shape.cols} mesh")
        return MeshDevice(MeshShape(rows, cols), trace_region_size=self.trace_region_size, dispatch=self.dispatch, parent=self,
                          num_command_queues=self.queues.count)

    def __repr__(self) -> str:
        return f"MeshDevice(emulated {self.system}, {self.shape.rows}x{self.shape.cols})"

    # ------------------------------------------------------------------ memory
    def allocate(self, data: np.ndarray, tensor: Tensor, memory_config: MemoryConfig) -> Buffer:
        self._check_open()
        nbytes = _buffer_bytes(tensor, memory_config)
        buf = Buffer(data, self, memory_config, nbytes, owner=self.capturing)
        if memory_config.buffer_type is BufferType.DRAM:
            self.dram_bytes += nbytes
        return buf

    def free(self, buf: Buffer) -> None:
        if not buf.freed and buf.memory_config.buffer_type is BufferType.DRAM:
            self.dram_bytes -= buf.nbytes
        buf.freed = True

    def upload(self, host: Tensor, memory_config: MemoryConfig, cq_id=None) -> Tensor:
        """A host tensor's pieces onto the chips (a single host tensor goes to every chip)."""
        self._refuse_in_capture("writing a host tensor to the device")
        pieces = host._host
        if host._mesh_shape is not None and tuple(host._mesh_shape) != self.shape_tuple:
            raise RuntimeError(f"a host tensor mapped for a {host._mesh_shape[0]}x{host._mesh_shape[1]} mesh cannot go to {self}")
        out = Tensor._make(host.shape, host.dtype, host.layout)
        out._buffer = self.allocate(pieces, out, memory_config)
        out._buffer.shared = True  # host arrays are never written: ops replace buffers, in-place writers copy first
        self.queues.enqueue("to_device", queue_of(cq_id), writes=[out._buffer], program=False)
        return out

    def read(self, t: Tensor, cq_id=None, blocking: bool = True) -> np.ndarray:
        self._refuse_in_capture("reading a tensor back from the device")
        cq = queue_of(cq_id)
        self.queues.enqueue("from_device", cq, reads=[t._buffer], program=False)
        if blocking:
            self.queues.host_drained(cq)
        data = t._buffer.data
        chip = getattr(t, "_chip", None)
        if chip is not None:
            return np.array(data[chip[0] % data.shape[0], chip[1] % data.shape[1]][None, None])
        return np.array(data)

    def write(self, host: Tensor, target: Tensor, cq_id=None) -> None:
        """``copy_host_to_device_tensor``: the host pieces into the target's existing buffer."""
        self._refuse_in_capture("copy_host_to_device_tensor")
        buf = target.live_buffer()
        self.queues.enqueue("copy_host_to_device_tensor", queue_of(cq_id), writes=[buf], program=False)
        if (host.shape, host.dtype, host.layout) != (target.shape, target.dtype, target.layout):
            raise RuntimeError(f"TT_FATAL copy_host_to_device_tensor: host {list(host.shape)} {host.dtype} {host.layout} does not "
                               f"match the device tensor {list(target.shape)} {target.dtype} {target.layout}")
        buf.data, buf.shared = host._host, True

    # ------------------------------------------------------------------ ops and traces
    def launch(self, op: str, inputs, outputs, kernel, attrs=(), writes=()) -> None:
        """Check, count the program, then run ``kernel`` now or record it into the trace being captured.
        ``writes``: inputs the op writes in place (its outputs it writes anyway)."""
        self._check_open()
        buffers = []
        for t in inputs:
            buf = t.live_buffer()
            if buf.device is not self:
                raise RuntimeError(f"{op}: an input lives on {buf.device}, not on {self}")
            buffers.append(buf)
        written = [t._buffer for t in list(outputs) + list(writes)]
        self.queues.enqueue(op, queue_of(None), reads=[b for b in buffers if all(b is not w for w in written)], writes=written)
        specs = tuple((tuple(t.padded_shape), t.dtype, t.layout, t.memory_config().kind) for t in list(inputs) + list(outputs))
        self.programs.add((op, specs, attrs))
        if self.capturing is not None:
            self.traces[self.capturing].ops.append((op, buffers, kernel))
        else:
            kernel()

    def begin_trace_capture(self, cq_id: int = 0) -> int:
        self._check_open()
        if self.capturing is not None:
            raise TraceError("begin_trace_capture: a trace is already being captured")
        if self.trace_region_size <= 0:
            raise TraceError("begin_trace_capture: the mesh was opened without a trace region (trace_region_size=0)")
        tid = self._next_trace
        self._next_trace += 1
        self.traces[tid] = _Trace([])
        self.capturing = tid
        return tid

    def end_trace_capture(self, trace_id: int, cq_id: int = 0) -> None:
        if self.capturing != trace_id:
            raise TraceError(f"end_trace_capture: trace {trace_id} is not being captured")
        self.traces[trace_id].done = True
        self.capturing = None

    def execute_trace(self, trace_id: int, cq_id: int = 0, blocking: bool = True) -> None:
        self._check_open()
        trace = self.traces.get(trace_id)
        if trace is None or not trace.done:
            raise TraceError(f"execute_trace: no captured trace {trace_id}")
        touched = list({id(b): b for _, buffers, _ in trace.ops for b in buffers}.values())
        self.queues.enqueue("execute_trace", queue_of(cq_id), writes=touched)   # a replay may write any buffer it names
        if blocking:
            self.queues.host_drained(queue_of(cq_id))
        if self.capturing is not None:
            raise TraceError("execute_trace during a capture")
        for op, buffers, kernel in trace.ops:
            for buf in buffers:
                if buf.freed and buf.owner != trace_id:
                    raise TraceError(f"execute_trace: {op} reads a buffer that was deallocated outside the trace")
            kernel()

    def release_trace(self, trace_id: int) -> None:
        if self.traces.pop(trace_id, None) is None:
            raise TraceError(f"release_trace: no trace {trace_id}")

    def _refuse_in_capture(self, what: str) -> None:
        self._check_open()
        if self.capturing is not None:
            raise TraceError(f"TT_FATAL: {what} is not allowed while a trace is being captured")

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"{self} was closed")


def _buffer_bytes(t: Tensor, memory_config: MemoryConfig) -> int:
    """Per-chip bytes the allocator reserves: interleaved pages round-robin over the banks; a
    sharded buffer, every core (bank) its whole shard of pages."""
    pages, page = t.buffer_num_pages(), t.buffer_aligned_page_size()
    if memory_config.is_sharded() and memory_config.shard_spec is not None:
        height, width = memory_config.shard_spec.shape
        tile = t.layout is Layout.TILE
        per_shard = -(-height // TILE) * -(-width // TILE) if tile else height
        return per_shard * memory_config.shard_spec.num_cores() * page
    banks = DRAM_BANKS if memory_config.buffer_type is BufferType.DRAM else 64
    return -(-pages // banks) * banks * page


def open_mesh_device(mesh_shape=None, **kwargs) -> MeshDevice:
    unknown = set(kwargs) - _OPEN_ARGS
    if unknown:
        raise TypeError(f"open_mesh_device: argument(s) {', '.join(sorted(unknown))} are not modeled by the emulator")
    shape = mesh_shape or kwargs.get("mesh_shape")
    chips = int(shape[0]) * int(shape[1])
    if chips > get_num_devices():
        raise RuntimeError(f"TT_FATAL open_mesh_device: a {shape[0]}x{shape[1]} mesh needs {chips} chips, the emulator has "
                           f"{get_num_devices()} (ttdist.mesh.ttnn_emu.settings.num_devices)")
    dispatch = kwargs.get("dispatch_core_config")
    if dispatch is not None and not isinstance(dispatch, DispatchCoreConfig):
        raise TypeError("open_mesh_device: dispatch_core_config must be a ttnn.DispatchCoreConfig")
    return MeshDevice(shape, trace_region_size=int(kwargs.get("trace_region_size", 0)), dispatch=dispatch,
                      num_command_queues=int(kwargs.get("num_command_queues", 1)))


def close_mesh_device(device: MeshDevice) -> None:
    device.closed = True


def synchronize_device(device: MeshDevice, cq_id=None, sub_device_ids=()) -> None:
    device._check_open()
    device.queues.host_drained(None if cq_id is None else int(cq_id))


@dataclass(frozen=True)
class MemoryView:
    num_banks: int
    total_bytes_per_bank: int
    total_bytes_allocated_per_bank: int
    total_bytes_free_per_bank: int
    largest_contiguous_bytes_free_per_bank: int


def get_memory_view(device: MeshDevice, buffer_type: BufferType) -> MemoryView:
    if buffer_type is not BufferType.DRAM:
        raise NotImplementedError("get_memory_view: the emulator counts DRAM only")
    per_bank = DRAM_BYTES // DRAM_BANKS
    used = device.dram_bytes // DRAM_BANKS
    return MemoryView(DRAM_BANKS, per_bank, used, per_bank - used, per_bank - used)


def begin_trace_capture(device: MeshDevice, cq_id: int = 0) -> int:
    return device.begin_trace_capture(cq_id)


def end_trace_capture(device: MeshDevice, trace_id: int, cq_id: int = 0) -> None:
    device.end_trace_capture(trace_id, cq_id)


def execute_trace(device: MeshDevice, trace_id: int, cq_id: int = 0, blocking: bool = True) -> None:
    device.execute_trace(trace_id, cq_id, blocking)


def release_trace(device: MeshDevice, trace_id: int) -> None:
    device.release_trace(trace_id)


def copy_host_to_device_tensor(host: Tensor, device_tensor: Tensor, cq_id=None) -> None:
    host._check_alive()
    if host._buffer is not None:
        raise RuntimeError("copy_host_to_device_tensor: the source must be a host tensor")
    device_tensor.live_buffer().device.write(host, device_tensor, cq_id)


def to_device(tensor: Tensor, device: MeshDevice, memory_config: MemoryConfig | None = None, cq_id=None, queue_id=None) -> Tensor:
    return tensor.to(device, memory_config, queue_id if queue_id is not None else cq_id)


def from_device(tensor: Tensor, blocking: bool = True, cq_id=None, queue_id=None) -> Tensor:
    return tensor.cpu(blocking, queue_id if queue_id is not None else cq_id)


def deallocate(tensor: Tensor, force: bool = True) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"deallocate: expected a ttnn.Tensor, got {type(tensor).__name__}")
    tensor.deallocate(force)
