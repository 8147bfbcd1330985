"""One replica pool's autoscaling as the coordinator runs it (plain Python, clock passed in).

``PoolScaler`` takes the pool's heartbeats (``observe``) and, at each monitor tick, the
pool's registry records (one pool per model: its own records only) and the requests the routers hold for want of a replica (``tick``); it returns the
``Decision`` to carry out, if any, keeps the last decisions and cold starts, and says which
replicas to drain on a scale-down (``victims``: the least loaded, the newest first on a tie,
never one still starting). ``status`` is what the routing table, ``ttdist status`` and the
dashboard show of the pool.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable

from ttdist.dashboard.replica_state import ReplicaState
from ttdist.runtime.autoscale.cold_start import ColdStart
from ttdist.runtime.autoscale.config import SLO_SIGNALS, AutoscaleConfig
from ttdist.runtime.autoscale.decision import Autoscaler, Decision, PoolLoad
from ttdist.runtime.autoscale.signals import LatencyWindow, pool_load
from ttdist.runtime.autoscale.status import PoolStatus, ScaleRecord
from ttdist.runtime.registry import Heartbeat, ReplicaRecord

KEPT = 20   # decisions and cold starts kept for status


class PoolScaler:
    def __init__(self, config: AutoscaleConfig) -> None:
        self.config = config
        self.autoscaler = Autoscaler(config)
        self.latency = LatencyWindow(config.signal, config.slo_window_s) if config.signal in SLO_SIGNALS else None
        self.decisions: deque[ScaleRecord] = deque(maxlen=KEPT)
        self.cold_starts: deque[ColdStart] = deque(maxlen=KEPT)
        self.ups = self.downs = 0
        self.last_load = PoolLoad(replicas=0)

    def observe(self, replica_id: str, beat: Heartbeat, now: float) -> None:
        if self.latency is not None:
            self.latency.add(replica_id, beat, now)

    def tick(self, records: Iterable[ReplicaRecord], waiting_for_replica: int, now: float, wall: float,
             may_serve: Callable[[ReplicaRecord], bool] = lambda r: True) -> Decision | None:
        """The decision at ``now`` (``wall``: unix seconds, for its record) from the pool's ``records``."""
        self.last_load = pool_load(self.config, records, waiting_for_replica, self.latency, may_serve)
        decision = self.autoscaler.step(self.last_load, now)
        if decision is not None:
            self.decisions.append(ScaleRecord(wall, decision.previous, decision.replicas, decision.reason))
            if decision.up:
                self.ups += 1
            else:
                self.downs += 1
        return decision

    @staticmethod
    def victims(records: Iterable[ReplicaRecord], count: int) -> list[str]:
        """The ``count`` replicas to drain away: failed ones first, then the least loaded ready ones
        (the newest first on a tie: the oldest keep their warm prefix caches)."""
        def load(r) -> tuple:
            if r.state == ReplicaState.FAILED:
                return (0, 0, 0)
            s = r.stats
            return (1, (s.running + s.waiting) if s else 0, -_number(r.replica_id))

        candidates = [r for r in records
                      if r.state in (ReplicaState.READY, ReplicaState.UNHEALTHY, ReplicaState.FAILED)]
        return [r.replica_id for r in sorted(candidates, key=load)[:count]]

    def status(self) -> PoolStatus:
        c = self.config
        return PoolStatus(c.min_replicas, c.max_replicas, c.signal, c.target, self.last_load.replicas,
                          self.ups, self.downs, tuple(self.decisions), tuple(self.cold_starts))


def _number(replica_id: str) -> int:
    tail = replica_id.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0
