"""Logprobs continuity across a migration: a replica whose engine fails mid-stream hands its
requests to the other; the client's chunks carry one logprob per token with no gap or duplicate,
the ``Complete`` holds them all, and they equal an unmoved run's (tiny Llama, two real engines)."""

from __future__ import annotations

import pytest

from tests.support.stack import make_stack
from ttdist.engine.config import EngineConfig
from ttdist.engine.engine import AsyncEngine
from ttdist.engine.faults import EngineFaults
from ttdist.runtime.request_checks import ModelCard
from ttdist.v1 import generation_pb2 as pb

pytest.importorskip("torch")

PROMPTS = [[11 + i, 200 + i, 3000 + i, 5 + i] for i in range(4)]
TOKENS = 12


def _engine(path, faults: EngineFaults = EngineFaults()) -> AsyncEngine:
    from ttdist.model.runner import MeshModelRunner

    runner = MeshModelRunner.from_checkpoint(path, mesh="1x2", dtype="float32", page_size=16, num_pages=32, max_batch=4,
                                             max_context=256)
    return AsyncEngine(runner, None, EngineConfig(max_batch=4, prefill_chunk=16, faults=faults))


def _request(i: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(request_id=f"m{i}", token_ids=pb.TokenIds(ids=PROMPTS[i]), stream=True,
                              sampling=pb.SamplingParams(max_tokens=TOKENS, ignore_eos=True, logprobs=2, prompt_logprobs=1))


async def _collect(stub, i: int):
    chunks, complete = [], None
    async for resp in stub.Generate(_request(i)):
        if resp.WhichOneof("kind") == "chunk":
            chunks.append(resp.chunk)
        else:
            complete = resp.complete
    return chunks, complete


async def test_logprobs_stay_continuous_when_a_request_moves(tiny_checkpoint):
    import asyncio

    card = ModelCard("tiny-llama", vocab_size=49152, max_context=256, page_size=16)
    alone = await make_stack(lambda i: _engine(tiny_checkpoint), 1, card=card)
    try:
        want = [await _collect(alone.stub, i) for i in range(len(PROMPTS))]
    finally:
        await alone.close()
    # replica 0 fails after its prefills and a few decode steps: its requests move to replica 1
    stack = await make_stack(lambda i: _engine(tiny_checkpoint, EngineFaults(raise_after_steps=6) if i == 0 else EngineFaults()),
                             2, card=card)
    try:
        got = await asyncio.gather(*(_collect(stack.stub, i) for i in range(len(PROMPTS))))
        assert stack.router.report_snapshot().migrations_total >= 1
    finally:
        await stack.close()
    for (chunks, complete), (want_chunks, want_complete) in zip(got, want):
        ids = [t for c in chunks for t in c.token_ids]
        streamed = [lp for c in chunks for lp in c.logprobs]
        assert ids == list(complete.output_ids) == list(want_complete.output_ids)
        assert [lp.token_id for lp in streamed] == ids == [lp.token_id for lp in complete.logprobs]
        for a, b in zip(complete.logprobs, want_complete.logprobs):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
            assert [t.token_id for t in a.top] == [t.token_id for t in b.top]
        assert [lp.token_id for lp in complete.prompt_logprobs] == [lp.token_id for lp in want_complete.prompt_logprobs]
        assert sum(len(c.prompt_logprobs) for c in chunks) == len(PROMPTS[0]) - 1   # sent once, not again after a move
