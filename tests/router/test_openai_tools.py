"""Tool calls and structured outputs through the OpenAI API, with the official ``openai`` client,
on SmolLM2 (mesh simulator) behind a real router and replica server.

The tools round trip (call, tool result, answer) with ``tool_choice: required`` and with a named
tool; streamed ``delta.tool_calls`` reassemble into the same call; ``response_format`` with a
JSON schema gives JSON that validates; vLLM's ``guided_choice`` answers one of the choices; a
schema that does not compile and a ``tool_choice`` naming an absent tool are 400s naming the field.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.support.stack import make_stack
from ttdist.router.chat import ChatPrompter
from ttdist.router.openai import OpenAIServer, start_http_server
from ttdist.runtime.request_checks import ModelCard

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a time zone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 24}},
                   "required": ["timezone"]}}}
ASK = [{"role": "system", "content": "You are a helpful assistant with tools."},
       {"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def smollm2():
    from ttdist.engine.tokenizer import Tokenizer
    from ttdist.model.runner import MeshModelRunner
    from ttdist.model.smollm2 import materialize

    path = materialize()
    runner = MeshModelRunner.from_checkpoint(path, mesh="1x1", backend="sim", dtype="float32", page_size=32,
                                             num_pages=64, max_batch=4)
    return path, runner, Tokenizer.from_dir(path)


@pytest.fixture
async def client(smollm2):
    from ttdist.engine.engine import AsyncEngine

    path, runner, tokenizer = smollm2
    card = ModelCard("smollm2", vocab_size=runner.info.vocab_size, max_context=runner.info.max_context)
    stack = await make_stack(lambda i: AsyncEngine(runner, tokenizer), 1, card=card, tokenizer=tokenizer)
    http = await start_http_server(OpenAIServer(stack.router, ChatPrompter.load(path, tokenizer)), "127.0.0.1", 0)
    yield openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{http.port}/v1", api_key="unused", max_retries=0)
    await http.stop()
    await stack.close()


def _check_call(call, tool: dict) -> dict:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == tool["function"]["name"]
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, tool["function"]["parameters"])
    return arguments


async def test_tools_round_trip_with_required_and_named_choices(client):
    first = await client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER, TIME],
                                                 tool_choice="required", max_tokens=60, temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name in ("get_weather", "get_time")
    _check_call(call, WEATHER if call.function.name == "get_weather" else TIME)

    named = await client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER, TIME], max_tokens=60,
                                                 tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = named.choices[0].message.tool_calls[0]
    arguments = _check_call(call, WEATHER)
    assert named.choices[0].finish_reason == "tool_calls"

    follow = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"city": arguments["city"],
                                                                                      "temperature": 18, "sky": "sunny"})}]
    answer = await client.chat.completions.create(model="smollm2", messages=follow, tools=[WEATHER, TIME],
                                                  tool_choice="none", max_tokens=24, temperature=0)
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content.strip() and answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens   # the call and its result were rendered


async def test_streamed_tool_call_deltas_reassemble(client):
    kwargs = dict(model="smollm2", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=60, temperature=0)
    whole = (await client.chat.completions.create(**kwargs)).choices[0].message.tool_calls[0]
    calls: dict[int, dict] = {}
    reasons, content = [], ""
    async for event in await client.chat.completions.create(stream=True, **kwargs):
        for c in event.choices:
            content += c.delta.content or ""
            for part in c.delta.tool_calls or ():
                entry = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = part.id or entry["id"]
                entry["name"] += (part.function.name or "") if part.function else ""
                entry["arguments"] += (part.function.arguments or "") if part.function else ""
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert reasons == ["tool_calls"] and content == "" and list(calls) == [0]
    assert calls[0]["id"].startswith("call_") and calls[0]["name"] == whole.function.name
    assert json.loads(calls[0]["arguments"]) == json.loads(whole.function.arguments)


async def test_structured_outputs_on_chat_and_completions(client):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 30},
                                               "confidence": {"type": "integer", "minimum": 0, "maximum": 100}},
              "required": ["answer", "confidence"], "additionalProperties": False}
    done = await client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(done.choices[0].message.content), schema)
    assert done.choices[0].finish_reason == "stop"

    choices = ["positive", "negative", "neutral"]
    for _ in range(2):
        text = (await client.completions.create(model="smollm2", prompt="Review: I loved it! Sentiment:", max_tokens=8,
                                                temperature=0.9, extra_body={"guided_choice": choices})).choices[0].text
        assert text in choices
    digits = await client.completions.create(model="smollm2", prompt="Year of the moon landing:", max_tokens=8,
                                             extra_body={"structured_outputs": {"regex": "[0-9]{4}"}})
    assert digits.choices[0].text.isdigit() and len(digits.choices[0].text) == 4


async def test_bad_constraints_and_absent_tools_are_400s_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=4, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}})
    assert "sampling.structured_output" in err.value.message and "frob" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        await client.completions.create(model="smollm2", prompt="x", max_tokens=4, extra_body={"guided_regex": "a(b"})
    assert "sampling.structured_output" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER], max_tokens=4,
                                             tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert err.value.body["param"] == "tool_choice" and "get_time" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=4, response_format={"type": "json_object"},
                                             extra_body={"guided_regex": "a+"})
    assert err.value.body["param"] == "guided_regex"
