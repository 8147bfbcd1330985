"""The router's one stream per replica: a step's tokens travel together, requests stay apart."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.support.scripted import expected_tokens
from tests.support.generation import collect, request
from ttdist.router.replica_link import ReplicaLink
from ttdist.runtime.scripted_engine import ScriptedEngineConfig


async def test_one_message_per_engine_step_carries_every_request(make_stack):
    stack = await make_stack(1, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.01))
    prompts = [[40 + i, 7] for i in range(8)]
    results = await asyncio.gather(*(collect(stack.stub, request(p, 20)) for p in prompts))
    for prompt, (ids, complete) in zip(prompts, results):
        assert ids == expected_tokens(prompt, 20) and list(complete.output_ids) == ids
    (link,) = stack.router.replicas.links.values()
    assert link.entries_received == 8 * (20 + 1)   # per request: a chunk per token, then the Complete
    # 8 prefills and ~19 shared decode steps, not one message per token per request
    assert link.batches_received <= 8 + 22, link.batches_received
    assert link.open_requests == 0


async def test_a_refused_request_fails_alone_on_the_shared_stream(make_stack):
    stack = await make_stack(1, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.01))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.replica_servers[0].port}") as channel:
        link = ReplicaLink(channel)
        good = link.generate(request([3, 4], 30))
        first = await good.__anext__()
        assert first.WhichOneof("kind") == "chunk"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in link.generate(request([1, 5000], 4)):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "token_ids" in info.value.details()
        ids = list(first.chunk.token_ids)
        async for entry in good:
            if entry.WhichOneof("kind") == "chunk":
                ids += entry.chunk.token_ids
            else:
                assert list(entry.complete.output_ids) == ids == expected_tokens([3, 4], 30)
        await link.close()


async def test_a_cancelled_request_and_a_closed_stream_free_the_replica(make_stack):
    stack = await make_stack(1, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.01))
    engine = stack.engines[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.replica_servers[0].port}") as channel:
        link = ReplicaLink(channel)
        subs = [link.generate(request([9, i], 400)) for i in range(3)]
        for sub in subs:
            await sub.__anext__()
        assert engine.stats().running == 3
        assert subs[0].cancel() and not subs[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await subs[0].__anext__()
        await wait_for(lambda: engine.stats().running == 2)
        await link.close()   # the router going away aborts everything it had open there
        await wait_for(lambda: engine.stats().running == 0)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in subs[1]:   # what had arrived, then the link's failure
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert link.broken


async def wait_for(condition, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    assert condition()
