"""``routers: 2`` on a real Ray cluster: two router actors serve one public port."""

from __future__ import annotations


import grpc
import pytest
import ray

from tests.support.cluster import running_cluster
from tests.support.scripted import expected_tokens
from tests.support.waiting import wait_for
from ttdist.runtime.config import ClusterConfig, ReplicaGroup
from ttdist.runtime.scripted_engine import ScriptedEngineConfig
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc

SCRIPTED = ScriptedEngineConfig(vocab_size=1000, step_s=0.01)


def fresh_stub(address):
    """A channel with a connection of its own (the kernel picks the router per connection)."""
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, pb_grpc.GenerationStub(channel)


def requests_served(router) -> int:
    """Requests the router actor took (its one model's router: the cluster serves one model)."""
    count = router.__ray_call__.remote(lambda self: self.router.default.router.report_snapshot().requests_total)
    return ray.get(count, timeout=30)


@pytest.fixture(scope="module")
def deployment():
    config = ClusterConfig(engine="scripted", scripted=SCRIPTED, groups=(ReplicaGroup(count=2, mesh="1x1"),),
                           port=0, dashboard_port=None, routers=2, policy="least_load")
    with running_cluster(config) as deployment:
        yield deployment


def test_both_routers_serve_the_one_port_and_status_adds_them_up(deployment):
    assert len(deployment.routers) == 2
    assert {ray.get(r.serving_port.remote()) for r in deployment.routers} == {deployment.port}
    for i in range(16):
        channel, stub = fresh_stub(deployment.address)
        ids = [t for r in stub.Generate(pb.GenerateRequest(
            token_ids=pb.TokenIds(ids=[3, i]), stream=True, sampling=pb.SamplingParams(max_tokens=4)), timeout=60)
            for t in (r.chunk.token_ids if r.WhichOneof("kind") == "chunk" else [])]
        assert ids == expected_tokens([3, i], 4)
        status = stub.GetClusterStatus(pb.ClusterStatusRequest(), timeout=30)
        assert [r.replica_id for r in status.replicas] == ["replica-0", "replica-1"]
        channel.close()
    served = [requests_served(r) for r in deployment.routers]
    assert sum(served) == 16 and min(served) > 0, served
    # each router reports its own window with every table refresh (0.25 s); the coordinator adds them up
    wait_for(lambda: deployment.snapshot().ttft_seconds.count == 16, 10, "16 first tokens in the snapshot")
    assert deployment.snapshot().ttft_seconds.count == 16


def test_abort_works_from_whichever_router_a_connection_reaches(deployment):
    channel, stub = fresh_stub(deployment.address)
    call = stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[9, 9]), stream=True, request_id="far",
                                            sampling=pb.SamplingParams(max_tokens=2000)), timeout=120)
    assert next(call).WhichOneof("kind") == "chunk"
    for _ in range(4):   # fresh connections: some reach the other router, which forwards the abort
        other_channel, other = fresh_stub(deployment.address)
        found = other.Abort(pb.AbortRequest(request_id="far"), timeout=30).found
        other_channel.close()
        if found:
            break
    assert found
    last = list(call)[-1]
    assert last.complete.finish_reason == pb.ABORT and len(last.complete.output_ids) < 2000
    channel.close()
