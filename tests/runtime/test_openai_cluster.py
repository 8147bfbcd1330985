"""The OpenAI API of a real cluster serving SmolLM2, driven by the official ``openai`` client.

One module-scoped cluster (one replica, API key required): greedy chat equals transformers'
``generate`` on the same ``apply_chat_template`` prompt; completions and chat, sync and async,
streaming and not; API keys on both public APIs; the replicas' internal port refuses a stranger;
a client that goes away frees its pages.
"""

from __future__ import annotations

import asyncio

import grpc
import openai
import pytest

from tests.support.cluster import running_cluster
from tests.support.generation import greedy, stub_for
from tests.support.waiting import wait_for
from ttdist.client import AsyncClient, Client, Unauthenticated
from ttdist.runtime.api_config import ApiConfig
from ttdist.runtime.config import ClusterConfig, ReplicaGroup
from ttdist.v1 import generation_pb2 as pb

pytestmark = pytest.mark.slow

KEY = "sk-test-key"
CHATS = [
    [{"role": "user", "content": "Write a haiku about rain."}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "What color is the sky?"}],
]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    config = ClusterConfig(
        model="smollm2", groups=(ReplicaGroup(count=1, mesh="1x1"),), port=0, dashboard_port=None,
        max_kv_pages=64, weights_cache=str(tmp_path_factory.mktemp("weights")),
        api=ApiConfig(http_port=0, api_keys=(KEY, "second-key")),
    )
    with running_cluster(config) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def reference():
    """transformers' greedy continuation of each chat (the text, special tokens skipped)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from ttdist.model.smollm2 import materialize

    path = materialize()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for chat in CHATS:
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False)
        new = gen[0, len(ids):].tolist()
        out.append((len(ids), tokenizer.decode(new, skip_special_tokens=True),
                    "stop" if new[-1] == tokenizer.eos_token_id else "length"))
    return out


def _client(served, key=KEY):
    return openai.OpenAI(base_url=served.http_url + "/v1", api_key=key, max_retries=0)


def test_greedy_chat_equals_transformers(served, reference):
    client = _client(served)
    for chat, (prompt_tokens, text, reason) in zip(CHATS, reference):
        done = client.chat.completions.create(model="smollm2", messages=chat, max_tokens=MAX_TOKENS, temperature=0)
        assert done.choices[0].message.content == text and done.choices[0].message.role == "assistant"
        assert done.choices[0].finish_reason == reason
        assert done.usage.prompt_tokens == prompt_tokens
    assert text.strip(), "the model answers, it does not stop at once"


def test_streaming_chat_and_completions_equal_unary(served, reference):
    client = _client(served)
    parts, usage = [], None
    stream = client.chat.completions.create(model="smollm2", messages=CHATS[0], max_completion_tokens=MAX_TOKENS,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    for event in stream:
        if event.usage is not None:
            usage = event.usage
        parts.extend(c.delta.content or "" for c in event.choices)
    assert "".join(parts) == reference[0][1]
    assert usage.prompt_tokens == reference[0][0] and usage.completion_tokens <= MAX_TOKENS
    # the same prompt again: its full pages come from the prefix cache
    again = client.chat.completions.create(model="smollm2", messages=CHATS[0], max_tokens=MAX_TOKENS, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens > 0

    text = "The capital of France is"
    unary = client.completions.create(model="smollm2", prompt=text, max_tokens=8, temperature=0)
    streamed = "".join(e.choices[0].text for e in client.completions.create(
        model="smollm2", prompt=text, max_tokens=8, temperature=0, stream=True) if e.choices)
    assert unary.choices[0].text == streamed and "Paris" in streamed


async def test_async_client_chat_and_completions(served, reference):
    client = openai.AsyncOpenAI(base_url=served.http_url + "/v1", api_key=KEY, max_retries=0)
    done, stream = await asyncio.gather(
        client.chat.completions.create(model="smollm2", messages=CHATS[1], max_tokens=MAX_TOKENS, temperature=0),
        client.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=6, stream=True,
                                  temperature=0.8, seed=1),
    )
    assert done.choices[0].message.content == reference[1][1]
    texts = [e.choices[0].text async for e in stream if e.choices]
    assert "".join(texts)
    models = await client.models.list()
    assert [m.id for m in models.data] == ["smollm2"]
    await client.close()
    async with AsyncClient(served.address, token=KEY) as grpc_client:
        done = await grpc_client.chat(CHATS[1], max_tokens=MAX_TOKENS)
        assert done.text == reference[1][1]
        streamed = [c.text async for c in grpc_client.stream_chat(CHATS[1], max_tokens=MAX_TOKENS)]
        assert "".join(streamed) == done.text


def test_seeded_sampling_repeats_and_n_gives_n_choices(served):
    client = _client(served)
    ask = dict(model="smollm2", prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=7, n=2)
    first, second = client.completions.create(**ask), client.completions.create(**ask)
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert [c.index for c in first.choices] == [0, 1] and first.usage.completion_tokens <= 16


def test_grpc_chat_and_client_chat_use_the_template(served, reference):
    with Client(served.address, token=KEY) as client:
        done = client.chat(CHATS[0], max_tokens=MAX_TOKENS)
        assert done.text == reference[0][1] and done.usage.prompt_tokens == reference[0][0]
        assert "".join(c.text for c in client.stream_chat(CHATS[0], max_tokens=MAX_TOKENS)) == reference[0][1]


def test_api_keys_on_both_public_apis(served):
    import httpx2 as httpx

    no_key = httpx.post(served.http_url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as info:
        _client(served, "wrong").models.list()
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    for key in (None, "wrong"):
        with Client(served.address, token=key, retry=None) as client:
            with pytest.raises(Unauthenticated):
                client.generate([1, 2, 3], max_tokens=2)
            assert client.health() == "SERVING"            # health stays open
    assert [m.id for m in _client(served, "second-key").models.list().data] == ["smollm2"]
    import urllib.request
    with urllib.request.urlopen(served.http_url + "/health") as r:
        assert r.status == 200


def test_the_internal_replica_port_refuses_a_stranger(served):
    with Client(served.address, token=KEY) as client:
        replica = client.cluster_status().replicas[0]
    channel, stub = stub_for(replica.address)
    with channel:
        for call in (lambda: list(stub.Generate(greedy([1, 2, 3], 2), timeout=30)),
                     lambda: stub.GetClusterStatus(pb.ClusterStatusRequest(), timeout=30),
                     lambda: stub.GetClusterStatus(pb.ClusterStatusRequest(), timeout=30,
                                                   metadata=(("authorization", f"Bearer {KEY}"),))):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_bad_requests_get_openai_statuses(served):
    client = _client(served)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.chat.completions.create(model="smollm2", messages=CHATS[0], logprobs=True, top_logprobs=21)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="smollm2", messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="context window"):
        client.completions.create(model="smollm2", prompt="word " * 9000, max_tokens=2)


def test_a_client_that_disconnects_frees_its_pages(served):
    import httpx2 as httpx

    with Client(served.address, token=KEY) as client:
        total = client.cluster_status().replicas[0].kv_pages_total
        body = {"prompt": "Tell me a long story.", "max_tokens": 400, "stream": True, "ignore_eos": True}
        with httpx.Client(timeout=120) as http:
            with http.stream("POST", served.http_url + "/v1/completions", json=body,
                             headers={"Authorization": f"Bearer {KEY}"}) as r:
                lines = r.iter_lines()
                assert next(line for line in lines if line).startswith("data: ")
                busy = client.cluster_status().replicas[0]
                assert busy.running == 1 and busy.kv_pages_free < total
        st = wait_for(lambda: (s := client.cluster_status().replicas[0]).running == 0 and s, 60, "the replica idle")
        assert st.running == 0 and st.kv_pages_free == total


def test_ttdist_generate_chat_answers(served, reference):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", "from ttdist.cli import main; raise SystemExit(main())", "generate", "--chat",
         "Write a haiku about rain.", "-n", str(MAX_TOKENS), "--target", served.address, "--token", KEY],
        capture_output=True, text=True, cwd=root, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == reference[0][1].strip() and len(proc.stdout.split()) >= 3
