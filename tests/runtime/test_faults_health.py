"""Truthful health, caused for real on a Ray cluster of two scripted replicas.

A replica's engine loop is stalled (its engine really hangs with work waiting): the replica
reports unhealthy while its heartbeats keep coming, its own grpc.health.v1 says NOT_SERVING,
the coordinator fails and restarts it, and the stream it held finishes exactly elsewhere. A
replica that cannot start any more (an injected start fault, then SIGKILL) is restarted with
a doubling delay until it is "failed (crash loop)" — shown by GetClusterStatus, `ttdist
status`, /api/status and /metrics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import running_cluster
from tests.support.generation import run, stub_for
from tests.support.scripted import expected_tokens
from tests.support.waiting import wait_for
from ttdist.engine.faults import EngineFaults
from ttdist.runtime.auth import cluster_metadata
from ttdist.runtime.config import ClusterConfig, HealthConfig, ReplicaGroup
from ttdist.runtime.scripted_engine import ScriptedEngineConfig
from ttdist.v1 import generation_pb2 as pb

pytestmark = pytest.mark.slow

VOCAB = 1000
HEALTH = HealthConfig(heartbeat_s=0.25, unhealthy_after_s=3.0, failed_after_s=3.0, stall_after_s=1.0,
                      restart_delay_s=0.5, restart_backoff_max_s=4.0, crash_loop_failures=3, stable_after_s=60.0)


@pytest.fixture(scope="module")
def cluster():
    config = ClusterConfig(
        engine="scripted", scripted=ScriptedEngineConfig(vocab_size=VOCAB, step_s=0.02), groups=(ReplicaGroup(count=2),),
        port=0, dashboard_port=0, health=HEALTH,
    )
    with running_cluster(config) as deployment:
        channel, stub = stub_for(deployment.address)
        yield deployment, stub
        channel.close()


def request(prompt, n):
    return pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), stream=True, sampling=pb.SamplingParams(max_tokens=n))


def replicas(stub) -> dict:
    return {r.replica_id: r for r in stub.GetClusterStatus(pb.ClusterStatusRequest()).replicas}


def events(deployment, kind: str, replica_id: str) -> list:
    return [e for e in deployment.snapshot().events if e.kind == kind and e.replica_id == replica_id]


def replica_health(deployment, address: str) -> int:
    """The replica's own grpc.health.v1 answer (its internal port wants the cluster token)."""
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5, metadata=cluster_metadata(deployment.config.cluster_token)).status


def test_a_stalled_engine_is_reported_unhealthy_then_restarted_and_its_stream_moves(cluster):
    deployment, stub = cluster
    wait_for(lambda: all(x.state == "ready" for x in replicas(stub).values()), 60, "both replicas ready")
    before = replicas(stub)
    victim = before["replica-0"]
    actor = ray.get(deployment.coordinator.actor.remote("replica-0"))
    ray.get(actor.inject_fault.remote(EngineFaults(stall_after_steps=0)), timeout=30)
    # two streams: round robin puts one on each replica; the one on replica-0 hangs there
    prompts = [[3, 4, 5], [6, 7, 8]]
    results: list = [None, None]

    def stream(i):
        results[i] = run(stub, request(prompts[i], 30), timeout=120)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    stalled_at = time.monotonic()
    wait_for(lambda: replicas(stub)["replica-0"].state == "unhealthy", 30, "replica-0 unhealthy")
    took = time.monotonic() - stalled_at
    assert replica_health(deployment, victim.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert replica_health(deployment, replicas(stub)["replica-1"].address) == health_pb2.HealthCheckResponse.SERVING
    reason = events(deployment, "replica_unhealthy", "replica-0")[-1].message
    assert "engine made no step" in reason, reason
    # failed after failed_after_s, then restarted: a new process, serving again
    restarted = wait_for(lambda: (r := replicas(stub)["replica-0"]).state == "ready" and r.pid != victim.pid and r,
                         90, "replica-0 restarted")
    assert restarted.address != victim.address or restarted.pid != victim.pid
    for t in threads:
        t.join(120)
    for prompt, (ids, complete) in zip(prompts, results):
        assert ids == expected_tokens(prompt, 30, VOCAB) and complete.finish_reason == pb.LENGTH
    assert events(deployment, "replica_restarting", "replica-0")
    print(f"stall -> unhealthy in {took:.1f} s")


def test_a_replica_that_never_starts_again_is_failed_crash_loop(cluster):
    deployment, stub = cluster
    wait_for(lambda: all(r.state == "ready" for r in replicas(stub).values()), 90, "both replicas ready")
    victim = replicas(stub)["replica-1"]
    ray.get(deployment.coordinator.inject_fault.remote("replica-1", EngineFaults(fail_start=True)), timeout=30)
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: replicas(stub)["replica-1"].state == "failed (crash loop)", 180, "crash loop")
    # three failures in a row: the SIGKILL, then two restarts that could not start
    failed = events(deployment, "replica_failed", "replica-1")[-3:]
    restarting = events(deployment, "replica_restarting", "replica-1")[-2:]
    assert "process gone" in failed[0].message
    assert all("injected start fault" in e.message for e in failed[1:])
    gaps = [r.time - f.time for f, r in zip(failed, restarting)]
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0            # the restart delay doubled
    assert events(deployment, "replica_crash_loop", "replica-1")
    attempts = len(events(deployment, "replica_restarting", "replica-1"))
    time.sleep(2 * HEALTH.restart_backoff_max_s)        # and no restart comes any more
    assert len(events(deployment, "replica_restarting", "replica-1")) == attempts
    snap = {r.replica_id: r for r in deployment.snapshot().replicas}["replica-1"]
    assert snap.crash_loop and snap.state == "failed" and "injected start fault" in snap.state_reason
    # the dashboard's JSON, its Prometheus metrics and `ttdist status` all say so
    with urllib.request.urlopen(f"{deployment.dashboard_url}/api/status", timeout=10) as resp:
        api = {r["replica_id"]: r for r in json.loads(resp.read())["replicas"]}
    assert api["replica-1"]["crash_loop"] is True and "injected start fault" in api["replica-1"]["state_reason"]
    with urllib.request.urlopen(f"{deployment.dashboard_url}/metrics", timeout=10) as resp:
        samples = {(s.name, s.labels.get("replica")): s.value
                   for f in text_string_to_metric_families(resp.read().decode()) for s in f.samples}
    assert samples[("ttdist:replica_crash_loop", "replica-1")] == 1.0
    assert samples[("ttdist:replica_crash_loop", "replica-0")] == 0.0
    assert samples[("ttdist:replica_restarts_total", "replica-1")] >= 2
    ttdist = os.path.join(os.path.dirname(sys.executable), "ttdist")
    cli = subprocess.run([ttdist, "status", "--target", deployment.address],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    row = next(line for line in cli.stdout.splitlines() if line.startswith("replica-1"))
    assert "failed (crash loop)" in row
    # the other replica keeps serving
    ids, complete = run(stub, request([9, 9], 5))
    assert ids == expected_tokens([9, 9], 5, VOCAB) and complete.replica_id == "replica-0"
