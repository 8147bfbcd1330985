"""What status shows of an autoscaled pool: its bounds, its size, its decisions and cold starts
(plain data the routing table carries to the routers and ``ttdist status``)."""

from __future__ import annotations

from dataclasses import dataclass

from ttdist.runtime.autoscale.cold_start import ColdStart
from ttdist.v1 import generation_pb2 as pb


@dataclass(frozen=True)
class ScaleRecord:
    time: float          # unix seconds
    previous: int
    replicas: int
    reason: str


@dataclass(frozen=True)
class PoolStatus:
    """A pool's autoscaling as status shows it."""

    min_replicas: int
    max_replicas: int
    signal: str
    target: float
    replicas: int                 # in the pool now (ready, starting or restarting)
    scale_ups_total: int = 0
    scale_downs_total: int = 0
    decisions: tuple[ScaleRecord, ...] = ()      # the last ones, oldest first
    cold_starts: tuple[ColdStart, ...] = ()      # of the replicas it started, oldest first

    def to_proto(self, model: str = "") -> pb.AutoscaleStatus:
        """As ``ClusterStatus.autoscale`` carries it: ``model`` names the served model whose pool it is."""
        return pb.AutoscaleStatus(
            model=model,
            min_replicas=self.min_replicas, max_replicas=self.max_replicas, signal=self.signal, target=self.target,
            replicas=self.replicas, scale_ups_total=self.scale_ups_total, scale_downs_total=self.scale_downs_total,
            decisions=[pb.ScaleDecision(time=d.time, previous=d.previous, replicas=d.replicas, reason=d.reason)
                       for d in self.decisions],
        )

    @property
    def starts_on_demand(self) -> bool:
        """The pool may be empty: a request then waits while a replica starts."""
        return self.min_replicas == 0
