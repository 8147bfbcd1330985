"""The coordinator's autoscaling: carrying out each autoscaled model's pool decisions.

Mixed into ``Coordinator`` (it uses the coordinator's registry, actors and launch). Each model
with ``autoscale`` has its own ``PoolScaler`` (``scalers``, by served name) over that model's
replica records only; its pool starts at its initial count. At each monitor tick
``_autoscale(model)`` asks that model's scaler for a decision from its replicas' heartbeats and
the requests that model's routers hold for want of a replica, and records it as an event with
its reason and the model (``scaled_up`` / ``scaled_down``). A scale-up adds replicas of that
model (new ids, never reused) started like any other, from the converted-weight cache, each
one's ``ColdStart`` recorded (event ``cold_start``); a scale-down drains the model's least
loaded replicas away (``drain_replica`` without restart: no stream is cut). With resources
(``tt_chips``) on a pool's group it tells Ray's autoscaler the chips every autoscaled pool
needs now (``request_resources``: one request for all of them, as each call replaces the
last), so Ray adds a node of a type that has them and lets it go after its idle timeout once
the pools shrink. After a coordinator restart the pools' replicas are adopted from their
heartbeats (``_adopt``), each into the model it serves.
"""

from __future__ import annotations

import asyncio
import time

import ray

from ttdist.dashboard.events import EventKind
from ttdist.dashboard.replica_state import ReplicaState
from ttdist.dashboard.status import AutoscaleSnapshot
from ttdist.runtime.registry import one_line


class AutoscalingMixin:
    async def _autoscale(self, model: str) -> None:
        """Decide ``model``'s pool from its replicas' heartbeats and its requests waiting for a replica; carry it out."""
        scaler = self.scalers[model]
        waiting = sum(r.waiting_for_replica for (_, m), r in self._reports.items() if m == model)
        records = [r for r in self.registry.replicas.values() if r.model == model]
        decision = scaler.tick(records, waiting, time.monotonic(), time.time(), self.registry.may_serve)
        if decision is None:
            return
        kind = EventKind.SCALED_UP if decision.up else EventKind.SCALED_DOWN
        self.registry.event(kind, "", decision.reason, model=model)
        self._wanted[model] = decision.replicas
        await self._ask_ray()
        loop, decided = asyncio.get_running_loop(), time.time()
        if decision.up:
            for _ in range(decision.replicas - decision.previous):
                loop.create_task(self._launch(self._add_replica(model, 0), decided=decided))
            return
        for rid in scaler.victims(records, decision.previous - decision.replicas):
            task = loop.create_task(self._scale_away(rid, scaler.config.drain_timeout_s))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)

    async def _adopt(self, rid: str, beat) -> None:
        """After a coordinator restart: take in pool replica ``rid`` (it heartbeats; it is found by
        name) into the autoscaled model it serves. Never in a coordinator that was not restarted:
        a replica it drained away may heartbeat once more."""
        from ttdist.runtime.replica import NAMESPACE, replica_actor_name

        if not beat.address:   # not serving yet: it re-registers from a later heartbeat
            return
        try:
            actor = await asyncio.to_thread(ray.get_actor, replica_actor_name(rid), namespace=NAMESPACE)
            model = await asyncio.wait_for(actor.served_model.remote(), 5.0)
        except (ValueError, asyncio.TimeoutError, ray.exceptions.RayError):
            return
        if rid not in self.registry.replicas and model in self.scalers:
            self._add_replica(model, 0, recovering=True, rid=rid)
            self._actors[rid] = actor

    async def _scale_away(self, rid: str, drain_timeout_s: float) -> None:
        """Remove ``rid``: drained (its streams finish) when it serves, at once when it failed."""
        if self.registry.replicas[rid].state == ReplicaState.FAILED:
            actor = self._actors.pop(rid, None)
            if actor is not None:
                ray.kill(actor, no_restart=True)
            self._forget(rid)
            self.registry.event(EventKind.REPLICA_DRAINED, rid, "removed (failed) on a scale-down")
            return
        await self.drain_replica(rid, drain_timeout_s, restart=False)

    async def _ask_ray(self) -> None:
        """Tell Ray's autoscaler the chips every autoscaled pool needs now (``request_resources``
        replaces the last request, so it names all pools: Ray adds nodes of a type that has them,
        and lets idle ones go once the request shrinks)."""
        asking = [(m, dict(self.models[m].config.groups[0].resources)) for m, s in self.scalers.items()
                  if s.config.request_resources and self.models[m].config.groups[0].resources]
        if not asking:
            return
        bundles = [r for m, r in asking for _ in range(self._wanted.get(m, self.scalers[m].config.start_replicas))]
        from ray.autoscaler.sdk import request_resources

        try:
            await asyncio.to_thread(request_resources, bundles=bundles)
        except Exception as err:  # noqa: BLE001 - a hint only: pending replicas still ask by themselves
            self.registry.event(EventKind.RESOURCE_REQUEST_FAILED, "", f"asking Ray for {len(bundles)} "
                                f"replica(s) of chips failed: {one_line(err)}")

    async def autoscale_status(self, model: str = ""):
        """``model``'s ``PoolStatus`` ("" = the first autoscaled model's; its decisions and the cold
        starts of the replicas it added), or None without one."""
        scaler = self.scalers.get(model) if model else next(iter(self.scalers.values()), None)
        return scaler.status() if scaler is not None else None

    def _autoscale_snapshot(self, model: str) -> AutoscaleSnapshot | None:
        scaler = self.scalers.get(model)
        if scaler is None:
            return None
        a = scaler.status()
        return AutoscaleSnapshot(a.min_replicas, a.max_replicas, a.signal, a.target, a.replicas,
                                 a.scale_ups_total, a.scale_downs_total)
