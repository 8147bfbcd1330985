"""Migration without gRPC: a ``Segment`` over scripted calls, the sub-request for the next
replica, and the replica set's views, with exact ids, text, budgets and load counts."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from ttdist.router.latency import LatencyWindow
from ttdist.router.migration import (
    EVACUATED, InFlight, Progress, Segment, SegmentEnd, TokenTimes, already_done, sub_request, token_budget,
)
from ttdist.router.replica_link import rpc_error
from ttdist.router.replica_set import SUSPECT, Load, ReplicaSet
from ttdist.runtime.request_checks import ModelCard, RequestError
from ttdist.runtime.routing_table import ReplicaEntry, RoutingTable
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import replica_pb2 as rpb

PROMPT = [1, 2, 3]


class ScriptedCall:
    """A replica's answer to one request: ``entries`` in order, then ``error`` raised (or the
    end of the stream); ``ready`` chunks wait behind the first entry read."""

    died_with = 0

    def __init__(self, entries=(), error: BaseException | None = None, ready=()) -> None:
        self.entries = list(entries)
        self.error = error
        self.ready = list(ready)
        self.cancelled = False
        self.seen: list[Load] = []           # the load as it stood at each read
        self.load: Load | None = None

    def __aiter__(self):
        return self

    async def __anext__(self) -> rpb.StreamEntry:
        if self.load is not None:
            self.seen.append(Load(self.load.running, self.load.waiting, self.load.pending_prefill_tokens))
        if self.entries:
            return self.entries.pop(0)
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        raise StopAsyncIteration

    def take_ready_chunks(self) -> list[pb.Chunk]:
        ready, self.ready = self.ready, []
        return ready

    def done(self) -> bool:
        return not self.entries and self.error is None

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def chunk(*ids: int, text: str) -> rpb.StreamEntry:
    return rpb.StreamEntry(key=1, chunk=pb.Chunk(token_ids=list(ids), text=text))


def complete(ids: list[int], text: str, reason=pb.LENGTH, prompt_tokens=0) -> rpb.StreamEntry:
    return rpb.StreamEntry(key=1, complete=pb.Complete(
        finish_reason=reason, output_ids=ids, text=text, usage=pb.Usage(prompt_tokens=prompt_tokens)))


def client_request(max_tokens: int = 4, stream: bool = True) -> pb.GenerateRequest:
    req = pb.GenerateRequest(request_id="r", stream=stream)
    req.token_ids.ids.extend(PROMPT)
    req.sampling.max_tokens = max_tokens
    req.sampling.stop_token_ids.append(99)
    return req


def times() -> TokenTimes:
    return TokenTimes(LatencyWindow(16), LatencyWindow(16))


def segment(req, call: ScriptedCall, progress: Progress, flight: InFlight | None = None, load: Load | None = None):
    load = load if load is not None else Load()
    call.load = load
    sub = sub_request(req, "r", PROMPT, progress)
    return Segment(req, sub, call, flight or InFlight("r"), progress, PROMPT, load, len(sub.token_ids.ids), times())


async def drain(seg: Segment) -> tuple[list[pb.GenerateResponse], SegmentEnd]:
    items = [item async for item in seg.run()]
    *responses, end = items
    assert isinstance(end, SegmentEnd) and not any(isinstance(r, SegmentEnd) for r in responses)
    return responses, end


async def test_a_request_moved_mid_stream_resumes_with_what_was_sent_and_the_client_sees_each_token_once():
    req = client_request(max_tokens=4)
    progress = Progress(0.0, [])
    first = ScriptedCall([chunk(10, text="a"), chunk(11, text="b")],
                         error=rpc_error(grpc.StatusCode.UNAVAILABLE, "connection lost"))
    load = Load()
    sent, end = await drain(segment(req, first, progress, load=load))
    assert end == SegmentEnd(failure="UNAVAILABLE: connection lost", code=grpc.StatusCode.UNAVAILABLE)
    assert [list(r.chunk.token_ids) for r in sent] == [[10], [11]]
    assert progress.ids == [10, 11] and progress.text == "ab"
    assert first.seen == [Load(0, 1, 3), Load(1, 0, 0), Load(1, 0, 0)]   # queued with its 3 prompt tokens, then running
    assert load == Load()                                                 # counted off when the segment ended

    progress.migrations += 1
    sub = sub_request(req, "r", PROMPT, progress)
    assert sub.request_id == "r#1"
    assert list(sub.token_ids.ids) == PROMPT + [10, 11]                  # prompt + tokens already streamed
    assert (sub.resume.generated_tokens, sub.resume.emitted_chars) == (2, 2)
    assert sub.sampling.max_tokens - sub.resume.generated_tokens == 2    # the budget left
    assert list(sub.sampling.stop_token_ids) == [99] and sub.stream

    second = ScriptedCall([chunk(12, text="c"), chunk(13, text="d"), complete([10, 11, 12, 13], "abcd", prompt_tokens=5)])
    progress.last_replica = "replica-1"
    more, end = await drain(segment(req, second, progress))
    assert end == SegmentEnd(finished=True)
    *chunks, last = more
    assert [list(r.chunk.token_ids) for r in chunks] == [[12], [13]]
    streamed = [t for r in sent + chunks for t in r.chunk.token_ids]
    assert streamed == [10, 11, 12, 13] == list(last.complete.output_ids)   # no gap, no duplicate
    assert "".join(r.chunk.text for r in sent + chunks) == "abcd" == last.complete.text
    assert last.complete.usage == pb.Usage(prompt_tokens=3, completion_tokens=4)   # the client's prompt, every token
    assert last.complete.replica_id == "replica-1" and last.complete.finish_reason == pb.LENGTH
    assert all(r.request_id == "r" for r in sent + more)
    assert second.seen[0] == Load(0, 1, 5)                                  # prompt + 2 ids await prefill there


async def test_a_fresh_replica_reports_only_its_own_ids_and_they_follow_those_kept():
    progress = Progress(0.0, [])
    call = ScriptedCall([chunk(10, 11, text="ab"), complete([10, 11], "ab", reason=pb.STOP)])
    responses, end = await drain(segment(client_request(), call, progress))
    assert end.finished and progress.ids == [10, 11] and progress.text == "ab"
    assert responses[-1].complete.finish_reason == pb.STOP
    assert not call.cancelled


async def test_chunks_waiting_behind_go_out_as_one_message():
    progress = Progress(0.0, [])
    call = ScriptedCall([chunk(10, text="a"), complete([10, 11, 12], "abc")],
                        ready=[pb.Chunk(token_ids=[11], text="b"), pb.Chunk(token_ids=[12], text="c")])
    responses, _ = await drain(segment(client_request(), call, progress))
    assert [(list(r.chunk.token_ids), r.chunk.text) for r in responses[:-1]] == [([10, 11, 12], "abc")]


async def test_without_streaming_only_the_complete_goes_out():
    call = ScriptedCall([chunk(10, text="a"), complete([10], "a")])
    responses, end = await drain(segment(client_request(stream=False), call, Progress(0.0, [])))
    assert end.finished and [r.WhichOneof("kind") for r in responses] == ["complete"]


async def test_a_refusal_before_the_first_token_is_an_overload_and_after_it_an_error():
    load = Load()
    refused = ScriptedCall(error=rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "full"))
    responses, end = await drain(segment(client_request(), refused, Progress(0.0, []), load=load))
    assert responses == [] and load == Load()
    assert end == SegmentEnd(overloaded=True, failure="RESOURCE_EXHAUSTED: full",
                             code=grpc.StatusCode.RESOURCE_EXHAUSTED, message="full")

    late = ScriptedCall([chunk(10, text="a")], error=rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "full"))
    with pytest.raises(RequestError) as err:
        await drain(segment(client_request(), late, Progress(0.0, []), load=load))
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and load == Load()

    bad = ScriptedCall(error=rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "no"))
    with pytest.raises(RequestError) as err:
        await drain(segment(client_request(), bad, Progress(0.0, [])))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_stream_that_ends_without_a_result_moves():
    progress = Progress(0.0, [])
    _, end = await drain(segment(client_request(), ScriptedCall([chunk(10, text="a")]), progress))
    assert end == SegmentEnd(failure="the stream ended without a result") and progress.ids == [10]


async def test_a_cancelled_call_moves_only_when_the_replica_is_evacuated():
    flight = InFlight("r", evacuate=True)
    call = ScriptedCall([chunk(10, text="a")], error=asyncio.CancelledError())
    _, end = await drain(segment(client_request(), call, Progress(0.0, []), flight=flight))
    assert end == SegmentEnd(failure=EVACUATED)

    call = ScriptedCall(error=asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await drain(segment(client_request(), call, Progress(0.0, [])))


async def test_a_client_that_leaves_mid_stream_cancels_the_call_and_frees_the_count():
    load = Load()
    call = ScriptedCall([chunk(10, text="a"), chunk(11, text="b")])
    run = segment(client_request(), call, Progress(0.0, []), load=load).run()
    await run.__anext__()
    await run.aclose()
    assert call.cancelled and load == Load()


def test_ids_already_sent_can_end_the_request():
    req = client_request(max_tokens=3)
    assert already_done(req, Progress(0.0, []), 3, eos_ids=(7,)) is None
    assert already_done(req, Progress(0.0, [10, 99]), 3, eos_ids=(7,)) == pb.STOP
    assert already_done(req, Progress(0.0, [10, 7]), 3, eos_ids=(7,)) == pb.EOS
    req.sampling.ignore_eos = True
    assert already_done(req, Progress(0.0, [10, 7]), 3, eos_ids=(7,)) is None
    assert already_done(req, Progress(0.0, [10, 7, 8]), 3, eos_ids=(7,)) == pb.LENGTH


def test_the_budget_is_the_request_s_else_the_default_clipped_to_the_context_left():
    req = client_request(max_tokens=0)
    assert token_budget(req, [0] * 500, default_max_tokens=256, max_context=512) == 12
    assert token_budget(req, None, default_max_tokens=256, max_context=512) == 256
    assert token_budget(client_request(max_tokens=5), [0] * 500, 256, 512) == 5


def test_a_text_prompt_goes_on_as_text_and_the_first_segment_has_no_resume():
    req = pb.GenerateRequest(request_id="t", text="hello")
    sub = sub_request(req, "t", None, Progress(0.0, []))
    assert (sub.text, sub.request_id, sub.HasField("resume")) == ("hello", "t", False)
    assert not sub_request(client_request(), "r", PROMPT, Progress(0.0, [])).HasField("resume")


def test_views_mark_a_suspect_incarnation_and_count_this_router_s_streams():
    card = ModelCard("m", vocab_size=100, max_context=64, page_size=4)
    replicas = ReplicaSet("", suspect_s=60.0)
    a, b = ReplicaEntry("a", "h:1", "ready", pid=1, running=2), ReplicaEntry("b", "h:2", "ready", pid=2)
    replicas.apply(RoutingTable(card, (a, b)))
    replicas.load("b").queued(8)
    replicas.suspect(a)
    views = {v.replica_id: v for v in replicas.views()}
    assert (views["a"].state, views["a"].running) == (SUSPECT, 2)
    assert (views["b"].state, views["b"].waiting, views["b"].pending_prefill_tokens) == ("ready", 1, 8)
    replicas.apply(RoutingTable(card, (ReplicaEntry("a", "h:1", "ready", pid=3), b)))   # restarted: a new pid
    assert [v.state for v in replicas.views()] == ["ready", "ready"]
    assert replicas.gone("c") and not replicas.gone("a")
