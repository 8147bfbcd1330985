"""A restarted coordinator adopts an autoscaled pool's replicas from their heartbeats: the same
processes, no scaling decision in between, and new replicas get ids never used before; with two
models, the autoscaled one's replicas go back to its pool and the fixed one's keep their ids."""

from __future__ import annotations

import os
import signal

import pytest
import ray

from tests.support.cluster import SCRIPTED, Streams, actor_pid, running_cluster
from tests.support.generation import stub_for
from tests.support.waiting import wait_for
from ttdist.runtime.autoscale.config import AutoscaleConfig
from ttdist.runtime.config import ClusterConfig, HealthConfig, ModelConfig, ReplicaGroup

pytestmark = pytest.mark.slow

PROMPTS = [[40 + 3 * i + j for j in range(4)] for i in range(8)]


def pool(deployment) -> dict:
    try:
        return {r.replica_id: r for r in ray.get(deployment.coordinator.replicas.remote(), timeout=60)}
    except ray.exceptions.ActorUnavailableError:    # being restarted by Ray
        return {}


def kinds(deployment) -> list[str]:
    return [e.kind for e in ray.get(deployment.coordinator.snapshot.remote(), timeout=60).events]


def test_a_restarted_coordinator_adopts_the_pool_and_keeps_scaling():
    config = ClusterConfig(
        engine="scripted", scripted=SCRIPTED, groups=(ReplicaGroup(mesh="1x1"),), port=0, dashboard_port=None,
        health=HealthConfig(heartbeat_s=0.25, unhealthy_after_s=2.0),
        autoscale=AutoscaleConfig(min_replicas=1, max_replicas=3, initial_replicas=2, target=2,
                                  upscale_delay_s=0.5, downscale_delay_s=600),
    )
    with running_cluster(config) as deployment:
        before = wait_for(lambda: (p := pool(deployment)) and len(p) == 2 and all(r.state == "ready" for r in p.values())
                          and p, 120, "the initial 2 replicas ready")
        old = actor_pid(deployment.coordinator)
        os.kill(old, signal.SIGKILL)
        after = wait_for(lambda: (p := pool(deployment)) and all(r.state == "ready" for r in p.values()) and len(p) == 2
                         and p, 120, "both replicas adopted")
        assert actor_pid(deployment.coordinator) != old
        assert {r: v.pid for r, v in after.items()} == {r: v.pid for r, v in before.items()}
        events = kinds(deployment)
        assert events.count("replica_reregistered") == 2 and "scaled_up" not in events and "scaled_down" not in events

        channel, stub = stub_for(deployment.address)
        streams = Streams(stub, PROMPTS, 300)      # 8 ongoing: 4 wanted, max 3
        wait_for(lambda: "replica-2" in pool(deployment), 60, "a third replica, with a new id")
        streams.assert_exact()
        channel.close()


def test_a_restarted_coordinator_gives_each_model_its_own_replicas_back():
    scale = AutoscaleConfig(min_replicas=1, max_replicas=3, initial_replicas=2, target=50, upscale_delay_s=600,
                            downscale_delay_s=600)
    config = ClusterConfig(
        engine="scripted", scripted=SCRIPTED, port=0, dashboard_port=None,
        health=HealthConfig(heartbeat_s=0.25, unhealthy_after_s=2.0),
        models=(ModelConfig(name="auto", autoscale=scale), ModelConfig(name="fixed")),
    )
    want = {"replica-0": "auto", "replica-1": "auto", "replica-2": "fixed"}
    with running_cluster(config) as deployment:
        before = wait_for(lambda: (p := pool(deployment)) and len(p) == 3 and all(r.state == "ready" for r in p.values())
                          and p, 120, "the 3 replicas ready")
        assert {r: v.model for r, v in before.items()} == want
        old = actor_pid(deployment.coordinator)
        os.kill(old, signal.SIGKILL)
        after = wait_for(lambda: (p := pool(deployment)) and len(p) == 3 and all(r.state == "ready" for r in p.values())
                         and p, 120, "every replica back")
        assert {r: (v.model, v.pid) for r, v in after.items()} == {r: (want[r], v.pid) for r, v in before.items()}
