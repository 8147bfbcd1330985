"""Streams that fall behind catch up in one message: the scripted engine and the router's link
hand a reader every chunk waiting for it at once, so a slow stream costs a message per read,
not per token; the chunks still add up to the whole output."""

from __future__ import annotations

import asyncio

from tests.support.scripted import expected_tokens
from tests.support.generation import request
from ttdist.engine.request import GenerationRequest, SamplingParams
from ttdist.router.replica_link import SubStream
from ttdist.runtime.scripted_engine import ScriptedEngine, ScriptedEngineConfig
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import replica_pb2 as rpb


class _Link:
    def drop(self, key, tell_replica):
        pass


async def test_substream_hands_over_the_chunks_queued_behind_up_to_the_complete():
    sub = SubStream(_Link(), 1, None)
    for i in range(3):
        sub.push(rpb.StreamEntry(key=1, chunk=pb.Chunk(token_ids=[i], text=str(i))))
    sub.push(rpb.StreamEntry(key=1, complete=pb.Complete(output_ids=[0, 1, 2], text="012")))
    first = await sub.__anext__()
    assert list(first.chunk.token_ids) == [0]
    assert [list(c.token_ids) for c in sub.take_ready_chunks()] == [[1], [2]]
    assert sub.take_ready_chunks() == []                       # a Complete is never taken as a chunk
    assert (await sub.__anext__()).WhichOneof("kind") == "complete"


async def test_scripted_engine_reader_behind_gets_the_waiting_tokens_as_one():
    engine = ScriptedEngine(ScriptedEngineConfig(vocab_size=1000))
    engine.start()
    try:
        outputs = engine.generate(GenerationRequest("r", prompt_token_ids=[5, 6], sampling=SamplingParams(max_tokens=10)))
        first = await outputs.__anext__()          # submits; the engine runs to the end meanwhile
        await asyncio.sleep(0.05)
        rest = [out async for out in outputs]
        assert len(rest) == 1 and rest[0].finished
        assert first.token_ids + rest[0].token_ids == rest[0].output_ids == expected_tokens([5, 6], 10)
    finally:
        engine.shutdown()


async def test_routed_chunks_add_up_to_the_output_when_the_engine_outruns_the_router(make_stack):
    stack = await make_stack(2)     # zero-cost steps: tokens arrive faster than one per read
    reqs = [request([5 + i, 6], 200) for i in range(8)]

    async def one(req):
        ids, text, complete, messages = [], "", None, 0
        async for resp in stack.stub.Generate(req):
            messages += 1
            if resp.WhichOneof("kind") == "chunk":
                ids += resp.chunk.token_ids
                text += resp.chunk.text
            else:
                complete = resp.complete
        return ids, text, complete, messages

    for req, (ids, text, complete, messages) in zip(reqs, await asyncio.gather(*(one(r) for r in reqs))):
        assert ids == list(complete.output_ids) == expected_tokens(list(req.token_ids.ids), 200)
        assert text == complete.text and messages <= 201
