"""Exact migration, text too: a stream moved between replicas reads byte for byte as one that
never moved, while a character's bytes or a stop string's start are held back at the move.

Three real replicas (AsyncEngine, the SmolLM2 tokenizer, gRPC) behind a real router; the model
is a scripted runner that writes a fixed text token by token, slowly enough that the test can
kill the serving replica right after a chosen token reached the client: once between the
first and last byte tokens of a CJK character, once after " END" while the stop string is
"END!". Also: the server-default max_tokens through the router is clipped to the context the
prompt leaves, as on a replica, instead of being refused.
"""

from __future__ import annotations

import time

import pytest

from ttdist.engine import AsyncEngine, EngineConfig
from ttdist.router.router import RouterConfig
from ttdist.runtime.request_checks import ModelCard
from ttdist.v1 import generation_pb2 as pb

from tests.support.engine_fakes import FakeRunner
from tests.support.stack import Stack, make_stack

TEXT = " Hello 龘 wörld, the END! more text after all"
PROMPT = [101, 102, 103, 104]
FILLER = 1000
CONTEXT = 256


@pytest.fixture
async def cluster(tokenizer):
    script = tokenizer.encode(TEXT, add_special_tokens=False)

    def next_token(context: tuple[int, ...]) -> int:
        time.sleep(0.12)                      # slow enough to kill a replica between two tokens
        i = len(context) - len(PROMPT)
        return script[i] if 0 <= i < len(script) else FILLER

    def engine(i: int) -> AsyncEngine:
        runner = FakeRunner(vocab_size=tokenizer.vocab_size, page_size=4, num_pages=CONTEXT // 4, max_batch=4,
                            max_context=CONTEXT, next_token=next_token)
        return AsyncEngine(runner, tokenizer, EngineConfig(max_batch=4, prefill_chunk=8, default_max_tokens=200))

    card = ModelCard("scripted-text", tokenizer.vocab_size, CONTEXT, 4)
    # the test stops the replica under its one stream twice: more lone deaths than the poison rule's two
    config = RouterConfig(refresh_s=0.05, default_max_tokens=200, max_lone_deaths=3)
    stack = await make_stack(engine, 3, card=card, router_config=config, tokenizer=tokenizer, with_pids=True)
    stack.script = script
    yield stack
    await stack.close()


def text_request(request_id: str, max_tokens: int = 16) -> pb.GenerateRequest:
    return pb.GenerateRequest(request_id=request_id, token_ids=pb.TokenIds(ids=PROMPT), stream=True,
                              sampling=pb.SamplingParams(max_tokens=max_tokens, stop=["END!"]))


async def run(cluster: Stack, req: pb.GenerateRequest, kill_after: tuple[int, ...] = ()):
    """Stream ``req``; right after the chunk carrying each token in ``kill_after`` arrives, stop
    the replica serving it. Returns (ids, streamed text bytes, Complete, replicas that served)."""
    ids, text, complete, served = [], "", None, []
    pending = list(kill_after)
    async for resp in cluster.stub.Generate(req, timeout=120):
        if resp.WhichOneof("kind") == "complete":
            complete = resp.complete
            continue
        ids.extend(resp.chunk.token_ids)
        text += resp.chunk.text
        if pending and pending[0] in resp.chunk.token_ids:
            pending.pop(0)
            index = cluster.serving(req.request_id)
            served.append(index)
            await cluster.replica_servers[index].stop(0)
    served.append(int(complete.replica_id.split("-")[1]))
    return ids, text.encode(), complete, served


async def test_migrated_stream_has_exactly_the_text_of_an_unmoved_one(cluster, tokenizer):
    script = cluster.script
    cjk_start, cjk_middle = script[1], script[2]          # two byte tokens of 龘, text held back
    end = script[script.index(tokenizer.encode(" END", add_special_tokens=False)[0])]
    want_ids, want_text, want, _ = await run(cluster, text_request("plain"))
    assert want.finish_reason == pb.STOP and want_text.decode() == " Hello 龘 wörld, the " == want.text
    assert "龘".encode() in want_text

    ids, text, complete, served = await run(cluster, text_request("moved"), kill_after=(cjk_middle, end))
    assert len(set(served)) == 3                          # served by three replicas in turn
    assert text == want_text and complete.text.encode() == want_text
    assert ids == want_ids and list(complete.output_ids) == want_ids
    assert complete.finish_reason == pb.STOP and complete.usage.completion_tokens == len(want_ids)
    assert cjk_start in ids and cluster.router.report_snapshot().migrations_total == 2


async def test_server_default_max_tokens_is_clipped_to_the_context_left(cluster):
    long_prompt = [7] * (CONTEXT - 5)
    req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=long_prompt), stream=True,
                             sampling=pb.SamplingParams(ignore_eos=True))            # max_tokens 0: the default
    ids, complete = [], None
    async for resp in cluster.stub.Generate(req, timeout=120):
        if resp.WhichOneof("kind") == "chunk":
            ids.extend(resp.chunk.token_ids)
        else:
            complete = resp.complete
    assert complete.finish_reason == pb.LENGTH and len(ids) == 5 == complete.usage.completion_tokens
