"""Hosts follow the replicas: Ray's own autoscaler adds a node with ``tt_chips`` for a replica
the pool needs, and removes it after its idle timeout once the pool has scaled back down.

Ray's fake multi-node provider runs the real autoscaler on this machine
(``tests/support/autoscaling_cluster``): the head has no ``tt_chips``; a ``tt_host`` node type
has 2, min 0, max 1 workers. The pool (scripted replicas needing 2 ``tt_chips`` each,
``min_replicas: 0``) starts empty; a request makes it scale to one replica, which only a new
``tt_host`` node can hold.
"""

from __future__ import annotations

import pytest
import ray

from tests.support.autoscaling_cluster import autoscaling_cluster
from tests.support.cluster import SCRIPTED, running_cluster
from tests.support.generation import greedy, run, stub_for
from tests.support.scripted import expected_tokens
from tests.support.waiting import wait_for
from ttdist.runtime.autoscale.config import AutoscaleConfig
from ttdist.runtime.config import ClusterConfig, HealthConfig, ReplicaGroup

pytestmark = pytest.mark.slow

TT_HOST = {"tt_host": {"resources": {"CPU": 2, "tt_chips": 2}, "node_config": {}, "min_workers": 0, "max_workers": 1}}


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n["Alive"]]


def test_a_replica_that_needs_chips_makes_ray_add_a_node_and_the_idle_node_goes_away():
    config = ClusterConfig(
        engine="scripted", scripted=SCRIPTED, groups=(ReplicaGroup(mesh="1x2", resources={"tt_chips": 2}),),
        port=0, dashboard_port=None, health=HealthConfig(heartbeat_s=0.25),
        autoscale=AutoscaleConfig(min_replicas=0, max_replicas=1, target=4, upscale_delay_s=1, downscale_delay_s=2),
    )
    with autoscaling_cluster({"CPU": 2}, TT_HOST, idle_timeout_minutes=0.1) as address:
        try:
            with running_cluster(config, address=address) as deployment:
                assert len(alive_nodes()) == 1 and "tt_chips" not in ray.cluster_resources()
                channel, stub = stub_for(deployment.address)
                ids, complete = run(stub, greedy([5, 6, 7], 12), timeout=300)   # waits while Ray adds a node
                assert ids == expected_tokens([5, 6, 7], 12)
                nodes = alive_nodes()
                assert len(nodes) == 2 and ray.cluster_resources()["tt_chips"] == 2
                replica = deployment.snapshot().replicas[0]
                head = next(n for n in nodes if n["Resources"].get("tt_chips", 0) == 0)
                assert replica.node_id != head["NodeID"]         # it runs on the node Ray added
                cold = [e for e in deployment.snapshot().events if e.kind == "cold_start"]
                assert len(cold) == 1 and "placement" in cold[0].message
                wait_for(lambda: deployment.snapshot().replicas == [], 120, "the pool back to no replica")
                wait_for(lambda: len(alive_nodes()) == 1, 180, "Ray to remove the idle tt_host node")
                channel.close()
        finally:
            ray.shutdown()
