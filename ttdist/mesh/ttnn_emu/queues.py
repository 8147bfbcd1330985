"""Command queues and events on emulated chips (tt-metal's "Multiple CQs").

A mesh opened with ``num_command_queues=2`` has queues 0 and 1. An op runs on the queue its
``queue_id=`` (or ``cq_id=``) names, else the thread's current queue (``ttnn.command_queue(n)``,
0 by default); host transfers take ``cq_id``. On chips the two queues run concurrently: nothing
orders an op on queue 1 against one on queue 0 except events. ``record_event(device, cq)``
completes when every command queue ``cq`` was given before it has; ``wait_for_event(cq, event)``
makes queue ``cq`` wait for it; ``event_synchronize(event)`` makes the host wait. A blocking read
on a queue (``cpu()``, ``from_device``) and ``synchronize_device`` also tell the host that the
queue's commands so far are done, so what the host enqueues afterwards comes after them.

The emulator runs every op at once, in program order. That gives ttnn's results for a program
in which every pair of ops on different queues that touch the same buffer (one of them writing)
is ordered by events or by the host: any order the chips may pick then computes the same. So
each buffer remembers, per queue, the last op that wrote it and the last that read it, and an
op whose access is not ordered after such an op of another queue raises ``QueueRaceError``
(vector clocks: each queue knows how far into every other queue it is ordered). A queue id the
mesh was not opened with is a TT_FATAL, as on chips, and so is a program (an op; transfers are
not programs) on a queue other than the one that ran the last program, unless that queue is
ordered after it: ttnn's "Sub device id 0 currently in use by cq 0. Can't enqueue program from
cq 1. Finish or wait for an event to transfer ownership."
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass


class QueueRaceError(RuntimeError):
    """Ops on two command queues touch one buffer (one writes) and no event orders them."""


class QueueId(int):
    """``ttnn.QueueId(n)``: a command queue's id."""

    def __repr__(self) -> str:
        return f"QueueId({int(self)})"


_local = threading.local()


def get_current_command_queue_id_for_thread() -> QueueId:
    stack = getattr(_local, "stack", None)
    return QueueId(stack[-1] if stack else 0)


@contextmanager
def command_queue(cq_id: int):
    """Ops in this block run on queue ``cq_id`` unless they name their own."""
    if cq_id is None:
        raise ValueError("cq_id cannot be None in command_queue context")
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(int(cq_id))
    try:
        yield
    finally:
        stack.pop()


def queue_of(cq_id) -> int:
    """The queue an op runs on: the one it names, else the thread's current one."""
    return int(cq_id) if cq_id is not None else int(get_current_command_queue_id_for_thread())


def on_queue(fn):
    """``fn`` (an op) taking ttnn's ``queue_id=`` / ``cq_id=`` keyword: run on that queue."""
    def op(*args, **kwargs):
        cq = kwargs.pop("queue_id", None)
        cq = kwargs.pop("cq_id", cq)
        if cq is None:
            return fn(*args, **kwargs)
        with command_queue(cq):
            return fn(*args, **kwargs)

    op.__name__, op.__qualname__, op.__doc__, op.__wrapped__ = fn.__name__, fn.__qualname__, fn.__doc__, fn
    return op


@dataclass(frozen=True)
class MeshEvent:
    """Completes when queue ``cq`` has run everything it was given before it; ``clock[q]``: how
    many ops of queue q that takes."""

    device: object
    cq: int
    clock: tuple[int, ...]


class Queues:
    """One mesh's command queues: ops given to each and how far each is ordered after the others."""

    def __init__(self, count: int) -> None:
        if count not in (1, 2):
            raise RuntimeError(f"TT_FATAL open_mesh_device: num_command_queues must be 1 or 2, got {count}")
        self.count = count
        self.given = [0] * count                                  # ops enqueued per queue
        self.after = [[0] * count for _ in range(count)]         # after[q][p]: queue q runs after p's first n ops
        self.host = [0] * count                                   # what the host has seen complete
        self.owner: tuple[int, int] | None = None                 # (queue, op index) of the last program

    def check(self, op: str, cq: int) -> int:
        if not 0 <= cq < self.count:
            raise RuntimeError(f"TT_FATAL {op}: command queue {cq} does not exist: the mesh was opened with "
                               f"num_command_queues={self.count}")
        return cq

    def enqueue(self, op: str, cq: int, reads=(), writes=(), program: bool = True) -> None:
        """Op ``op`` on queue ``cq`` reading and writing these buffers: raise on an unordered access
        (``program``: an op, which needs the sub-device; False: a host transfer)."""
        self.check(op, cq)
        mine = self.after[cq]
        for p in range(self.count):
            mine[p] = max(mine[p], self.host[p])
        if program and self.owner is not None and self.owner[0] != cq and mine[self.owner[0]] < self.owner[1]:
            raise RuntimeError(f"TT_FATAL {op}: Sub device id 0 currently in use by cq {self.owner[0]}. Can't enqueue program "
                               f"from cq {cq}. Finish or wait for an event to transfer ownership.")
        self.given[cq] += 1
        n = mine[cq] = self.given[cq]
        if program:
            self.owner = (cq, n)
        if self.count == 1:
            return
        for buf, write in [(b, False) for b in reads] + [(b, True) for b in writes]:
            last = buf.queues
            for (p, kind), (m, other) in last.items():
                if p != cq and (write or kind == "w") and mine[p] < m:
                    what = "writes" if kind == "w" else "reads"
                    raise QueueRaceError(
                        f"{op} on command queue {cq} {'writes' if write else 'reads'} a buffer that {other} on command queue "
                        f"{p} {what}, and no event orders them: ttnn.record_event on queue {p} then ttnn.wait_for_event "
                        f"on queue {cq} (or a host sync) before it")
            last[(cq, "w" if write else "r")] = (n, op)

    def record(self, device, cq: int) -> MeshEvent:
        self.check("record_event", cq)
        return MeshEvent(device, cq, tuple(self.after[cq]))

    def wait(self, cq: int, event: MeshEvent) -> None:
        self.check("wait_for_event", cq)
        self.after[cq] = [max(a, b) for a, b in zip(self.after[cq], event.clock)]

    def host_saw(self, clock) -> None:
        self.host = [max(a, b) for a, b in zip(self.host, clock)]

    def host_drained(self, cq: int | None = None) -> None:
        """The host waited for queue ``cq`` (every queue when None)."""
        for q in range(self.count) if cq is None else (self.check("synchronize_device", cq),):
            self.host_saw(self.after[q])


def record_event(mesh_device, cq_id=None, sub_device_ids=(), device_range=None) -> MeshEvent:
    return mesh_device.queues.record(mesh_device, queue_of(cq_id))


def wait_for_event(cq_id, mesh_event: MeshEvent) -> None:
    if not isinstance(mesh_event, MeshEvent):
        raise TypeError(f"wait_for_event: expected a ttnn.MeshEvent, got {type(mesh_event).__name__}")
    mesh_event.device.queues.wait(queue_of(cq_id), mesh_event)


def event_synchronize(mesh_event: MeshEvent) -> None:
    mesh_event.device.queues.host_saw(mesh_event.clock)
