"""Two Ray nodes (ray.cluster_utils.Cluster): replicas on both, weights shipped to the far one."""

from __future__ import annotations

import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from tests.support.cluster import running_cluster
from tests.support.generation import greedy, run, stub_for
from ttdist.runtime.config import ClusterConfig, ReplicaGroup
from ttdist.v1 import generation_pb2 as pb

pytestmark = pytest.mark.slow


def two_node_cluster() -> Cluster:
    """Ray gives a raylet a hard-coded 30 s to register; on a loaded 2-core CI box that can run out
    before anything of ours has started, so a timed-out start gets one more try (and no dashboard).
    A failed start leaves its processes behind (Ray drops the half-made node): they are children of
    this process that were not there before the attempt, and are killed by PID."""
    me = psutil.Process()
    for attempt in (1, 2):
        before = {p.pid for p in me.children(recursive=True)}
        cluster = Cluster()
        try:
            cluster.add_node(num_cpus=1, resources={"node_a": 1}, include_dashboard=False)
            cluster.add_node(num_cpus=1, resources={"node_b": 1})
            cluster.wait_for_nodes()
            return cluster
        except Exception as exc:  # noqa: BLE001 - ray raises a bare Exception for a slow raylet
            cluster.shutdown()
            for child in me.children(recursive=True):
                if child.pid not in before:
                    try:
                        child.kill()
                    except psutil.NoSuchProcess:
                        pass
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
    raise AssertionError("unreachable")


def test_two_nodes_serve_the_same_tokens(tiny_checkpoint, tmp_path):
    cluster = two_node_cluster()
    try:
        config = ClusterConfig(
            model=str(tiny_checkpoint), port=0, dashboard_port=None, max_kv_pages=32,
            weights_cache=str(tmp_path / "weights"),
            groups=(ReplicaGroup(resources={"node_a": 1}), ReplicaGroup(resources={"node_b": 1})),
        )
        with running_cluster(config, address=cluster.address) as deployment:
            records = {r.replica_id: r for r in ray.get(deployment.coordinator.replicas.remote())}
            assert records["replica-0"].node_id != records["replica-1"].node_id
            assert records["replica-0"].weights_via == "cache"
            assert records["replica-1"].weights_via == "object_store"
            channel, stub = stub_for(deployment.address)
            with channel:
                outputs = {}
                for _ in range(2):   # round robin: one request per node
                    ids, complete = run(stub, greedy([9, 8, 7, 6], 6))
                    outputs[complete.replica_id] = ids
                st = stub.GetClusterStatus(pb.ClusterStatusRequest())
        assert set(outputs) == {"replica-0", "replica-1"}
        assert outputs["replica-0"] == outputs["replica-1"] and len(outputs["replica-0"]) == 6
        assert len({r.node_id for r in st.replicas}) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
