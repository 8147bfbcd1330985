"""Autoscaling per served model, without Ray: the coordinator's ``AutoscalingMixin`` over a real
registry holding two models' replicas, each model with its own ``PoolScaler`` and config.

Each model's decision reads only its own replicas and its own routers' waiting requests; its
scale events name it (so ``ttdist:cluster_events_total{model_name}`` counts them under it), its
new replicas join its pool, and the other model's scaler neither decides nor counts anything.
Only the actor start is replaced (a replica is marked started at once): Ray is not needed to
show which pool a decision is for.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from tests.support.registry import BEAT
from ttdist.runtime.autoscale.config import AutoscaleConfig
from ttdist.runtime.autoscale.pool import PoolScaler
from ttdist.runtime.config import HealthConfig, ModelConfig
from ttdist.runtime.coordinator_autoscale import AutoscalingMixin
from ttdist.runtime.registry import Registry, ReplicaRecord
from ttdist.runtime.routing_table import RouterReport
from ttdist.runtime.served_models import ServedModel

CONFIGS = {
    "alpha": AutoscaleConfig(min_replicas=1, max_replicas=4, signal="ongoing_requests", target=2, upscale_delay_s=0),
    "beta": AutoscaleConfig(min_replicas=1, max_replicas=3, signal="queue_depth", target=4, upscale_delay_s=0),
}


class TwoPools(AutoscalingMixin):
    """The coordinator's autoscaling state for two models; ``_launch`` marks a replica started."""

    def __init__(self) -> None:
        self.registry = Registry(HealthConfig())
        self.models = {name: ServedModel(ModelConfig(name=name, autoscale=c)) for name, c in CONFIGS.items()}
        self.scalers = {name: PoolScaler(c) for name, c in CONFIGS.items()}
        self._reports: dict[tuple[str, str], RouterReport] = {}
        self._wanted: dict[str, int] = {}
        self._draining: set = set()
        self._next = 0
        for name in CONFIGS:
            self._start(self._add_replica(name, 0))

    def _add_replica(self, model: str, gi: int, devices=(), recovering: bool = False, rid: str = "") -> str:
        rid = rid or f"replica-{self._next}"
        self._next += 1
        self.registry.add(ReplicaRecord(rid, gi, "1x1", "sim", model=model), time.monotonic())
        return rid

    def _start(self, rid: str) -> None:
        self.registry.started(rid, time.monotonic(), pid=1, node_id="n", address=f"{rid}:1", kv_pages_total=100)

    async def _launch(self, rid: str, decided: float | None = None) -> None:
        self._start(rid)

    def load(self, rid: str, running: int, waiting: int) -> None:
        self.registry.replicas[rid].stats = replace(BEAT, running=running, waiting=waiting)

    async def tick(self) -> None:
        for model in self.scalers:
            await self._autoscale(model)
        await asyncio.sleep(0)   # the scale-up launches run

    def pool(self, model: str) -> list[str]:
        return sorted(r.replica_id for r in self.registry.replicas.values() if r.model == model)


def test_two_models_with_different_autoscale_configs_decide_independently():
    async def scenario(pools: TwoPools) -> None:
        # alpha: 6 ongoing requests on its replica, target 2 per replica -> 3 replicas (not 4: the
        # 2 requests beta's router holds for want of a replica are beta's); beta: as many running,
        # 2 held, none queued, target queue_depth 4 -> stays at 1
        pools.load("replica-0", running=6, waiting=0)
        pools.load("replica-1", running=6, waiting=0)
        pools._reports[("router-0", "beta")] = RouterReport(model="beta", waiting_for_replica=2)
        await pools.tick()
        assert pools.pool("alpha") == ["replica-0", "replica-2", "replica-3"] and pools.pool("beta") == ["replica-1"]
        ups = [e for e in pools.registry.events if e.kind == "scaled_up"]
        assert [(e.model, e.message.endswith(": 1 -> 3")) for e in ups] == [("alpha", True)]
        assert pools.registry.event_counts[("alpha", "scaled_up")] == 1
        assert ("beta", "scaled_up") not in pools.registry.event_counts
        # now beta's queue grows (9 waiting: 3 replicas of queue_depth 4) while alpha's load stays
        # what its 3 replicas are sized for: only beta moves
        for rid in ("replica-2", "replica-3"):
            pools.load(rid, running=0, waiting=0)
        pools.load("replica-1", running=4, waiting=9)
        pools._reports[("router-0", "beta")] = RouterReport(model="beta", waiting_for_replica=0)
        await pools.tick()

    pools = TwoPools()
    asyncio.run(scenario(pools))
    assert pools.pool("beta") == ["replica-1", "replica-4", "replica-5"]
    alpha, beta = pools.scalers["alpha"].status(), pools.scalers["beta"].status()
    assert [(d.previous, d.replicas) for d in alpha.decisions] == [(1, 3)]   # no second decision for alpha
    assert [(d.previous, d.replicas) for d in beta.decisions] == [(1, 3)]
    assert "queue_depth" in beta.decisions[0].reason and "ongoing_requests" in alpha.decisions[0].reason
    assert (alpha.signal, beta.signal) == ("ongoing_requests", "queue_depth")
    assert [(e.kind, e.model) for e in pools.registry.events if e.kind.startswith("scaled")] == [
        ("scaled_up", "alpha"), ("scaled_up", "beta")]
    assert pools.scalers["alpha"].status().to_proto("alpha").model == "alpha"
