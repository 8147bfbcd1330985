"""One real Ray cluster of two tiny-model replicas behind the router, over real gRPC."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request

import grpc
import psutil
import pytest
import ray

from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import running_cluster
from tests.support.generation import greedy, run, stub_for
from tests.support.model_checks import reference_greedy
from tests.support.waiting import wait_for

from ttdist.runtime.auth import cluster_metadata
from ttdist.runtime.config import ClusterConfig, HealthConfig, ReplicaGroup
from ttdist.runtime.procs import alive, argv, descendants
from ttdist.v1 import generation_pb2 as pb

pytestmark = pytest.mark.slow

PROMPTS = [[100 + 7 * i + j for j in range(5 + i)] for i in range(8)]
RESTART_DELAY_S = 1.0
CLUSTER_TOKEN = "test-cluster-token"     # replicas' internal ports require it


@pytest.fixture(scope="module")
def cluster(tiny_checkpoint, tmp_path_factory):
    config = ClusterConfig(
        model=str(tiny_checkpoint), groups=(ReplicaGroup(count=2, mesh="1x1"), ReplicaGroup(count=1, mesh="1x2", devices=((4, 5),))),
        port=0, dashboard_port=0, max_kv_pages=96, weights_cache=str(tmp_path_factory.mktemp("weights")),
        cluster_token=CLUSTER_TOKEN,
        health=HealthConfig(heartbeat_s=0.25, unhealthy_after_s=2.0, failed_after_s=6.0, restart_delay_s=RESTART_DELAY_S),
    )
    with running_cluster(config) as deployment:
        channel, stub = stub_for(deployment.address)
        yield deployment, stub
        channel.close()


def status(stub):
    return stub.GetClusterStatus(pb.ClusterStatusRequest())


def wait_all_ready(stub, n=3, timeout=120):
    def all_ready():
        st = status(stub)
        return st if sum(r.state == "ready" for r in st.replicas) == n else None
    return wait_for(all_ready, timeout, lambda: f"{n} replicas ready: {status(stub)}", every=0.2)


def test_status_shows_replicas_meshes_and_kv_budget(cluster):
    deployment, stub = cluster
    st = wait_all_ready(stub)
    assert [r.replica_id for r in st.replicas] == ["replica-0", "replica-1", "replica-2"]
    assert [r.mesh for r in st.replicas] == ["1x1", "1x1", "1x2"]
    for r in st.replicas:
        assert r.backend == "sim" and r.pid > 0 and r.node_id and r.address.startswith("127.0.0.1:")
        assert r.kv_pages_total == 96 and r.kv_pages_budget > 96
        # from the replica's own DRAM ledger: a simulated cache in host RAM is capped, and says so
        assert r.kv_pages_capped_by_host and r.dram_total_bytes == 12 * 2**30
        assert r.dram_weights_bytes > 0 and r.dram_kv_bytes > 0 and r.dram_other_bytes >= 0
    # the 1x2 mesh halves the KV heads per chip: twice the pages fit
    assert st.replicas[2].kv_pages_budget > st.replicas[0].kv_pages_budget
    assert len({r.pid for r in st.replicas}) == 3
    models = stub.ListModels(pb.ListModelsRequest())
    assert models.models[0].id == "tiny-llama" and models.models[0].vocab_size == 49152


def test_replicas_and_router_run_at_the_priority_of_ray_itself(cluster):
    deployment, stub = cluster
    pids = [r.pid for r in wait_all_ready(stub).replicas] + [ray.get(deployment.router.pid.remote())]
    # Ray would start them 15 nice levels down; the data plane runs at the driver's level
    assert [psutil.Process(pid).nice() for pid in pids] == [os.nice(0)] * 4


def test_replica_with_devices_sees_only_them(cluster):
    deployment, _ = cluster
    actor = ray.get(deployment.coordinator.actor.remote("replica-2"))
    assert ray.get(actor.env.remote("TT_VISIBLE_DEVICES")) == "4,5"
    actor0 = ray.get(deployment.coordinator.actor.remote("replica-0"))
    assert ray.get(actor0.env.remote("TT_VISIBLE_DEVICES")) is None


def test_greedy_equals_transformers_and_streaming_equals_unary(cluster, tiny_checkpoint):
    _, stub = cluster
    prompt = PROMPTS[3]
    want = reference_greedy(tiny_checkpoint, prompt, 12)
    seen = set()
    for _ in range(3):   # round robin: every replica, 1x1 and 1x2 alike
        ids, complete = run(stub, greedy(prompt, 12))
        assert ids == want and list(complete.output_ids) == want
        ids_u, complete_u = run(stub, greedy(prompt, 12, stream=False))
        assert ids_u == [] and list(complete_u.output_ids) == want and complete_u.text == complete.text
        seen |= {complete.replica_id, complete_u.replica_id}
    assert seen == {"replica-0", "replica-1", "replica-2"}


def test_text_prompt_uses_the_tokenizer(cluster):
    _, stub = cluster
    req = pb.GenerateRequest(text="The cluster says", sampling=pb.SamplingParams(max_tokens=4, ignore_eos=True), stream=True)
    ids, complete = run(stub, req)
    assert len(ids) == 4 and complete.usage.prompt_tokens == 3 and complete.finish_reason == pb.LENGTH


def test_malformed_requests_through_the_cluster(cluster):
    _, stub = cluster
    bad = [
        (pb.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (greedy([1, 49152], 2), grpc.StatusCode.INVALID_ARGUMENT),
        (greedy([1], 2, model="nope"), grpc.StatusCode.NOT_FOUND),
        (greedy(list(range(1, 1030)), 2), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GenerateRequest(text="x", sampling=pb.SamplingParams(top_p=2)), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for req, code in bad:
        with pytest.raises(grpc.RpcError) as info:
            run(stub, req)
        assert info.value.code() == code
    ids, _ = run(stub, greedy([1, 2, 3], 3))
    assert len(ids) == 3


def replica_status(address):
    channel, stub = stub_for(address)
    with channel:
        return stub.GetClusterStatus(pb.ClusterStatusRequest(), metadata=cluster_metadata(CLUSTER_TOKEN)).replicas[0]


def test_abort_frees_pages(cluster):
    _, stub = cluster
    wait_all_ready(stub)
    call = stub.Generate(greedy(list(range(1, 70)), 900, request_id="to-abort"))
    first = next(call)
    assert first.WhichOneof("kind") == "chunk"
    entry = next(r for r in status(stub).replicas if r.replica_id == _replica_of(stub, "to-abort", call))
    busy = replica_status(entry.address)
    assert busy.running == 1 and busy.kv_pages_free < busy.kv_pages_total
    assert stub.Abort(pb.AbortRequest(request_id="to-abort")).found
    last = list(call)[-1]
    assert last.complete.finish_reason == pb.ABORT
    idle = replica_status(entry.address)
    assert idle.running == 0 and idle.kv_pages_free == idle.kv_pages_total


def _replica_of(stub, request_id, call):
    """The replica running ``request_id``: the one whose own status shows a running request."""
    for r in status(stub).replicas:
        if replica_status(r.address).running:
            return r.replica_id
    raise AssertionError("no replica is running the request")


def _streams_around(stub, n: int, cause, then=lambda: None):
    """Every prompt of PROMPTS streamed at once for ``n`` tokens; ``cause()`` runs once each has
    2 tokens, ``then()`` while they go on. Returns what ``cause`` returned, the tokens each stream
    had right after it, the tokens and ``Complete`` each ended with, and the same requests' ids
    undisturbed (sent one by one before)."""
    undisturbed = [run(stub, greedy(p, n))[0] for p in PROMPTS]
    got = [[] for _ in PROMPTS]
    completes = [None] * len(PROMPTS)
    all_started = threading.Barrier(len(PROMPTS) + 1)

    def stream(i):
        started = False
        for resp in stub.Generate(greedy(PROMPTS[i], n), timeout=120):
            if resp.WhichOneof("kind") == "chunk":
                got[i].extend(resp.chunk.token_ids)
                if not started and len(got[i]) >= 2:
                    started = True
                    all_started.wait()
            else:
                completes[i] = resp.complete

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    all_started.wait()
    caused = cause()
    mid = [len(g) for g in got]
    then()
    for t in threads:
        t.join()
    return caused, mid, got, completes, undisturbed


def test_sigkill_mid_stream_migrates_all_streams_exactly(cluster):
    deployment, stub = cluster
    wait_all_ready(stub)
    n = 60

    def kill():
        victim = next(r for r in status(stub).replicas if r.replica_id == "replica-0")
        os.kill(victim.pid, signal.SIGKILL)
        return victim

    def failed_is_visible():
        # the coordinator holds the restart for restart_delay_s: the failed state is visible
        states = []

        def shown_failed():
            states.append(next(r.state for r in status(stub).replicas if r.replica_id == "replica-0"))
            return states[-1] == "failed"
        wait_for(shown_failed, 30, lambda: f"replica-0 shown failed: {states}", every=0.05)

    victim, mid, got, completes, undisturbed = _streams_around(stub, n, kill, failed_is_visible)
    assert any(m < n for m in mid), "the kill came after every stream had finished"
    for i in range(len(PROMPTS)):
        assert got[i] == undisturbed[i], i
        assert list(completes[i].output_ids) == undisturbed[i]
        assert completes[i].usage.completion_tokens == n and completes[i].usage.prompt_tokens == len(PROMPTS[i])
        assert completes[i].replica_id in ("replica-1", "replica-2") or mid[i] == n
    # the coordinator notices, restarts the replica (new process) and reports all of it
    st = wait_all_ready(stub)
    restarted = next(r for r in st.replicas if r.replica_id == "replica-0")
    assert restarted.pid != victim.pid
    kinds = wait_for(lambda: "request_migrated" in (k := [e.kind for e in deployment.snapshot().events]) and k, 10,
                     "a request_migrated event", every=0.2)
    assert {"replica_failed", "replica_restarted", "request_migrated"} <= set(kinds)
    snap = deployment.snapshot()
    r0 = next(r for r in snap.replicas if r.replica_id == "replica-0")
    assert r0.restarts == 1 and r0.state == "ready"
    failed_at = max(e.time for e in snap.events if e.kind == "replica_failed" and e.replica_id == "replica-0")
    restarting_at = max(e.time for e in snap.events if e.kind == "replica_restarting" and e.replica_id == "replica-0")
    assert restarting_at - failed_at >= RESTART_DELAY_S


def _engine_process_of(pid: int) -> int:
    """The engine process a replica process started (``python -m ttdist.engine.process``)."""
    for child in descendants(pid):
        if alive(child) and b"ttdist.engine.process" in argv(child):
            return child
    raise AssertionError(f"replica process {pid} has no engine process")


def test_a_killed_engine_process_fails_its_replica_and_its_streams_move_exactly(cluster):
    deployment, stub = cluster
    wait_all_ready(stub)
    n = 60

    def kill():
        victim = next(r for r in status(stub).replicas if r.replica_id == "replica-1")
        engine_pid = _engine_process_of(victim.pid)
        os.kill(engine_pid, signal.SIGKILL)   # the replica process itself lives on
        return victim, engine_pid

    (victim, engine_pid), mid, got, completes, undisturbed = _streams_around(stub, n, kill)
    assert any(m < n for m in mid), "the kill came after every stream had finished"
    for i in range(len(PROMPTS)):
        assert got[i] == undisturbed[i], i
        assert list(completes[i].output_ids) == undisturbed[i]
        assert completes[i].replica_id in ("replica-0", "replica-2") or mid[i] == n
    # the replica reported its dead engine: failed, then restarted as a new process with a new engine
    st = wait_all_ready(stub)
    restarted = next(r for r in st.replicas if r.replica_id == "replica-1")
    assert restarted.pid != victim.pid and _engine_process_of(restarted.pid) != engine_pid
    failures = [e.message for e in deployment.snapshot().events if e.kind == "replica_failed" and e.replica_id == "replica-1"]
    assert any("exited with code -9" in m for m in failures), failures
    assert run(stub, greedy(PROMPTS[0], n))[0] == undisturbed[0]


def test_status_right_after_a_request_shows_it_finished(cluster):
    deployment, stub = cluster
    wait_all_ready(stub)
    for i in range(3):   # round robin: once on each replica
        _, complete = run(stub, greedy(PROMPTS[i], 12))
        st = status(stub)
        assert [(r.running, r.waiting) for r in st.replicas] == [(0, 0)] * 3, (complete.replica_id, st)
        assert all(r.kv_pages_free == r.kv_pages_total for r in st.replicas)
    # the registry (and so the dashboard) follows within a heartbeat too
    wait_for(lambda: all(r.running == 0 and r.waiting == 0 for r in deployment.snapshot().replicas), 10,
             "the registry showing nothing running", every=0.05)
    assert all(r.running == 0 and r.waiting == 0 for r in deployment.snapshot().replicas)


def scrape(url: str) -> dict[tuple[str, str], float]:
    """{(sample name, replica): value} of the dashboard's /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, s.labels.get("replica", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples if "le" not in s.labels}


def test_metrics_latency_histograms_count_every_finished_request(cluster):
    deployment, stub = cluster
    wait_all_ready(stub)
    replicas = [f"replica-{i}" for i in range(3)]
    success, ttft, itl = "ttdist:request_success_total", "ttdist:time_to_first_token_seconds_count", \
        "ttdist:inter_token_latency_seconds_count"

    def totals(metrics, name):
        return {r: metrics[(name, r)] for r in replicas}

    actors = {r: ray.get(deployment.coordinator.actor.remote(r)) for r in replicas}

    def settled():
        """A scrape that has caught up with every replica's own count of finished requests."""
        last = {}

        def caught_up():
            last["truth"] = {r: ray.get(a.engine_stats.remote()).requests_finished_total for r, a in actors.items()}
            last["metrics"] = scrape(deployment.dashboard_url)
            return totals(last["metrics"], success) == last["truth"]
        try:
            wait_for(caught_up, 30, "the scrape catching up", every=0.2)
        except AssertionError:
            pass    # the caller checks the last scrape
        return last["metrics"], last["truth"]

    before, _ = settled()
    n_requests, n_tokens = 6, 5
    for i in range(n_requests):
        run(stub, greedy(PROMPTS[i], n_tokens, stream=bool(i % 2)))
    after, truth = settled()
    assert totals(after, success) == truth
    finished = {r: after[(success, r)] - before[(success, r)] for r in replicas}
    assert sum(finished.values()) == n_requests
    for r in replicas:
        assert totals(after, ttft)[r] - totals(before, ttft)[r] == finished[r], r
        assert totals(after, itl)[r] - totals(before, itl)[r] == finished[r] * (n_tokens - 1), r
        assert after[("ttdist:time_to_first_token_seconds_sum", r)] > before[("ttdist:time_to_first_token_seconds_sum", r)]
    snap = deployment.snapshot()
    assert sum(r.ttft_histogram.count for r in snap.replicas) >= n_requests


def test_snapshot_for_the_dashboard(cluster):
    deployment, stub = cluster
    run(stub, greedy([5, 6, 7], 4))
    time.sleep(0.6)
    snap = deployment.snapshot()
    assert snap.model == "tiny-llama" and snap.policy == "round_robin"
    r2 = next(r for r in snap.replicas if r.replica_id == "replica-2")
    assert len(r2.chips) == 2 and r2.chips[0].dram_weights_bytes > 0 and r2.chips[0].dram_kv_bytes > 0
    assert sum(r.generation_tokens_total for r in snap.replicas) > 0
    assert snap.ttft_seconds.count > 0 and snap.ttft_seconds.p50 > 0
    assert deployment.dashboard_url.startswith("http://127.0.0.1:")
