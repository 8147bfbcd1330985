"""The OpenAI HTTP API over a router in front of scripted replicas, with the official client."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from tests.support.scripted import expected_tokens
from tests.support.waiting import wait_for_async
from ttdist.router.openai import OpenAIServer, start_http_server
from ttdist.runtime.scripted_engine import ScriptedEngineConfig


def scripted_text(ids):
    return "".join(f" t{i}" for i in ids)


@pytest.fixture
async def http(make_stack):
    servers = []

    async def build(n=1, engine=None, router_options=None, **server_options):
        stack = await make_stack(n=n, **({"engine": engine} if engine else {}), **(router_options or {}))
        running = await start_http_server(OpenAIServer(stack.router, **server_options), "127.0.0.1", 0)
        servers.append(running)
        return stack, f"http://127.0.0.1:{running.port}"

    yield build
    for s in servers:
        await s.stop()


async def test_completions_with_the_openai_client(http):
    stack, url = await http(n=2)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
    prompt = [5, 6, 7]
    want = scripted_text(expected_tokens(prompt, 6))
    done = await client.completions.create(model="scripted", prompt=prompt, max_tokens=6, temperature=0)
    assert done.object == "text_completion" and done.model == "scripted"
    assert [c.text for c in done.choices] == [want] and done.choices[0].finish_reason == "length"
    assert done.usage.prompt_tokens == 3 and done.usage.completion_tokens == 6 and done.usage.total_tokens == 9
    assert done.usage.prompt_tokens_details.cached_tokens == 0

    two = await client.completions.create(model="scripted", prompt=[[1, 2], [3, 4, 5]], max_tokens=4, n=2)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]
    assert [c.text for c in two.choices] == [scripted_text(expected_tokens([1, 2], 4))] * 2 + \
        [scripted_text(expected_tokens([3, 4, 5], 4))] * 2
    assert two.usage.prompt_tokens == 5 and two.usage.completion_tokens == 16

    parts, reasons, usage = {}, {}, None
    stream = await client.completions.create(model="scripted", prompt=prompt, max_tokens=6, n=2, stream=True,
                                             stream_options={"include_usage": True})
    async for event in stream:
        if event.usage is not None:
            usage = event.usage
            assert event.choices == []
        for c in event.choices:
            parts[c.index] = parts.get(c.index, "") + c.text
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    assert parts == {0: want, 1: want} and reasons == {0: "length", 1: "length"}
    assert usage.completion_tokens == 12 and usage.prompt_tokens == 3

    models = await client.models.list()
    assert [m.id for m in models.data] == ["scripted"]
    assert (await client.models.retrieve("scripted")).id == "scripted"


async def test_raw_sse_ends_with_done_and_stop_token_ids_apply(http):
    stack, url = await http()
    prompt = [9, 8]
    ids = expected_tokens(prompt, 8)
    body = {"prompt": prompt, "max_tokens": 8, "stream": True, "stop_token_ids": [ids[3]]}
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/completions", json=body) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            raw = (await r.read()).decode()
    events = [e.removeprefix("data: ") for e in raw.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    objects = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in o for o in objects)
    assert "".join(o["choices"][0]["text"] for o in objects) == scripted_text(ids[:4])
    assert objects[-1]["choices"][0]["finish_reason"] == "stop"


async def test_chat_without_a_template_is_a_clear_400(http):
    stack, url = await http()
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}])
    assert "chat template" in info.value.message and info.value.body["param"] == "messages"


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": [1, 2], "temperature": -1}, 400, "temperature"),
    ({"prompt": [1, 2], "temperature": "hot"}, 400, "temperature"),
    ({"prompt": [1, 2], "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": [1, 2], "max_tokens": 100000}, 400, "sampling.max_tokens"),
    ({"prompt": [1, 2], "n": 0}, 400, "n"),
    ({"prompt": [1, 2], "seed": -3}, 400, "seed"),
    ({"prompt": [1, 2], "logprobs": 21}, 400, "logprobs"),
    ({"prompt": [1, 2], "echo": 1}, 400, "echo"),
    ({"prompt": [1, 2], "presence_penalty": 2.5}, 400, "presence_penalty"),
    ({"prompt": [1, 2], "logit_bias": {"5": 101}}, 400, "logit_bias"),
    ({"prompt": [1, 2], "logit_bias": {"x": 1}}, 400, "logit_bias"),
    ({"prompt": [1, 2], "repetition_penalty": 0}, 400, "repetition_penalty"),
    ({"prompt": [1, 2], "min_p": 1.5}, 400, "min_p"),
    ({"prompt": [1, 2], "logit_bias": {"99999": 1}}, 400, "sampling.logit_bias"),
    ({"prompt": [1, 2], "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": [1, 99999]}, 400, "token_ids"),
    ({"prompt": list(range(1, 600))}, 400, "input"),
    ({"max_tokens": 3}, 400, "prompt"),
    ({"prompt": [1, 2], "model": "gpt-9"}, 404, "model"),
])
async def test_bad_completion_requests_get_openai_errors(http, body, status, param):
    _, url = await http()
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/completions", json=body) as r:
            assert r.status == status
            err = (await r.json())["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"
    assert set(err) == {"message", "type", "param", "code"}


async def test_transport_level_errors_keep_the_error_shape(http):
    _, url = await http()
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/completions", data=b"{not json") as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"
        async with s.post(url + "/v1/completions", data=b"x" * (9 << 20)) as r:
            assert r.status == 413 and (await r.json())["error"]["code"] == "request_too_large"
        async with s.get(url + "/v1/nothing") as r:
            assert r.status == 404 and "error" in await r.json()
        async with s.get(url + "/v1/completions") as r:
            assert r.status == 405 and "error" in await r.json()
        async with s.get(url + "/v1/models/other") as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"


async def test_overload_and_no_replica_map_to_429_and_503(http):
    stack, url = await http()
    async with aiohttp.ClientSession() as s:
        stack.set_state(0, "failed")
        await stack.router.refresh()
        async with s.get(url + "/health") as r:
            assert r.status == 503
        async with s.post(url + "/v1/completions", json={"prompt": [1, 2]}) as r:
            assert r.status == 503 and (await r.json())["error"]["type"] == "service_unavailable_error"
        stack.set_state(0, "ready")
        await stack.router.refresh()
        async with s.get(url + "/health") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
    _, full = await http(router_options={"max_inflight": 0})
    async with aiohttp.ClientSession() as s:
        async with s.post(full + "/v1/completions", json={"prompt": [1, 2]}) as r:
            assert r.status == 429 and (await r.json())["error"]["type"] == "rate_limit_error"


async def test_a_client_that_goes_away_aborts_its_request(http):
    stack, url = await http(engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.02))
    engine = stack.engines[0]
    for body in ({"prompt": [1, 2, 3], "max_tokens": 500, "stream": True},
                 {"prompt": [1, 2, 3], "max_tokens": 500}):
        async with aiohttp.ClientSession() as s:
            if body.get("stream"):
                r = await s.post(url + "/v1/completions", json=body)
                assert (await r.content.readuntil(b"\n\n")).startswith(b"data: ")
                r.close()
            else:      # the answer comes only at the end: give up while it is running
                call = asyncio.ensure_future(s.post(url + "/v1/completions", json=body))
                await wait_for_async(lambda: engine.stats().running == 1, 30.0, "the condition", every=0.02)
                call.cancel()
        await wait_for_async(lambda: engine.stats().running == 0 and engine.stats().waiting == 0, 30.0,
                             "the condition", every=0.02)
        assert engine.stats().free_pages == engine.stats().total_pages
        assert not stack.router._streams


async def test_several_routers_serve_one_http_port(make_stack):
    first, second = await make_stack(n=1), await make_stack(n=1)
    a = await start_http_server(OpenAIServer(first.router), "127.0.0.1", 0)
    b = await start_http_server(OpenAIServer(second.router), "127.0.0.1", a.port)   # SO_REUSEPORT
    try:
        assert b.port == a.port
        await a.stop()       # the port keeps answering through the other router
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{a.port}/v1/completions", json={"prompt": [4, 5], "max_tokens": 3}) as r:
                assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 3
    finally:
        await b.stop()
