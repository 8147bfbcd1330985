"""The engine on the real model runner (tiny random Llama, fp32, mesh simulator).

Under continuous batching, with chunked prompts, shared prefixes and preemption, every greedy
request must produce exactly the tokens it produces when it runs alone.
"""

from __future__ import annotations

import random

from ttdist.engine.config import EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.request import FinishReason, GenerationRequest, RequestOutput, SamplingParams

PAGE = 16


def make_runner(path, num_pages: int, max_batch: int = 8):
    from ttdist.model.runner import MeshModelRunner

    return MeshModelRunner.from_checkpoint(
        path, mesh="1x1", backend="sim", dtype="float32", page_size=PAGE, num_pages=num_pages, max_batch=max_batch
    )


def drain(core: EngineCore) -> dict[str, RequestOutput]:
    final: dict[str, RequestOutput] = {}
    while core.has_work():
        for out in core.step():
            if out.finished:
                final[out.request_id] = out
    return final


def workload() -> list[GenerationRequest]:
    rng = random.Random(3)
    shared = [rng.randrange(3, 49152) for _ in range(2 * PAGE + 5)]
    requests = []
    for i in range(8):
        head = shared if i % 3 == 0 else []
        ids = head + [rng.randrange(3, 49152) for _ in range(rng.randrange(1, 50))]
        sampling = SamplingParams(max_tokens=rng.randrange(2, 30), ignore_eos=True)
        requests.append(GenerationRequest(f"r{i}", prompt_token_ids=ids, sampling=sampling))
    return requests


def test_continuous_batching_equals_each_request_alone(tiny_checkpoint):
    requests = workload()
    alone_runner = make_runner(tiny_checkpoint, num_pages=16)
    alone = {}
    for req in requests:
        core = EngineCore(alone_runner, None, EngineConfig(prefill_chunk=4 * PAGE, prefix_caching=False))
        core.add_request(req)
        alone[req.request_id] = drain(core)[req.request_id].output_ids

    # few pages and small chunks: prompts run in chunks, share cached pages, and get preempted
    batched_runner = make_runner(tiny_checkpoint, num_pages=10, max_batch=6)
    core = EngineCore(batched_runner, None, EngineConfig(max_batch=6, prefill_chunk=PAGE))
    for req in requests:
        core.add_request(req)
    batched = drain(core)

    stats = core.stats()
    assert stats.preemptions_total > 0
    assert stats.cached_tokens_total > 0
    assert max(len(r.prompt_token_ids) for r in requests) > PAGE          # chunked prefill happened
    for req in requests:
        out = batched[req.request_id]
        assert out.finish_reason is FinishReason.LENGTH
        assert out.output_ids == alone[req.request_id], req.request_id
    assert any(batched[r.request_id].usage.cached_tokens > 0 for r in requests)
    assert stats.free_pages == stats.total_pages


def test_seeded_sampling_is_reproducible_across_batches(tiny_checkpoint):
    runner = make_runner(tiny_checkpoint, num_pages=16)
    sampling = SamplingParams(temperature=0.9, top_k=50, top_p=0.9, seed=1234, max_tokens=8, ignore_eos=True)
    core = EngineCore(runner, None, EngineConfig(prefill_chunk=2 * PAGE))
    core.add_request(GenerationRequest("solo", prompt_token_ids=[5, 6, 7, 8], sampling=sampling))
    solo = drain(core)["solo"].output_ids
    core.add_request(GenerationRequest("a", prompt_token_ids=[9, 10], sampling=SamplingParams(max_tokens=8)))
    core.add_request(GenerationRequest("b", prompt_token_ids=[5, 6, 7, 8], sampling=sampling))
    assert drain(core)["b"].output_ids == solo


def test_repeated_prompt_reuses_cached_pages_with_the_same_output(tiny_checkpoint):
    core = EngineCore(make_runner(tiny_checkpoint, num_pages=16), None, EngineConfig(prefill_chunk=4 * PAGE))
    ids = list(range(100, 100 + 3 * PAGE + 7))
    sampling = SamplingParams(max_tokens=6, ignore_eos=True)
    core.add_request(GenerationRequest("first", prompt_token_ids=ids, sampling=sampling))
    first = drain(core)["first"]
    core.add_request(GenerationRequest("again", prompt_token_ids=ids, sampling=sampling))
    again = drain(core)["again"]
    assert (first.usage.cached_tokens, again.usage.cached_tokens) == (0, 3 * PAGE)
    assert again.output_ids == first.output_ids
