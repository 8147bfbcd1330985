"""Where a new replica's time went, from the decision that asked for it to it serving.

Phases, each measured where it happens:

- ``placement``: the decision until Ray runs the actor's worker process on a node (waiting for
  free ``tt_chips``, or for Ray's autoscaler to add a node, is spent here);
- ``process_start``: that worker process starting and constructing the replica actor (only
  the construction when Ray hands it a worker it had pre-started: ``prestarted``);
- ``weight_load``: the converted-weight cache read (node-locally when the node has it,
  through the Ray object store otherwise) and placed on the mesh;
- ``kv_sizing``: the KV cache sized from the backend's DRAM ledger and allocated;
- ``engine_start``: the rest of the replica's start (the engine process booting, its
  gRPC server, its first stats);
- ``registration``: the coordinator taking it into the routing table.

``warm-up`` (the first request's extra time on a fresh replica) is what ``bench_cold_start``
measures on top: replicas do not run a request of their own before they serve.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ttdist.model.kv_budget import LoadTimes


@dataclass(frozen=True)
class Placed:
    """What a replica actor says when asked where it runs: its node, when its worker process
    started and when the actor was constructed (unix seconds)."""

    node_id: str
    process_started: float
    constructed: float


def process_start_time(pid: int | None = None) -> float:
    """When process ``pid`` (this one by default) started, unix seconds (from /proc)."""
    pid = os.getpid() if pid is None else pid
    with open(f"/proc/{pid}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ColdStart:
    replica_id: str
    placement_s: float
    process_start_s: float
    weight_load_s: float
    kv_sizing_s: float
    engine_start_s: float
    registration_s: float
    weights_via: str = ""      # "cache" (node-local) or "object_store"
    decided: float = 0.0       # unix seconds of the decision that asked for it (serving at decided + total_s)
    prestarted: bool = False   # its worker process was up before the decision (one Ray had pre-started)

    @property
    def total_s(self) -> float:
        return (self.placement_s + self.process_start_s + self.weight_load_s + self.kv_sizing_s
                + self.engine_start_s + self.registration_s)

    def describe(self) -> str:
        via = f" ({self.weights_via})" if self.weights_via else ""
        worker = " (a pre-started worker)" if self.prestarted else ""
        return (f"serving {self.total_s:.2f} s after the decision: placement {self.placement_s:.2f} s, process start{worker} "
                f"{self.process_start_s:.2f} s, weight load{via} {self.weight_load_s:.2f} s, KV sizing "
                f"{self.kv_sizing_s:.2f} s, engine start {self.engine_start_s:.2f} s, registration {self.registration_s:.2f} s")


def cold_start(replica_id: str, decided: float, placed: Placed, start_s: float, load: LoadTimes | None,
               serving: float, weights_via: str = "") -> ColdStart:
    """The phases of one start: ``decided`` and ``serving`` are unix seconds on the coordinator,
    ``start_s`` how long the replica's ``start`` took, ``load`` its engine's ``LoadTimes``."""
    launched = max(decided, min(placed.process_started, placed.constructed))   # a pre-started worker: placed at once
    placement = max(0.0, launched - decided)
    process = max(0.0, placed.constructed - launched)
    weights, kv = (load.weight_load_s, load.kv_sizing_s) if load else (0.0, 0.0)
    engine = max(0.0, start_s - weights - kv)
    registration = max(0.0, serving - decided - placement - process - start_s)
    return ColdStart(replica_id, placement, process, weights, kv, engine, registration, weights_via, decided,
                     prestarted=placed.process_started < decided)
