"""Autoscaling on a real local Ray cluster serving a tiny model, over real gRPC.

Load rises -> a replica is added (an event with its reason, its cold start recorded);
load falls -> one is drained away while it still streams, and every stream ends exactly as
transformers' greedy decoding does. With ``min_replicas: 0`` the pool starts empty, a request
waits while a replica starts, is served, and the idle pool goes back to no replica.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import running_cluster
from tests.support.generation import greedy, run, stub_for
from tests.support.model_checks import reference_greedy
from tests.support.waiting import wait_for
from ttdist.cli.status import format_table
from ttdist.client import ClusterStatus
from ttdist.runtime.autoscale.config import AutoscaleConfig
from ttdist.runtime.config import ClusterConfig, HealthConfig, ReplicaGroup
from ttdist.v1 import generation_pb2 as pb

pytestmark = pytest.mark.slow

HEALTH = HealthConfig(heartbeat_s=0.25, unhealthy_after_s=5.0, failed_after_s=10.0)


def config(checkpoint, weights, autoscale: AutoscaleConfig) -> ClusterConfig:
    return ClusterConfig(model=str(checkpoint), groups=(ReplicaGroup(mesh="1x1"),), port=0, dashboard_port=0,
                         max_kv_pages=64, weights_cache=str(weights), health=HEALTH, policy="round_robin",
                         autoscale=autoscale)


def events(deployment, kind: str) -> list:
    return [e for e in deployment.snapshot().events if e.kind == kind]


def ready(stub) -> list[str]:
    return [r.replica_id for r in stub.GetClusterStatus(pb.ClusterStatusRequest()).replicas if r.state == "ready"]


def start_streams(pool, stub, prompts, max_tokens):
    return [pool.submit(run, stub, greedy(p, max_tokens), 300) for p in prompts]


def finished_exactly(futures, prompts, checkpoint, max_tokens) -> list:
    """Every stream ended without error, token for token transformers' greedy continuation."""
    completes, want = [], {}
    for future, prompt in zip(futures, prompts):
        ids, complete = future.result(timeout=300)
        if tuple(prompt) not in want:
            want[tuple(prompt)] = reference_greedy(checkpoint, prompt, max_tokens)
        assert ids == want[tuple(prompt)]
        assert list(complete.output_ids) == ids and complete.usage.completion_tokens == max_tokens
        completes.append((complete, time.time()))
    return completes


def test_load_rises_scales_up_then_falls_and_drains_away_with_no_stream_lost(tiny_checkpoint, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    scale = AutoscaleConfig(min_replicas=1, max_replicas=2, target=2, upscale_delay_s=1.0, downscale_delay_s=2.0,
                            drain_timeout_s=120.0)
    with running_cluster(config(tiny_checkpoint, tmp_path, scale)) as deployment, \
            ThreadPoolExecutor(8) as pool:
        channel, stub = stub_for(deployment.address)
        assert ready(stub) == ["replica-0"]
        rising, first = [], []   # 6 streams in flight until a second replica serves: 3 wanted, max 2
        deadline = time.monotonic() + 300
        while len(ready(stub)) < 2:
            assert time.monotonic() < deadline, f"no second replica: {deployment.snapshot().events[-5:]}"
            while sum(not f.done() for f in first) < 6:
                rising.append([200 + 11 * (len(rising) % 2) + j for j in range(6)])
                first += start_streams(pool, stub, rising[-1:], 200)
            time.sleep(0.2)
        up = events(deployment, "scaled_up")
        assert len(up) == 1 and up[0].message.startswith("ongoing_requests ") and up[0].message.endswith(": 1 -> 2")
        cold = events(deployment, "cold_start")
        assert [e.replica_id for e in cold] == ["replica-1"] and "weight load (cache)" in cold[0].message

        tails = [[900 + j for j in range(5)], [950 + j for j in range(5)]]   # round robin: one on each replica
        last = start_streams(pool, stub, tails, 800)
        finished_exactly(first, rising, tiny_checkpoint, 200)   # 2 ongoing now: 1 wanted
        down = wait_for(lambda: events(deployment, "scaled_down"), 180, "a scale-down")
        assert len(down) == 1 and down[0].message.endswith(": 2 -> 1")
        drained = wait_for(lambda: events(deployment, "replica_drained"), 240, "the drain to end")
        assert drained[0].message == "0 stream(s) moved"          # it finished its streams itself
        ends = finished_exactly(last, tails, tiny_checkpoint, 800)
        on_victim = [at for complete, at in ends if complete.replica_id == drained[0].replica_id]
        assert on_victim and on_victim[0] > down[0].time         # it was still streaming when the drain began
        wait_for(lambda: [r.replica_id for r in deployment.snapshot().replicas] == [
            r for r in ("replica-0", "replica-1") if r != drained[0].replica_id], 60, "the drained replica gone")
        channel.close()


def test_min_replicas_zero_a_request_waits_while_a_replica_starts(tiny_checkpoint, tmp_path):
    scale = AutoscaleConfig(min_replicas=0, max_replicas=1, target=4, upscale_delay_s=5.0, downscale_delay_s=2.0)
    with running_cluster(config(tiny_checkpoint, tmp_path, scale)) as deployment:
        channel, stub = stub_for(deployment.address)
        status = stub.GetClusterStatus(pb.ClusterStatusRequest())
        assert list(status.replicas) == [] and status.autoscale[0].min_replicas == 0 and status.autoscale[0].model == status.model
        prompt = [31, 41, 59, 26, 53]
        ids, complete = run(stub, greedy(prompt, 16), timeout=300)   # waits (within its deadline) for a replica
        assert ids == reference_greedy(tiny_checkpoint, prompt, 16) and complete.replica_id == "replica-0"
        up = events(deployment, "scaled_up")
        assert len(up) == 1 and "1 request(s) waiting for a replica" in up[0].message and up[0].message.endswith("0 -> 1 now")
        assert up[0].model == status.model   # a scale event names the model whose pool it is

        wait_for(lambda: deployment.snapshot().replicas == [], 120, "the idle pool back to no replica")
        status = ClusterStatus.from_proto(stub.GetClusterStatus(pb.ClusterStatusRequest()))
        table = format_table(status)
        assert "autoscale: 0 replicas (min 0, max 1), target ongoing_requests 4; 1 up, 1 down" in table
        assert "0 -> 1: ongoing_requests" in table and "1 -> 0: ongoing_requests" in table
        with urllib.request.urlopen(f"{deployment.dashboard_url}/metrics", timeout=10) as resp:
            families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
        scale_events = {s.labels["direction"]: s.value for s in families["ttdist:scale_events"].samples
                        if s.name.endswith("_total")}
        assert scale_events == {"up": 1.0, "down": 1.0}
        channel.close()
