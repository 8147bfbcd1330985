"""Faults of the serving path, caused for real on one Ray cluster of three scripted replicas:
a busy replica SIGKILLed, the coordinator SIGKILLed, the router SIGKILLed, a replica restarted
on purpose (drained), the router drained. Every stream is checked token for token.

The tests share the cluster and run in file order; the router drain is last (it ends serving).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.cluster import SCRIPTED, Streams, actor_pid, running_cluster
from tests.support.generation import greedy, run, stub_for
from tests.support.scripted import expected_tokens
from tests.support.waiting import wait_for
from ttdist.client import Client, RetryPolicy
from ttdist.runtime.config import ClusterConfig, HealthConfig, ReplicaGroup

pytestmark = pytest.mark.slow

PROMPTS = [[11 + 5 * i + j for j in range(4 + i % 5)] for i in range(12)]


@pytest.fixture(scope="module")
def cluster():
    config = ClusterConfig(
        engine="scripted", scripted=SCRIPTED, groups=(ReplicaGroup(count=3, mesh="1x1"),), port=0,
        dashboard_port=None, health=HealthConfig(heartbeat_s=0.25, unhealthy_after_s=2.0, failed_after_s=6.0,
                                                 restart_delay_s=0.5),
    )
    with running_cluster(config) as deployment:
        channel, stub = stub_for(deployment.address)
        yield deployment, stub
        channel.close()


def replicas(deployment) -> dict:
    return {r.replica_id: r for r in ray.get(deployment.coordinator.replicas.remote(), timeout=60)}


def all_ready(deployment, timeout: float = 120) -> dict:
    def ready():
        try:
            rs = replicas(deployment)
        except ray.exceptions.ActorUnavailableError:    # the coordinator is being restarted by Ray
            return None
        return rs if all(r.state == "ready" for r in rs.values()) else None
    return wait_for(ready, timeout, "every replica ready")


def events(deployment, kind: str) -> list:
    return [e for e in ray.get(deployment.coordinator.snapshot.remote(), timeout=60).events if e.kind == kind]


def test_busy_replica_sigkill_every_stream_finishes_exact(cluster):
    deployment, stub = cluster
    victim = all_ready(deployment)["replica-0"]
    streams = Streams(stub, PROMPTS[:9], 120)
    streams.wait_started()
    os.kill(victim.pid, signal.SIGKILL)
    streams.assert_exact()
    assert any(o.complete.replica_id != "replica-0" for o in streams.outcomes)
    assert all_ready(deployment)["replica-0"].pid != victim.pid


def test_coordinator_sigkill_serving_goes_on_and_the_registry_is_rebuilt(cluster):
    deployment, stub = cluster
    before = all_ready(deployment)
    old_pid = actor_pid(deployment.coordinator)
    streams = Streams(stub, PROMPTS[:6], 100)
    streams.wait_started()
    os.kill(old_pid, signal.SIGKILL)
    # while it is down the router serves from its last table
    ids, _ = run(stub, greedy(PROMPTS[7], 5))
    served_at = time.time()
    assert ids == expected_tokens(PROMPTS[7], 5)
    streams.assert_exact()
    # Ray restarts it; it finds the same replica processes by name and their heartbeats re-register them
    after = all_ready(deployment)
    assert actor_pid(deployment.coordinator) != old_pid
    assert {r: (v.pid, v.address) for r, v in after.items()} == {r: (v.pid, v.address) for r, v in before.items()}
    restarted = events(deployment, "coordinator_restarted")
    assert len(restarted) == 1 and served_at < restarted[0].time
    assert sorted(e.replica_id for e in events(deployment, "replica_reregistered")) == sorted(before)
    assert run(stub, greedy(PROMPTS[8], 30))[0] == expected_tokens(PROMPTS[8], 30)


def test_router_sigkill_client_retries_succeed_once_it_is_back(cluster):
    deployment, stub = cluster
    all_ready(deployment)
    old_pid = actor_pid(deployment.router)
    retry = RetryPolicy(max_attempts=None, initial_backoff_s=0.1, max_backoff_s=0.5, max_wait_s=90)
    with Client(deployment.address, retry=retry, timeout=120) as client:
        assert client.generate(PROMPTS[2], max_tokens=8, ignore_eos=True).token_ids == tuple(expected_tokens(PROMPTS[2], 8))
        os.kill(old_pid, signal.SIGKILL)
        t0 = time.monotonic()
        done = client.generate(PROMPTS[3], max_tokens=8, ignore_eos=True)
        back_after = time.monotonic() - t0
    assert done.token_ids == tuple(expected_tokens(PROMPTS[3], 8))
    assert actor_pid(deployment.router) != old_pid
    print(f"router SIGKILL -> first successful retry after {back_after:.2f} s")


def test_replica_restarted_on_purpose_is_drained_not_cut(cluster):
    deployment, stub = cluster
    old = all_ready(deployment)["replica-1"]
    streams = Streams(stub, PROMPTS[:6], 80)   # round robin: two of them on replica-1
    streams.wait_started()
    assert deployment.restart_replica("replica-1", drain_timeout_s=120) == 0
    streams.assert_exact()
    assert sum(o.complete.replica_id == "replica-1" for o in streams.outcomes) >= 1   # finished where they ran
    assert all_ready(deployment)["replica-1"].pid != old.pid
    # a drain timeout shorter than the streams: those still running move to other replicas, exactly
    streams = Streams(stub, PROMPTS[:6], 400)
    streams.wait_started()
    assert deployment.restart_replica("replica-2", drain_timeout_s=0.5) >= 1
    streams.assert_exact()
    assert not any(o.complete.replica_id == "replica-2" for o in streams.outcomes)
    assert {e.kind for e in ray.get(deployment.coordinator.snapshot.remote()).events} >= {
        "replica_draining", "replica_drained", "replica_restarting"}


def test_router_drain_refuses_new_requests_and_lets_streams_finish(cluster):
    deployment, stub = cluster
    all_ready(deployment)
    streams = Streams(stub, PROMPTS[:4], 150)
    streams.wait_started()
    result = {}
    drainer = threading.Thread(target=lambda: result.setdefault("left", deployment.drain(120)))
    drainer.start()
    with grpc.insecure_channel(deployment.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                 == health_pb2.HealthCheckResponse.NOT_SERVING, 30, "health NOT_SERVING")
    with pytest.raises(grpc.RpcError) as info:
        run(stub, greedy(PROMPTS[5], 3))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in info.value.details()
    assert any(o.complete is None for o in streams.outcomes), "the streams finished before the drain began"
    streams.assert_exact()
    drainer.join(150)
    assert result["left"] == 0
