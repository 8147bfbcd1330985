"""The asyncio AsyncClient against a real gRPC server over the scripted backend."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from tests.support.scripted_generation import MODEL_ID, expected_ids, expected_text

from ttdist.client import (
    AsyncClient,
    Cancelled,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    Overloaded,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)

FAST_RETRY = RetryPolicy(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.05)


async def wait_for(server, predicate, timeout: float = 10.0) -> bool:
    return await asyncio.to_thread(server.wait_for, predicate, timeout)


async def test_generate_and_stream_agree(scripted):
    server = scripted()
    async with AsyncClient(server.address) as client:
        done = await client.generate("hello", max_tokens=4, request_id="a1")
        stream = client.stream("hello", max_tokens=4)
        chunks = [c async for c in stream]
    assert done.request_id == "a1"
    assert done.token_ids == tuple(expected_ids(5, 4)) == tuple(c.token_ids[0] for c in chunks)
    assert done.text == "".join(c.text for c in chunks) == stream.completion.text == expected_text(5, 4)
    assert [r.stream for r in server.seen.requests] == [False, True]


async def test_breaking_and_aclose_cancel_on_the_server(scripted):
    server = scripted(token_delay_s=0.05)
    async with AsyncClient(server.address) as client:
        stream = client.stream("hello", max_tokens=200, request_id="early")
        async for _ in stream:
            break
        await stream.aclose()
        assert await wait_for(server, lambda seen: "early" in seen.cancelled)
        with pytest.raises(Cancelled):
            await stream.final()
        async with client.stream("hello", max_tokens=200, request_id="ctx") as s2:
            await s2.__anext__()
        assert await wait_for(server, lambda seen: "ctx" in seen.cancelled)
    assert server.seen.completed == []


async def test_cancelling_the_task_cancels_on_the_server(scripted):
    server = scripted(token_delay_s=0.05)
    async with AsyncClient(server.address) as client:
        task = asyncio.create_task(client.generate("hello", max_tokens=200, request_id="task"))
        assert await wait_for(server, lambda seen: seen.active == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await wait_for(server, lambda seen: "task" in seen.cancelled)


async def test_abort_by_id(scripted):
    server = scripted(token_delay_s=0.02)
    async with AsyncClient(server.address) as client:
        stream = client.stream("hello", max_tokens=500, request_id="to-abort")
        await stream.__anext__()
        assert await client.abort("to-abort") is True
        assert (await stream.final()).finish_reason == "abort"


async def test_retries_then_succeeds_and_gives_up(scripted):
    server = scripted(unavailable_first=2)
    async with AsyncClient(server.address, retry=FAST_RETRY) as client:
        done = await client.generate("hello", max_tokens=2, request_id="r")
        assert done.text == expected_text(5, 2)
        assert [r.request_id for r in server.seen.requests] == ["r"] * 3
    server = scripted(unavailable_first=100)
    async with AsyncClient(server.address, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01)) as client:
        with pytest.raises(Unavailable, match="2 attempts"):
            await client.generate("hello")
    assert len(server.seen.requests) == 2


async def test_no_retry_once_tokens_have_arrived(scripted):
    server = scripted(unavailable_after_tokens=1)
    async with AsyncClient(server.address, retry=FAST_RETRY) as client:
        got = []
        with pytest.raises(Unavailable, match="replica lost"):
            async for chunk in client.stream("hello", max_tokens=5):
                got.append(chunk.token_ids[0])
    assert got == expected_ids(5, 1)
    assert len(server.seen.requests) == 1


async def test_deadline(scripted):
    server = scripted(token_delay_s=0.2)
    async with AsyncClient(server.address, timeout=0.4) as client:
        with pytest.raises(DeadlineExceeded):
            await client.generate("hello", max_tokens=50, request_id="slow")
    assert await wait_for(server, lambda seen: "slow" in seen.cancelled)


@pytest.mark.parametrize("code, exc", [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
    (grpc.StatusCode.NOT_FOUND, NotFound),
    (grpc.StatusCode.PERMISSION_DENIED, Unauthenticated),
])
async def test_typed_exceptions(scripted, code, exc):
    server = scripted(error=(code, "scripted message"))
    async with AsyncClient(server.address) as client:
        with pytest.raises(exc) as info:
            await client.generate("hello", request_id="typed")
    assert (info.value.message, info.value.code, info.value.request_id) == ("scripted message", code, "typed")


async def test_bearer_token_and_unary_calls(scripted):
    server = scripted(required_token="tok")
    async with AsyncClient(server.address, token="tok") as client:
        await client.generate("hi", max_tokens=1)
        assert [m.id for m in await client.models()] == [MODEL_ID]
        status = await client.cluster_status()
        assert [r.replica_id for r in status.replicas] == ["r0", "r1"]
        assert await client.health() == "SERVING"
        await client.wait_ready(timeout=5)
    assert server.seen.metadata[0]["authorization"] == "Bearer tok"


async def test_batch_concurrency_limit_and_order(scripted):
    server = scripted(hold_until_active=4, token_delay_s=0.01)
    prompts = ["b" * n for n in range(1, 13)]
    async with AsyncClient(server.address) as client:
        done = await client.generate_batch(prompts, concurrency=4, max_tokens=2)
    assert [d.text for d in done] == [expected_text(n, 2) for n in range(1, 13)]
    assert server.seen.peak_active == 4


async def test_batch_errors(scripted):
    server = scripted(error=(grpc.StatusCode.NOT_FOUND, "gone"))
    async with AsyncClient(server.address) as client:
        out = await client.generate_batch(["a", "b", "c"], concurrency=2, return_exceptions=True)
        assert [type(e) for e in out] == [NotFound] * 3
        with pytest.raises(NotFound, match="gone"):
            await client.generate_batch(["a", "b"])


async def test_bad_arguments_fail_before_any_call(scripted):
    server = scripted()
    async with AsyncClient(server.address) as client:
        with pytest.raises(InvalidRequest) as info:
            await client.generate("x", top_p=-1)
        assert info.value.field == "top_p"
        with pytest.raises(InvalidRequest):
            client.stream()
    assert server.seen.requests == []
