"""No poison requests: a hostile field or a failure of one request ends that request alone.

The full uint64 seed range reaches the real model runner (which samples with int64 arrays)
through a real router and replica over gRPC; an engine error caused in one request's output
step ends it with INTERNAL while the requests batched with it finish exactly.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from ttdist.engine import AsyncEngine, EngineConfig, FinishReason, GenerationRequest, SamplingParams
from ttdist.engine.faults import EngineFaults
from ttdist.router.router import Router, RouterConfig
from ttdist.router.service import start_router_server
from ttdist.router.sources import StaticSource
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.replica_service import start_replica_server
from ttdist.runtime.routing_table import ReplicaEntry, RoutingTable
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc

from engine_fakes import FakeRunner, reference_output

MAX_SEED = 2**64 - 1


def request(name: str, ids: list[int], max_tokens: int = 8, **sampling) -> GenerationRequest:
    return GenerationRequest(name, prompt_token_ids=ids, sampling=SamplingParams(max_tokens=max_tokens, **sampling))


async def collect(engine: AsyncEngine, req: GenerationRequest):
    return [out async for out in engine.generate(req)]


async def test_one_failing_request_ends_alone_and_the_batch_goes_on():
    runner = FakeRunner(page_size=4, num_pages=64, max_batch=8)
    engine = AsyncEngine(runner, None, EngineConfig(max_batch=8, prefill_chunk=8,
                                                    faults=EngineFaults(fail_request_prefix="poison")))
    engine.start()
    try:
        prompts = {f"ok{i}": [i + 1, i + 2, i + 3] for i in range(5)}
        jobs = [collect(engine, request(name, ids, 12)) for name, ids in prompts.items()]
        jobs.insert(2, collect(engine, request("poison-1", [9, 9, 9], 12)))
        results = await asyncio.gather(*jobs)
        poisoned = results.pop(2)
        assert poisoned[-1].finished and poisoned[-1].finish_reason is FinishReason.ABORT
        assert poisoned[-1].request_error == "InjectedFault: injected fault in request 'poison-1'"
        assert poisoned[-1].error is None                       # the engine itself did not fail
        for (name, ids), outs in zip(prompts.items(), results):
            assert outs[-1].finish_reason is FinishReason.LENGTH
            assert outs[-1].output_ids == reference_output(runner, ids, 12), name
        # the engine still serves, and the poisoned request's pages came back
        again = await collect(engine, request("after", [5, 6], 4))
        assert again[-1].output_ids == reference_output(runner, [5, 6], 4)
        stats = engine.stats()
        assert stats.free_pages == stats.total_pages and engine.liveness().alive
    finally:
        engine.shutdown()


async def test_full_uint64_seed_range_on_the_fake_runner_is_reduced_deterministically():
    runner = FakeRunner(page_size=4, num_pages=64, max_batch=4)
    engine = AsyncEngine(runner, None, EngineConfig(max_batch=4, prefill_chunk=8))
    engine.start()
    try:
        seeded = dict(temperature=0.7, top_k=5)
        a = await collect(engine, request("a", [3, 4], 6, seed=MAX_SEED, **seeded))
        b = await collect(engine, request("b", [3, 4], 6, seed=MAX_SEED, **seeded))
        c = await collect(engine, request("c", [3, 4], 6, seed=2**63 - 1, **seeded))   # MAX_SEED % 2**63
        assert a[-1].output_ids == b[-1].output_ids == c[-1].output_ids
        assert a[-1].finish_reason is FinishReason.LENGTH
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def model_runner(tmp_path_factory):
    from ttdist.model.runner import MeshModelRunner
    from ttdist.model.testing import tiny_llama_checkpoint

    path = tiny_llama_checkpoint(tmp_path_factory.mktemp("poison") / "tiny", seed=5, with_tokenizer=False)
    return lambda: MeshModelRunner.from_checkpoint(path, mesh="1x2", backend="sim", dtype="float32", page_size=16,
                                                   num_pages=64, max_batch=4)


async def test_max_uint64_seed_through_router_and_replica_on_the_real_model(model_runner):
    """The request that once killed every replica it reached: served, twice the same, on a 1x2 mesh."""
    runner = model_runner()
    card = ModelCard("tiny", runner.info.vocab_size, 256, 16)
    engine = AsyncEngine(runner, None, EngineConfig(max_batch=4, prefill_chunk=16))
    engine.start()
    replica = await start_replica_server(engine, card, "replica-0",
                                         lambda: ReplicaEntry("replica-0", "", "ready"))
    router = Router(RouterConfig(refresh_s=0.05), StaticSource(RoutingTable(
        card, (ReplicaEntry("replica-0", f"127.0.0.1:{replica.port}", "ready"),))))
    server = await start_router_server(router, "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.GenerationStub(channel)
    try:
        def req(seed):
            return pb.GenerateRequest(token_ids=pb.TokenIds(ids=[11, 12, 13, 14]), stream=True, sampling=pb.SamplingParams(
                temperature=0.9, top_k=20, seed=seed, max_tokens=6, ignore_eos=True))

        outputs = []
        for seed in (MAX_SEED, MAX_SEED, 2**63, 2**63 + 12345):
            last = None
            async for resp in stub.Generate(req(seed), timeout=120):
                last = resp
            assert last.complete.finish_reason == pb.LENGTH and len(last.complete.output_ids) == 6
            outputs.append(list(last.complete.output_ids))
        assert outputs[0] == outputs[1]                   # deterministic
        assert outputs[2] != outputs[3]                   # high seeds still differ from each other
        assert engine.liveness().alive and engine.stats().free_pages == 64
    finally:
        await channel.close()
        await server.stop(0)
        await router.stop()
        await replica.stop(0)
        engine.shutdown()


def test_every_list_field_is_bounded_and_abort_ids_are_checked():
    from ttdist.runtime.request_checks import RequestError, check_abort, check_request

    card = ModelCard("m", 100, 64)
    req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2]), sampling=pb.SamplingParams(
        stop_token_ids=[3] * (card.max_stop_token_ids + 1)))
    with pytest.raises(RequestError, match=r"sampling.stop_token_ids: at most 256 ids, got 257"):
        check_request(req, card)
    with pytest.raises(RequestError, match="request_id: longer than 256 characters"):
        check_abort(pb.AbortRequest(request_id="x" * 257))
    resumed = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2]), resume=pb.Resume(generated_tokens=2))
    with pytest.raises(RequestError, match=r"resume.generated_tokens: must be in \[0, 2\)"):
        check_request(resumed, card)
    text = pb.GenerateRequest(text="hi", resume=pb.Resume(generated_tokens=1))
    with pytest.raises(RequestError, match="resume: a resumed generation gives its prompt"):
        check_request(text, card)
