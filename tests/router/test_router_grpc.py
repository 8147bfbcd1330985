"""The router over real gRPC in front of scripted replicas: results, errors, migration, abort."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.generation import collect, request
from tests.support.scripted import expected_tokens
from tests.support.waiting import wait_for_async
from ttdist.runtime.scripted_engine import ScriptedEngineConfig
from ttdist.v1 import generation_pb2 as pb


async def test_streaming_and_unary_agree(make_stack):
    stack = await make_stack(2)
    prompt = [5, 6, 7, 8, 9]
    want = expected_tokens(prompt, 10)
    ids, complete = await collect(stack.stub, request(prompt, 10))
    assert ids == want and list(complete.output_ids) == want
    assert complete.finish_reason == pb.LENGTH
    assert complete.usage.prompt_tokens == 5 and complete.usage.completion_tokens == 10
    assert complete.text == "".join(f" t{i}" for i in want)
    ids2, complete2 = await collect(stack.stub, request(prompt, 10, stream=False))
    assert ids2 == [] and list(complete2.output_ids) == want and complete2.text == complete.text
    # round robin: the two requests went to different replicas
    assert {complete.replica_id, complete2.replica_id} == {"replica-0", "replica-1"}


async def test_server_assigns_ids_and_keeps_given_ones(make_stack):
    stack = await make_stack(1)
    responses = [r async for r in stack.stub.Generate(request([1, 2], 2))]
    assert responses[0].request_id and len({r.request_id for r in responses}) == 1
    responses = [r async for r in stack.stub.Generate(request([1, 2], 2, request_id="mine"))]
    assert {r.request_id for r in responses} == {"mine"}


BAD = [
    (pb.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "input"),
    (pb.GenerateRequest(text=""), grpc.StatusCode.INVALID_ARGUMENT, "text"),
    (pb.GenerateRequest(token_ids=pb.TokenIds()), grpc.StatusCode.INVALID_ARGUMENT, "token_ids"),
    (request([1, -3]), grpc.StatusCode.INVALID_ARGUMENT, "token_ids"),
    (request([1, 1000]), grpc.StatusCode.INVALID_ARGUMENT, "token_ids"),
    (request(list(range(1, 513))), grpc.StatusCode.INVALID_ARGUMENT, "context window"),
    (request([1], model="gpt-9"), grpc.StatusCode.NOT_FOUND, "model"),
    (request([1], request_id="x" * 300), grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
    (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(temperature=-1)), grpc.StatusCode.INVALID_ARGUMENT, "sampling.temperature"),
    (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(temperature=float("nan"))), grpc.StatusCode.INVALID_ARGUMENT, "sampling.temperature"),
    (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(top_k=-2)), grpc.StatusCode.INVALID_ARGUMENT, "sampling.top_k"),
    (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(top_p=1.5)), grpc.StatusCode.INVALID_ARGUMENT, "sampling.top_p"),
    (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(top_p=-0.1)), grpc.StatusCode.INVALID_ARGUMENT, "sampling.top_p"),
    (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(max_tokens=-5)), grpc.StatusCode.INVALID_ARGUMENT, "sampling.max_tokens"),
    (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(max_tokens=100000)), grpc.StatusCode.INVALID_ARGUMENT, "sampling.max_tokens"),
    (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(stop=[""])), grpc.StatusCode.INVALID_ARGUMENT, "sampling.stop"),
    (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(stop=["s"] * 17)), grpc.StatusCode.INVALID_ARGUMENT, "sampling.stop"),
    (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(stop_token_ids=[5000])), grpc.StatusCode.INVALID_ARGUMENT, "sampling.stop_token_ids"),
    (pb.GenerateRequest(text="x" * (1 << 20 + 1)), grpc.StatusCode.INVALID_ARGUMENT, "text"),
]


async def test_malformed_requests_get_typed_status_and_server_keeps_serving(make_stack):
    stack = await make_stack(2)
    assert len(BAD) >= 15
    for req, code, field in BAD:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(stack.stub, req)
        assert info.value.code() == code, (req, info.value.details())
        assert field in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.Abort(pb.AbortRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in info.value.details()
    ids, complete = await collect(stack.stub, request([3, 4], 4))
    assert ids == expected_tokens([3, 4], 4)


async def test_replica_checks_requests_too(make_stack):
    stack = await make_stack(1)
    port = stack.replica_servers[0].port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        from ttdist.v1 import generation_pb2_grpc as pb_grpc
        stub = pb_grpc.GenerationStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(stub, request([1, 99999]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        ids, _ = await collect(stub, request([1, 2], 3))
        assert ids == expected_tokens([1, 2], 3)


async def test_unavailable_without_ready_replicas_and_health_follows(make_stack):
    stack = await make_stack(2, states=["starting", "unhealthy"], ready_wait_s=0.2)
    health = health_pb2_grpc.HealthStub(stack.channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stack.stub, request([1], 2))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "replica-0=starting" in info.value.details()
    stack.set_state(1, "ready")
    await stack.router.refresh()
    resp = await health.Check(health_pb2.HealthCheckRequest(service="ttdist.v1.Generation"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    ids, complete = await collect(stack.stub, request([1], 2))
    assert complete.replica_id == "replica-1"


async def test_deadline_is_honoured_and_frees_the_replica(make_stack):
    stack = await make_stack(1, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.02))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stack.stub, request([1, 2], 400), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_for_async(lambda: stack.engines[0].stats().running == 0, 2.0, "the freed slot", every=0.02)


async def test_overload_is_resource_exhausted(make_stack):
    stack = await make_stack(1, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.02), max_inflight=2)
    calls = [stack.stub.Generate(request([1, i], 50)) for i in range(2)]
    firsts = [await c.read() for c in calls]
    assert all(f.WhichOneof("kind") == "chunk" for f in firsts)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stack.stub, request([9], 2))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for c in calls:
        c.cancel()


async def test_abort_ends_the_stream_and_frees_the_replica(make_stack):
    stack = await make_stack(1, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.01))
    call = stack.stub.Generate(request([4, 4], 400, request_id="long"))
    first = await call.read()
    assert first.WhichOneof("kind") == "chunk"
    assert stack.engines[0].stats().running == 1
    assert (await stack.stub.Abort(pb.AbortRequest(request_id="long"))).found
    last = None
    while (resp := await call.read()) is not grpc.aio.EOF:
        last = resp
    assert last.complete.finish_reason == pb.ABORT
    assert 0 < len(last.complete.output_ids) < 400
    assert stack.engines[0].stats().running == 0
    assert not (await stack.stub.Abort(pb.AbortRequest(request_id="long"))).found


async def test_client_cancel_propagates_to_the_replica(make_stack):
    stack = await make_stack(1, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.01))
    call = stack.stub.Generate(request([4, 4], 400))
    await call.read()
    call.cancel()
    await wait_for_async(lambda: stack.engines[0].stats().running == 0, 2.0, "the freed slot", every=0.02)


async def run_streams(stack, prompts, n_tokens, on_progress):
    """Run one stream per prompt; call ``on_progress`` once every stream has 3+ tokens."""
    got = [[] for _ in prompts]
    completes = [None] * len(prompts)
    ready = asyncio.Event()

    async def one(i):
        async for resp in stack.stub.Generate(request(prompts[i], n_tokens, request_id=f"s{i}")):
            if resp.WhichOneof("kind") == "chunk":
                got[i].extend(resp.chunk.token_ids)
                if all(len(g) >= 3 for g in got):
                    ready.set()
            else:
                completes[i] = resp.complete

    tasks = [asyncio.create_task(one(i)) for i in range(len(prompts))]
    await ready.wait()
    await on_progress()
    await asyncio.gather(*tasks)
    return got, completes


async def test_replica_lost_mid_stream_migrates_without_gap_or_duplicate(make_stack):
    stack = await make_stack(2, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.01))
    prompts = [[10 + i, 20 + i, 30 + i] for i in range(8)]

    async def kill_replica_0():
        assert stack.engines[0].stats().running == 4
        await stack.replica_servers[0].stop(0)

    got, completes = await run_streams(stack, prompts, 40, kill_replica_0)
    for i, prompt in enumerate(prompts):
        want = expected_tokens(prompt, 40)
        assert got[i] == want, i
        assert list(completes[i].output_ids) == want
        assert completes[i].usage.prompt_tokens == 3 and completes[i].usage.completion_tokens == 40
        assert completes[i].replica_id == "replica-1"
        assert completes[i].text == "".join(f" t{t}" for t in want)
    assert stack.router.report_snapshot().migrations_total == 4


async def test_replica_marked_failed_is_evacuated(make_stack):
    stack = await make_stack(2, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.01))
    prompts = [[7, i] for i in range(4)]

    async def fail_replica_1():
        stack.set_state(1, "failed")
        await stack.router.refresh()

    got, completes = await run_streams(stack, prompts, 30, fail_replica_1)
    for i, prompt in enumerate(prompts):
        assert got[i] == expected_tokens(prompt, 30)
        assert completes[i].replica_id == "replica-0"
    assert stack.engines[1].stats().running == 0


async def test_cache_aware_routes_shared_prefixes_together(make_stack):
    stack = await make_stack(3, engine=ScriptedEngineConfig(vocab_size=1000, page_size=4), policy="cache_aware")
    shared = list(range(1, 17))
    replicas = set()
    for i in range(6):
        _, complete = await collect(stack.stub, request(shared + [100 + i], 2))
        replicas.add(complete.replica_id)
        if i:
            assert complete.usage.cached_tokens == 16
    assert len(replicas) == 1


async def test_cluster_status_and_models(make_stack):
    stack = await make_stack(2)
    status = await stack.stub.GetClusterStatus(pb.ClusterStatusRequest())
    assert [r.replica_id for r in status.replicas] == ["replica-0", "replica-1"]
    assert status.policy == "round_robin" and status.model == "scripted"
    models = await stack.stub.ListModels(pb.ListModelsRequest())
    assert models.models[0].id == "scripted" and models.models[0].vocab_size == 1000


async def test_replica_times_every_token_into_its_histograms(make_stack):
    stack = await make_stack(2, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.005))
    for i in range(6):   # round robin: three requests per replica, streaming and unary
        _, complete = await collect(stack.stub, request([3, i + 1], 5, stream=bool(i % 3)))
        assert complete.usage.completion_tokens == 5
    for latency in stack.latencies:
        assert latency.ttft.count == 3 and latency.ttft.sum > 0
        assert latency.inter_token.count == 3 * 4 and latency.inter_token.sum > 0
    ttft, itl = stack.latencies[0].snapshot()
    await collect(stack.stub, request([3, 9], 5))
    assert (ttft.count, itl.count) == (3, 12), "a snapshot must not change with later requests"


async def test_an_aborted_request_adds_its_tokens_but_no_more(make_stack):
    stack = await make_stack(1, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.01))
    call = stack.stub.Generate(request([4, 4], 400, request_id="cut"))
    await call.read()
    await call.read()
    assert (await stack.stub.Abort(pb.AbortRequest(request_id="cut"))).found
    last = None
    while (resp := await call.read()) is not grpc.aio.EOF:
        last = resp
    n = len(last.complete.output_ids)
    latency = stack.latencies[0]
    assert latency.ttft.count == 1 and latency.inter_token.count == n - 1


async def test_cluster_status_reads_the_load_from_each_replica(make_stack):
    stack = await make_stack(2, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.01))
    # the registry's last heartbeats say both replicas are busy; the replicas themselves are idle
    stale = tuple(replace(e, running=3, waiting=2, kv_pages_free=1, kv_user_groups=2, kv_pages_free_per_group=(1, 0))
                  for e in stack.source.current.replicas)
    stack.source.current = replace(stack.source.current, replicas=stale)
    status = await stack.stub.GetClusterStatus(pb.ClusterStatusRequest())
    assert [(r.running, r.waiting, r.kv_pages_free) for r in status.replicas] == [(0, 0, 4096), (0, 0, 4096)]
    assert [(r.kv_user_groups, list(r.kv_pages_free_per_group)) for r in status.replicas] == [(1, []), (1, [])]
    call = stack.stub.Generate(request([4, 4], 400, request_id="busy"))
    await call.read()
    status = await stack.stub.GetClusterStatus(pb.ClusterStatusRequest())
    assert sorted(r.running for r in status.replicas) == [0, 1]
    assert (await stack.stub.Abort(pb.AbortRequest(request_id="busy"))).found
    while await call.read() is not grpc.aio.EOF:
        pass
    await collect(stack.stub, request([5, 6], 3))
    status = await stack.stub.GetClusterStatus(pb.ClusterStatusRequest())
    assert [r.running for r in status.replicas] == [0, 0]
    # a replica that does not answer keeps its registry figures
    await stack.replica_servers[1].stop(0)
    status = await stack.stub.GetClusterStatus(pb.ClusterStatusRequest())
    assert [(r.running, r.waiting) for r in status.replicas] == [(0, 0), (3, 2)]
