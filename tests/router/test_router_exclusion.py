"""Which replicas a request may go to after a failure, and waiting when none can take it.

A request avoids the replica *incarnation* (address + pid) it failed on, not the replica id, so
a restarted replica serves it again; with no replica ready it waits (to its deadline, else
``ready_wait_s``) instead of failing at once; one that met an engine error (INTERNAL) on two
replicas ends with INTERNAL and never reaches a third.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import grpc
import pytest

from tests.support.scripted import expected_tokens
from tests.support.stack import SCRIPTED_CARD, own_status
from tests.support.generation import collect
from ttdist.engine.faults import EngineFaults
from ttdist.runtime.replica_service import start_replica_server
from ttdist.runtime.scripted_engine import ScriptedEngine, ScriptedEngineConfig
from ttdist.v1 import generation_pb2 as pb

POISON = ScriptedEngineConfig(vocab_size=1000, step_s=0.01, faults=EngineFaults(fail_request_prefix="poison"))


def request(ids, max_tokens, **kw):
    return pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), sampling=pb.SamplingParams(max_tokens=max_tokens),
                              stream=True, **kw)


async def test_engine_error_on_two_replicas_is_internal_and_never_reaches_a_third(make_stack):
    stack = await make_stack(3, engine=POISON)
    good = [[50 + i, 60 + i] for i in range(4)]
    jobs = [collect(stack.stub, request(p, 30)) for p in good]
    poison = asyncio.ensure_future(collect(stack.stub, request([1, 2, 3], 30, request_id="poison-1")))
    results = await asyncio.gather(*jobs)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await poison
    assert info.value.code() == grpc.StatusCode.INTERNAL
    details = info.value.details()
    assert "on 2 replicas" in details and "InjectedFault: injected fault in request" in details
    tried = [part.split(":")[0].strip() for part in details.split("(", 1)[1].split(" | ")]
    assert len(tried) == 2 and len(set(tried)) == 2
    untouched = ({"replica-0", "replica-1", "replica-2"} - set(tried)).pop()
    index = int(untouched[-1])
    # the third replica never saw the poisoned request: only the good ones routed there
    seen = stack.engines[index].stats().prompt_tokens_total
    assert seen == sum(len(p) for p, (_, c) in zip(good, results) if c.replica_id == untouched)
    for prompt, (ids, complete) in zip(good, results):
        assert ids == expected_tokens(prompt, 30) and complete.finish_reason == pb.LENGTH
    # an engine error does not make a replica suspect: all three still take requests
    assert {v.state for v in stack.router.views()} == {"ready"}


async def test_one_engine_error_moves_the_request_and_it_finishes_exactly(make_stack):
    stack = await make_stack(2, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.01))
    stack.engines[0].inject(EngineFaults(fail_request_prefix="flaky"))
    prompt = [7, 8, 9]
    ids, complete = await collect(stack.stub, request(prompt, 20, request_id="flaky-1"))
    assert ids == expected_tokens(prompt, 20) and complete.replica_id == "replica-1"


async def test_a_restarted_replica_is_eligible_again_for_the_request_that_failed_on_it(make_stack):
    """The only replica dies mid-stream and comes back under the same id: the stream waits,
    resumes on the new incarnation and finishes without a gap or a duplicate."""
    engine = ScriptedEngineConfig(vocab_size=1000, step_s=0.02)
    stack = await make_stack(1, engine=engine)
    prompt = [21, 22, 23]
    call = stack.stub.Generate(request(prompt, 40), timeout=60)
    ids = []
    while len(ids) < 5:
        resp = await call.read()
        ids.extend(resp.chunk.token_ids)
    await stack.replica_servers[0].stop(0)             # the process is gone ...
    await asyncio.sleep(0.5)
    eng = ScriptedEngine(engine)                        # ... and a new one serves under the same id
    eng.start()
    srv = await start_replica_server(eng, SCRIPTED_CARD, "replica-0", own_status(eng, "replica-0"))
    stack.engines.append(eng)
    stack.replica_servers.append(srv)
    entry = replace(stack.source.current.replicas[0], address=f"127.0.0.1:{srv.port}", pid=2)
    stack.source.current = replace(stack.source.current, replicas=(entry,))
    complete = None
    while (resp := await call.read()) is not grpc.aio.EOF:
        if resp.WhichOneof("kind") == "chunk":
            ids.extend(resp.chunk.token_ids)
        else:
            complete = resp.complete
    assert ids == expected_tokens(prompt, 40) and list(complete.output_ids) == ids
    assert eng.stats().generation_tokens_total < 40     # the new incarnation continued, it did not restart


async def test_no_ready_replica_waits_for_one(make_stack):
    stack = await make_stack(1, engine=ScriptedEngineConfig(vocab_size=1000), states=["starting"])

    async def become_ready():
        await asyncio.sleep(0.6)
        stack.set_state(0, "ready")

    started = time.monotonic()
    ids, complete = (await asyncio.gather(collect(stack.stub, request([5, 6], 4)), become_ready()))[0]
    assert ids == expected_tokens([5, 6], 4) and time.monotonic() - started >= 0.6


async def test_the_wait_for_a_ready_replica_is_bounded(make_stack):
    stack = await make_stack(1, engine=ScriptedEngineConfig(vocab_size=1000), states=["starting"], ready_wait_s=0.3)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:      # no deadline: ready_wait_s bounds the wait
        await collect(stack.stub, request([5, 6], 4), timeout=None)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "replica-0=starting" in info.value.details()
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:      # a deadline bounds it too (whichever side ends first)
        await collect(stack.stub, request([5, 6], 4), timeout=0.5)
    assert info.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert time.monotonic() - started >= 0.45
