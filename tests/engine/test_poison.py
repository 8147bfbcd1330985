"""No poison requests: a hostile field or a failure of one request ends that request alone.

The full uint64 seed range reaches the real model runner (which samples with int64 arrays)
through a real router and replica over gRPC; an engine error caused in one request's output
step ends it with INTERNAL while the requests batched with it finish exactly.
"""

from __future__ import annotations

import asyncio

import pytest

from ttdist.engine import AsyncEngine, EngineConfig, FinishReason
from ttdist.engine.faults import EngineFaults
from ttdist.runtime.request_checks import ModelCard
from ttdist.v1 import generation_pb2 as pb

from tests.support.engine_fakes import FakeRunner, reference_output
from tests.support.engine_requests import outputs, request
from tests.support.stack import make_stack

MAX_SEED = 2**64 - 1


async def test_one_failing_request_ends_alone_and_the_batch_goes_on():
    runner = FakeRunner(page_size=4, num_pages=64, max_batch=8)
    engine = AsyncEngine(runner, None, EngineConfig(max_batch=8, prefill_chunk=8,
                                                    faults=EngineFaults(fail_request_prefix="poison")))
    engine.start()
    try:
        prompts = {f"ok{i}": [i + 1, i + 2, i + 3] for i in range(5)}
        jobs = [outputs(engine, request(name, ids, 12)) for name, ids in prompts.items()]
        jobs.insert(2, outputs(engine, request("poison-1", [9, 9, 9], 12)))
        results = await asyncio.gather(*jobs)
        poisoned = results.pop(2)
        assert poisoned[-1].finished and poisoned[-1].finish_reason is FinishReason.ABORT
        assert poisoned[-1].request_error == "InjectedFault: injected fault in request 'poison-1'"
        assert poisoned[-1].error is None                       # the engine itself did not fail
        for (name, ids), outs in zip(prompts.items(), results):
            assert outs[-1].finish_reason is FinishReason.LENGTH
            assert outs[-1].output_ids == reference_output(runner, ids, 12), name
        # the engine still serves, and the poisoned request's pages came back
        again = await outputs(engine, request("after", [5, 6], 4))
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
        a = await outputs(engine, request("a", [3, 4], 6, seed=MAX_SEED, **seeded))
        b = await outputs(engine, request("b", [3, 4], 6, seed=MAX_SEED, **seeded))
        c = await outputs(engine, request("c", [3, 4], 6, seed=2**63 - 1, **seeded))   # MAX_SEED % 2**63
        assert a[-1].output_ids == b[-1].output_ids == c[-1].output_ids
        assert a[-1].finish_reason is FinishReason.LENGTH
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def model_runner(tiny_checkpoints):
    from ttdist.model.runner import MeshModelRunner

    path = tiny_checkpoints(seed=5, with_tokenizer=False)
    return lambda: MeshModelRunner.from_checkpoint(path, mesh="1x2", backend="sim", dtype="float32", page_size=16,
                                                   num_pages=64, max_batch=4)


async def test_max_uint64_seed_through_router_and_replica_on_the_real_model(model_runner):
    """The request that once killed every replica it reached: served, twice the same, on a 1x2 mesh."""
    runner = model_runner()
    card = ModelCard("tiny", runner.info.vocab_size, 256, 16)
    stack = await make_stack(lambda i: AsyncEngine(runner, None, EngineConfig(max_batch=4, prefill_chunk=16)), card=card)
    engine, stub = stack.engines[0], stack.stub
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
        await stack.close()


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
