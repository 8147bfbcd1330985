"""Stream interval: at most one chunk per K tokens or T ms, first token at once, nothing lost."""

from __future__ import annotations

import grpc
import pytest

from tests.support.scripted import expected_tokens
from tests.support.generation import request
from ttdist.router.stream_interval import ChunkMerger, StreamInterval
from ttdist.runtime.scripted_engine import ScriptedEngineConfig
from ttdist.v1 import generation_pb2 as pb

# a 5 ms step: the router reads each token before the next one exists, so chunk sizes are exact
# (a reader that falls behind takes every waiting token at once: test_coalescing.py)
PACED = ScriptedEngineConfig(vocab_size=1000, step_s=0.005)


async def chunks_of(stub, req):
    sizes, ids, text, complete = [], [], "", None
    async for resp in stub.Generate(req):
        if resp.WhichOneof("kind") == "chunk":
            sizes.append(len(resp.chunk.token_ids))
            ids += resp.chunk.token_ids
            text += resp.chunk.text
        else:
            complete = resp.complete
    return sizes, ids, text, complete


async def test_server_interval_merges_chunks_and_keeps_every_token(make_stack):
    stack = await make_stack(1, engine=PACED, stream_interval=StreamInterval(tokens=4))
    sizes, ids, text, complete = await chunks_of(stack.stub, request([5, 6], 10))
    want = expected_tokens([5, 6], 10)
    assert sizes == [1, 4, 4, 1]            # the first token at once; the rest before the Complete
    assert ids == want == list(complete.output_ids) and text == complete.text


async def test_a_request_sets_its_own_interval(make_stack):
    stack = await make_stack(1, engine=PACED)
    req = request([5, 6], 10)
    assert (await chunks_of(stack.stub, req))[0] == [1] * 10    # the default: every token
    req.stream_interval.tokens = 3
    assert (await chunks_of(stack.stub, req))[0] == [1, 3, 3, 3]
    req.stream_interval.tokens, req.stream_interval.ms = 0, 60000    # time only: nothing is due before the end
    sizes, ids, _, _ = await chunks_of(stack.stub, req)
    assert sizes == [1, 9] and ids == expected_tokens([5, 6], 10)


async def test_a_bad_interval_is_invalid_argument(make_stack):
    stack = await make_stack(1)
    req = request([5, 6], 4)
    req.stream_interval.tokens = 5000
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await chunks_of(stack.stub, req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "stream_interval.tokens" in info.value.details()


def test_merger_sends_on_time_as_well_as_on_count():
    now = [0.0]
    merger = ChunkMerger(StreamInterval(tokens=8, ms=50), clock=lambda: now[0])
    sent = []
    for t in range(6):
        now[0] = t * 0.02
        chunk = merger.add(pb.Chunk(token_ids=[t], text=f"{t}"))
        sent.append(None if chunk is None else list(chunk.token_ids))
    # t=0 at once; 50 ms after it the chunk at 60 ms takes 1, 2, 3; the next is due at 110 ms
    assert sent == [[0], None, None, [1, 2, 3], None, None]
    assert list(merger.flush().token_ids) == [4, 5] and merger.flush() is None
