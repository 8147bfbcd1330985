"""OpenTelemetry traces through a router and two replicas (real gRPC servers and real engines in
this process), exported over OTLP/gRPC to a real receiver started here: the span tree under the
caller's ``traceparent`` (gRPC metadata), its attributes, a migration, sampling by the caller's
flag and by ratio, and no spans at all with tracing off.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.engine_fakes import FakeRunner
from tests.support.generation import collect
from tests.support.otlp import OtlpReceiver
from tests.support.stack import make_stack
from ttdist.engine import AsyncEngine, EngineConfig
from ttdist.engine.faults import EngineFaults
from ttdist.router.router import RouterConfig
from ttdist.runtime.request_checks import ModelCard
from ttdist.tracing import TracingConfig, make_tracing
from ttdist.v1 import generation_pb2 as pb

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CARD = ModelCard("fake", 64, 256, 4)


@pytest.fixture(scope="module")
def receiver():
    r = OtlpReceiver().start()
    yield r
    r.stop()


def request(ids, max_tokens, **kw) -> pb.GenerateRequest:
    return pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), stream=True,
                              sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True), **kw)


async def traced_stack(receiver, ratio: float = 1.0, faults=(EngineFaults(), EngineFaults())):
    tracing = TracingConfig(otlp_traces_endpoint=receiver.endpoint, sample_ratio=ratio, export_interval_s=0.1)
    replica_tracing = make_tracing(tracing, "ttdist-replica")

    def engine(i):
        runner = FakeRunner(page_size=4, num_pages=64, max_batch=8)
        return AsyncEngine(runner, None, EngineConfig(max_batch=8, prefill_chunk=4, faults=faults[i]))

    stack = await make_stack(engine, 2, card=CARD, router_config=RouterConfig(refresh_s=0.05, tracing=tracing),
                             replica_tracing=replica_tracing)
    return stack, replica_tracing


async def flushed(stack, replica_tracing) -> None:
    await asyncio.to_thread(stack.router.tracing.flush)
    await asyncio.to_thread(replica_tracing.flush)


def tree(spans, trace_id):
    mine = [s for s in spans if s.trace_id == trace_id]
    by_id = {s.span_id: s for s in mine}
    children = {}
    for s in mine:
        children.setdefault(s.parent_id, []).append(s)
    return mine, by_id, children


async def test_span_tree_under_the_callers_traceparent(receiver):
    stack, replica_tracing = await traced_stack(receiver)
    try:
        traceparent = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
        ids, complete = await collect(stack.stub, request(list(range(1, 11)), 6, request_id="traced-1"),
                                      metadata=(("traceparent", traceparent),))
        assert len(ids) == 6
        await flushed(stack, replica_tracing)
        spans = receiver.wait_for(lambda s: any(x.trace_id == TRACE_ID and x.name == "engine.decode" for x in s))
    finally:
        await stack.close()
    mine, by_id, children = tree(spans, TRACE_ID)
    (root,) = [s for s in mine if s.name == "request"]
    assert root.parent_id == CALLER_SPAN and root.service == "ttdist-router"
    assert root.attributes["ttdist.request_id"] == "traced-1" and root.attributes["ttdist.prompt_tokens"] == 10
    assert root.attributes["ttdist.completion_tokens"] == 6 and root.attributes["ttdist.finish_reason"] == "LENGTH"
    assert sorted(s.name for s in children[root.span_id]) == ["route", "segment"]
    (route,) = [s for s in children[root.span_id] if s.name == "route"]
    (segment,) = [s for s in children[root.span_id] if s.name == "segment"]
    assert route.attributes["ttdist.policy"] == "round_robin" and route.attributes["ttdist.attempt"] == 1
    assert route.attributes["ttdist.replica_id"] == segment.attributes["ttdist.replica_id"] == complete.replica_id
    assert route.attributes["ttdist.prompt_pages"] == 2 and route.attributes["ttdist.prefix_hit_pages"] == 0
    (replica,) = children[segment.span_id]
    assert replica.name == "replica.generate" and replica.service == "ttdist-replica"
    assert replica.attributes["ttdist.replica_id"] == complete.replica_id
    assert replica.attributes["ttdist.completion_tokens"] == 6
    engine = sorted(children[replica.span_id], key=lambda s: (s.start_ns, s.name))
    assert [s.name for s in engine] == ["engine.queue", "engine.prefill", "engine.prefill", "engine.prefill",
                                        "engine.decode"]
    assert [s.attributes["ttdist.chunk_tokens"] for s in engine[1:4]] == [4, 4, 2]
    assert [s.attributes["ttdist.chunk_index"] for s in engine[1:4]] == [0, 1, 2]
    decode = engine[-1]
    assert decode.events == ("first_token", "last_token") and decode.attributes["ttdist.output_tokens"] == 6
    for a, b in zip(engine, engine[1:]):      # queue, then each chunk, then decode: in order, no overlap
        assert a.end_ns <= b.start_ns, (a, b)
    assert segment.start_ns <= replica.start_ns and replica.end_ns <= root.end_ns


async def test_a_migration_is_a_span_and_the_next_segment_carries_the_trace(receiver):
    stack, replica_tracing = await traced_stack(receiver, faults=(EngineFaults(fail_request_prefix="flaky"),
                                                                  EngineFaults()))
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    try:
        ids, complete = await collect(stack.stub, request([5, 6, 7], 8, request_id="flaky-1"),
                                      metadata=(("traceparent", f"00-{trace_id}-b7ad6b7169203331-01"),))
        assert len(ids) == 8 and complete.replica_id == "replica-1"
        await flushed(stack, replica_tracing)
        spans = receiver.wait_for(lambda s: sum(x.trace_id == trace_id and x.name == "replica.generate" for x in s) == 2)
    finally:
        await stack.close()
    mine, by_id, children = tree(spans, trace_id)
    (root,) = [s for s in mine if s.name == "request"]
    names = sorted(s.name for s in children[root.span_id])
    assert names == ["migration", "route", "route", "segment", "segment"]
    (move,) = [s for s in mine if s.name == "migration"]
    assert move.attributes["ttdist.from_replica"] == "replica-0" and move.attributes["ttdist.to_replica"] == "replica-1"
    assert move.attributes["ttdist.implicates"] is True and move.attributes["ttdist.died_with"] == 0
    assert "InjectedFault" in move.attributes["ttdist.failure"]
    failed = [s for s in mine if s.name == "replica.generate" and s.error]
    assert [s.attributes["ttdist.replica_id"] for s in failed] == ["replica-0"]
    assert root.attributes["ttdist.migrations"] == 1
    segments = sorted((s for s in children[root.span_id] if s.name == "segment"), key=lambda s: s.start_ns)
    assert [s.attributes["ttdist.replica_id"] for s in segments] == ["replica-0", "replica-1"]
    assert segments[1].attributes["ttdist.resumed_tokens"] == 0      # it failed on its first token
    assert [s.attributes["ttdist.attempt"] for s in sorted(children[root.span_id], key=lambda s: s.start_ns)
            if s.name == "route"] == [1, 2]


async def test_sampling_follows_the_callers_flag_and_the_ratio(receiver):
    stack, replica_tracing = await traced_stack(receiver, ratio=0.0)
    unsampled, sampled = "11111111111111111111111111111111", "22222222222222222222222222222222"
    try:
        await collect(stack.stub, request([1, 2, 3], 3, request_id="ratio-0"))        # a new trace at ratio 0: none
        await collect(stack.stub, request([1, 2, 3], 3), metadata=(("traceparent", f"00-{unsampled}-00f067aa0ba902b7-00"),))
        await collect(stack.stub, request([1, 2, 3], 3, traceparent=f"00-{sampled}-00f067aa0ba902b7-01"))  # in the message
        await flushed(stack, replica_tracing)
        spans = receiver.wait_for(lambda s: any(x.trace_id == sampled and x.name == "replica.generate" for x in s))
    finally:
        await stack.close()
    assert not [s for s in spans if s.trace_id == unsampled]
    assert not [s for s in spans if s.attributes.get("ttdist.request_id") == "ratio-0"]


async def test_tracing_off_makes_no_tracer_and_no_spans(receiver):
    def engine(i):
        return AsyncEngine(FakeRunner(page_size=4, num_pages=64, max_batch=8), None, EngineConfig(max_batch=8))

    stack = await make_stack(engine, 1, card=CARD)
    try:
        before = len(receiver.spans())
        ids, _ = await collect(stack.stub, request([1, 2, 3], 3),
                               metadata=(("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"),))
        assert len(ids) == 3 and stack.router.tracing is None
    finally:
        await stack.close()
    assert len(receiver.spans()) == before


async def test_a_drain_is_a_span(receiver):
    stack, replica_tracing = await traced_stack(receiver)
    try:
        await stack.router.drain()
        await flushed(stack, replica_tracing)
        spans = receiver.wait_for(lambda s: any(x.name == "router.drain" for x in s))
    finally:
        await stack.close()
    (drain,) = [s for s in spans if s.name == "router.drain"]
    assert drain.service == "ttdist-router" and drain.attributes == {"ttdist.router_id": "router-0", "ttdist.inflight": 0}
