"""Penalties, biases and the model's generation defaults through the public APIs: real replicas
(AsyncEngine over the mesh runner: tiny random Llama, fp32 simulator) behind a real router, over
gRPC, the Python client and the real ``openai`` client (completions and chat), each output equal
to the engine's own for the same settings; a request moved to another replica mid-stream keeps
its penalties' effect; bad settings are refused naming the field while other requests go on."""

from __future__ import annotations

import asyncio
import time

import grpc
import openai
import pytest

from tests.support.stack import make_stack
from ttdist.engine import AsyncEngine, EngineConfig
from ttdist.engine.core import EngineCore
from ttdist.engine.request import GenerationRequest, SamplingParams
from ttdist.engine.tokenizer import Tokenizer
from ttdist.router.chat import ChatPrompter
from ttdist.router.openai import OpenAIServer, start_http_server
from ttdist.router.router import RouterConfig
from ttdist.runtime.generation_defaults import GenerationDefaults
from ttdist.runtime.request_checks import ModelCard
from ttdist.v1 import generation_pb2 as pb

pytest.importorskip("torch")

PROMPT = [5, 17, 17, 300, 5, 42, 9, 9]
N = 10
DEFAULTS = GenerationDefaults(temperature=0.0, repetition_penalty=1.7)
PAGE = 16


def make_runner(checkpoint, step_s: float = 0.0):
    from ttdist.model.runner import MeshModelRunner

    runner = MeshModelRunner.from_checkpoint(checkpoint, mesh="1x1", backend="sim", dtype="float32", page_size=PAGE,
                                             num_pages=64, max_batch=4)
    if step_s:  # slow enough that a test can stop a replica between two tokens
        decode = runner.decode
        runner.decode = lambda inp: (time.sleep(step_s), decode(inp))[1]
    return runner


def engine_output(checkpoint, prompt, tokenizer=None, **sampling) -> list[int]:
    """What the engine itself generates for these settings (no router, no API)."""
    core = EngineCore(make_runner(checkpoint), tokenizer, EngineConfig(max_batch=4, prefill_chunk=4 * PAGE))
    core.add_request(GenerationRequest("ref", prompt_token_ids=list(prompt), sampling=SamplingParams(**sampling)))
    while core.has_work():
        for out in core.step():
            if out.finished:
                return out.output_ids
    raise AssertionError("no output")


@pytest.fixture
async def served(tiny_checkpoint):
    tokenizer = Tokenizer.from_dir(tiny_checkpoint)
    card = ModelCard("tiny-llama", tokenizer.vocab_size, 512, PAGE, generation_defaults=DEFAULTS)
    engines = lambda i: AsyncEngine(make_runner(tiny_checkpoint, 0.05), tokenizer,  # noqa: E731
                                    EngineConfig(max_batch=4, prefill_chunk=4 * PAGE))
    stack = await make_stack(engines, 2, card=card, router_config=RouterConfig(refresh_s=0.05), tokenizer=tokenizer,
                             with_pids=True)
    from ttdist.model.smollm2 import tokenizer_dir

    chat = ChatPrompter.load(tiny_checkpoint, tokenizer, override=tokenizer_dir() / "chat_template.jinja")
    http = await start_http_server(OpenAIServer(stack.router, chat), "127.0.0.1", 0)
    stack.url = f"http://127.0.0.1:{http.port}/v1"
    stack.tokenizer, stack.chat = tokenizer, chat
    yield stack
    await http.stop()
    await stack.close()


def grpc_request(rid: str, **sampling) -> pb.GenerateRequest:
    return pb.GenerateRequest(request_id=rid, token_ids=pb.TokenIds(ids=PROMPT), stream=True,
                              sampling=pb.SamplingParams(max_tokens=N, ignore_eos=True, **sampling))


async def collect(stack, req, kill_after: int | None = None) -> tuple[list[int], pb.Complete, list[int]]:
    ids, complete, served = [], None, []
    async for resp in stack.stub.Generate(req, timeout=120):
        if resp.WhichOneof("kind") == "complete":
            complete = resp.complete
            continue
        ids.extend(resp.chunk.token_ids)
        if kill_after is not None and len(ids) >= kill_after and not served:
            served.append(stack.serving(req.request_id))
            await stack.replica_servers[served[0]].stop(0)
    return ids, complete, served


async def test_grpc_penalties_equal_the_engine_and_survive_migration(served, tiny_checkpoint):
    settings = dict(repetition_penalty=1.5, presence_penalty=0.6, frequency_penalty=0.4, logit_bias={77: 4.0, 300: -100.0})
    want = engine_output(tiny_checkpoint, PROMPT, max_tokens=N, ignore_eos=True, **settings)
    ids, complete, _ = await collect(served, grpc_request("g1", temperature=0.0, **settings))
    assert ids == want == list(complete.output_ids) and 300 not in ids
    moved, complete, stopped = await collect(served, grpc_request("g2", temperature=0.0, **settings), kill_after=4)
    assert stopped and complete.replica_id != f"replica-{stopped[0]}"  # it finished on the other replica
    assert moved == want


async def test_left_out_fields_take_the_models_generation_defaults(served, tiny_checkpoint):
    with_defaults = engine_output(tiny_checkpoint, PROMPT, max_tokens=N, ignore_eos=True, repetition_penalty=1.7)
    plain = engine_output(tiny_checkpoint, PROMPT, max_tokens=N, ignore_eos=True)
    assert with_defaults != plain
    ids, _, _ = await collect(served, grpc_request("d1"))
    assert ids == with_defaults
    ids, _, _ = await collect(served, grpc_request("d2", repetition_penalty=1.0))
    assert ids == plain
    models = await served.stub.ListModels(pb.ListModelsRequest())
    assert models.models[0].generation_defaults == DEFAULTS.to_proto()
    status = await served.stub.GetClusterStatus(pb.ClusterStatusRequest())
    assert status.generation_defaults.repetition_penalty == pytest.approx(1.7)
    assert not status.generation_defaults.HasField("top_p")

    client = openai.AsyncOpenAI(base_url=served.url, api_key="unused")
    listed = (await client.models.list()).data[0]
    assert listed.model_extra["generation_defaults"] == {"temperature": 0.0, "repetition_penalty": pytest.approx(1.7)}
    done = await client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=N, extra_body={"ignore_eos": True})
    assert served.tokenizer.encode(done.choices[0].text, add_special_tokens=False)[:3] == with_defaults[:3]


async def test_the_openai_client_sends_penalties_on_completions_and_chat(served, tiny_checkpoint):
    client = openai.AsyncOpenAI(base_url=served.url, api_key="unused")
    settings = dict(presence_penalty=1.2, frequency_penalty=0.5, logit_bias={"1000": 5.0})
    want = engine_output(tiny_checkpoint, PROMPT, max_tokens=N, ignore_eos=True, temperature=0.0, repetition_penalty=1.2,
                         presence_penalty=1.2, frequency_penalty=0.5, logit_bias={1000: 5.0}, min_tokens=3)
    done = await client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=N, temperature=0, **settings,
                                           extra_body={"ignore_eos": True, "repetition_penalty": 1.2, "min_tokens": 3})
    assert done.choices[0].text == served.tokenizer.decode(want)

    messages = [{"role": "user", "content": "Say something"}]
    prompt = served.chat.ids(messages)
    want = engine_output(tiny_checkpoint, prompt, max_tokens=N, ignore_eos=True, temperature=0.0, repetition_penalty=1.7,
                         frequency_penalty=2.0, min_p=0.3)
    chat = await client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=N, temperature=0,
                                                frequency_penalty=2.0, extra_body={"ignore_eos": True, "min_p": 0.3})
    assert chat.choices[0].message.content == served.tokenizer.decode(want)


async def test_the_python_client_sends_penalties(served, tiny_checkpoint):
    from ttdist.client import AsyncClient

    want = engine_output(tiny_checkpoint, PROMPT, max_tokens=N, ignore_eos=True, repetition_penalty=1.3, frequency_penalty=1.0,
                         logit_bias={12: 3.0})
    async with AsyncClient(f"127.0.0.1:{served.server.port}") as client:
        done = await client.generate(token_ids=PROMPT, max_tokens=N, ignore_eos=True, temperature=0.0, repetition_penalty=1.3,
                                     frequency_penalty=1.0, logit_bias={12: 3.0})
        assert list(done.token_ids) == want
        assert (await client.models())[0].generation_defaults == {"temperature": 0.0, "repetition_penalty": pytest.approx(1.7)}


@pytest.mark.parametrize("sampling, field", [
    ({"presence_penalty": 2.5}, "sampling.presence_penalty"), ({"frequency_penalty": -2.01}, "sampling.frequency_penalty"),
    ({"repetition_penalty": 0.0}, "sampling.repetition_penalty"), ({"min_p": 1.5}, "sampling.min_p"),
    ({"logit_bias": {49152: 1.0}}, "sampling.logit_bias"), ({"logit_bias": {3: -100.5}}, "sampling.logit_bias"),
    ({"min_tokens": N + 1}, "sampling.min_tokens"), ({"logprobs": 21}, "sampling.logprobs"),
    ({"structured_output": pb.StructuredOutput(json_schema='{"type": "frob"}')}, "sampling.structured_output"),
    ({"bad_words": ["ok", " "]}, "sampling.bad_words"),
])
async def test_bad_settings_are_invalid_argument_and_disturb_nothing(served, tiny_checkpoint, sampling, field):
    good = asyncio.ensure_future(collect(served, grpc_request("ok", temperature=0.0, repetition_penalty=1.5)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(served, grpc_request("bad", **sampling))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
    ids, _, _ = await good
    assert ids == engine_output(tiny_checkpoint, PROMPT, max_tokens=N, ignore_eos=True, repetition_penalty=1.5)


async def test_bad_words_reach_the_engine_over_grpc_the_openai_client_and_the_python_client(served, tiny_checkpoint):
    from ttdist.client import AsyncClient

    plain = dict(max_tokens=N, ignore_eos=True, temperature=0.0, repetition_penalty=1.0)
    free = engine_output(tiny_checkpoint, PROMPT, **plain)
    words = [_word_of(served.tokenizer, free)]
    want = engine_output(tiny_checkpoint, PROMPT, served.tokenizer, bad_words=words, **plain)
    assert want != free
    ids, _, _ = await collect(served, grpc_request("b1", temperature=0.0, repetition_penalty=1.0, bad_words=words))
    assert ids == want
    client = openai.AsyncOpenAI(base_url=served.url, api_key="unused")
    done = await client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=N, temperature=0,
                                           extra_body={"ignore_eos": True, "repetition_penalty": 1.0, "bad_words": words})
    assert done.choices[0].text == served.tokenizer.decode(want)
    async with AsyncClient(f"127.0.0.1:{served.server.port}") as python_client:
        assert list((await python_client.generate(token_ids=PROMPT, bad_words=words, **plain)).token_ids) == want
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(served, grpc_request("b2", bad_words=["  "]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sampling.bad_words" in err.value.details()
    with pytest.raises(openai.BadRequestError) as bad:
        await client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=N, extra_body={"bad_words": "x"})
    assert bad.value.body["param"] == "bad_words"


def _word_of(tokenizer, ids: list[int]) -> str:
    """A word whose bad-word tokens include one of ``ids`` (so banning it changes the output)."""
    from ttdist.engine.bad_words import bad_word_ids

    for token in ids:
        word = tokenizer.decode([token])
        if word.strip() and (token,) in bad_word_ids([word], tokenizer, tokenizer.vocab_size):
            return word
    raise AssertionError(f"no token of {ids} is a word")
