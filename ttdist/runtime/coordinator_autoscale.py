"""The coordinator's autoscaling: carrying out its replica pool's decisions.

Mixed into ``Coordinator`` (it uses the coordinator's registry, actors and launch). The pool
starts at its initial count; at each monitor tick ``_autoscale`` asks its ``PoolScaler`` for a
decision from the replicas' heartbeats and the requests the routers hold for want of a
replica, and records it as an event with its reason (``scaled_up`` / ``scaled_down``). A
scale-up adds replicas (new ids, never reused) started like any other, from the
converted-weight cache, each one's ``ColdStart`` recorded (event ``cold_start``); a scale-down
drains the least loaded replicas away (``drain_replica`` without restart: no stream is cut).
With resources (``tt_chips``) on the group it tells Ray's autoscaler the chips the pool needs
now (``request_resources``), so Ray adds a node of a type that has them and lets it go after
its idle timeout once the pool shrinks. After a coordinator restart the pool's replicas are
adopted from their heartbeats (``_adopt``).
"""

from __future__ import annotations

import asyncio
import time

import ray

from ttdist.dashboard.events import EventKind
from ttdist.dashboard.replica_state import ReplicaState
from ttdist.dashboard.status import AutoscaleSnapshot
from ttdist.runtime.autoscale.decision import Decision
from ttdist.runtime.registry import one_line


class AutoscalingMixin:
    async def _autoscale(self) -> None:
        """Decide from the replicas' heartbeats and the requests waiting for a replica; carry it out."""
        waiting = sum(r.waiting_for_replica for r in self._reports.values())
        decision = self.scaler.tick(self.registry.replicas.values(), waiting, time.monotonic(), time.time(),
                                    self.registry.may_serve)
        if decision is None:
            return
        self.registry.event(EventKind.SCALED_UP if decision.up else EventKind.SCALED_DOWN, "", decision.reason)
        await self._ask_ray(decision)
        loop, decided = asyncio.get_running_loop(), time.time()
        if decision.up:
            for _ in range(decision.replicas - decision.previous):
                loop.create_task(self._launch(self._add_replica(0), decided=decided))
            return
        for rid in self.scaler.victims(list(self.registry.replicas.values()), decision.previous - decision.replicas):
            task = loop.create_task(self._scale_away(rid))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)

    async def _adopt(self, rid: str, beat) -> None:
        """After a coordinator restart: take in pool replica ``rid`` (it heartbeats; it is found by name).
        Never in a coordinator that was not restarted: a replica it drained away may heartbeat once more."""
        from ttdist.runtime.replica import NAMESPACE, replica_actor_name

        if not beat.address:   # not serving yet: it re-registers from a later heartbeat
            return
        try:
            actor = await asyncio.to_thread(ray.get_actor, replica_actor_name(rid), namespace=NAMESPACE)
        except ValueError:
            return
        if rid not in self.registry.replicas:
            self._add_replica(0, recovering=True, rid=rid)
            self._actors[rid] = actor

    async def _scale_away(self, rid: str) -> None:
        """Remove ``rid``: drained (its streams finish) when it serves, at once when it failed."""
        if self.registry.replicas[rid].state == ReplicaState.FAILED:
            actor = self._actors.pop(rid, None)
            if actor is not None:
                ray.kill(actor, no_restart=True)
            self._forget(rid)
            self.registry.event(EventKind.REPLICA_DRAINED, rid, "removed (failed) on a scale-down")
            return
        await self.drain_replica(rid, self.config.autoscale.drain_timeout_s, restart=False)

    async def _ask_ray(self, decision: Decision) -> None:
        """Tell Ray's autoscaler the chips the pool needs now (``request_resources``: it adds nodes
        of a type that has them, and lets idle ones go once the request shrinks)."""
        resources = dict(self.config.groups[0].resources)
        if not (self.config.autoscale.request_resources and resources):
            return
        from ray.autoscaler.sdk import request_resources

        try:
            await asyncio.to_thread(request_resources, bundles=[resources] * decision.replicas)
        except Exception as err:  # noqa: BLE001 - a hint only: pending replicas still ask by themselves
            self.registry.event(EventKind.RESOURCE_REQUEST_FAILED, "", f"asking Ray for {resources} x "
                                f"{decision.replicas} failed: {one_line(err)}")

    async def autoscale_status(self):
        """The pool's ``PoolStatus`` (its decisions and the cold starts of the replicas it added), or None."""
        return self.scaler.status() if self.scaler is not None else None

    def _autoscale_snapshot(self) -> AutoscaleSnapshot | None:
        if self.scaler is None:
            return None
        a = self.scaler.status()
        return AutoscaleSnapshot(a.min_replicas, a.max_replicas, a.signal, a.target, a.replicas,
                                 a.scale_ups_total, a.scale_downs_total)
