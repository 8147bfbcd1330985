"""One request across replicas: what it produced so far, the request each replica gets, and
one segment (the stretch of the request on one replica).

When a replica fails mid-stream the router sends the next one ``sub_request``: prompt + the ids
already sent as token ids, with a ``resume`` saying how many of them were generated and how
many characters of text the client already has, under the same ``max_tokens`` (the replica
counts the resumed ids against it). That replica rebuilds the text already sent, so the client
sees no gap, no duplicate and the same text (held-back bytes and stop strings across the move
included).

A ``Segment`` relays one replica's stream to the client and then yields its ``SegmentEnd``, as
its last item, once its stream is closed and its load counted off: finished, refused for load
before any token (``overloaded``), or failed in a way the request survives by moving
(``failure``, the replica's ``code``, and ``died_with``: how many streams the failure took at
once, 0 when it was this request's own). A failure no move can help raises ``RequestError``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

import grpc

from ttdist.router.completion import assemble_complete
from ttdist.router.latency import LatencyWindow
from ttdist.router.replica_set import Load
from ttdist.runtime.request_checks import RequestError
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import replica_pb2 as rpb

MIGRATE_CODES = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED, grpc.StatusCode.DATA_LOSS,
}
EVACUATED = "the coordinator marked the replica failed"


@dataclass
class Progress:
    """What one request has produced so far, across replicas."""

    started: float
    ids: list[int]
    pieces: list[str] = field(default_factory=list)   # the text so far, joined only when read
    first_at: float = 0.0
    last_at: float = 0.0
    migrations: int = 0
    last_replica: str = ""
    logprobs: list = field(default_factory=list)          # pb.TokenLogprob per id, when asked
    prompt_logprobs: list = field(default_factory=list)   # from the first segment's first chunk

    @property
    def text(self) -> str:
        if len(self.pieces) > 1:
            self.pieces[:] = ["".join(self.pieces)]
        return self.pieces[0] if self.pieces else ""

    @text.setter
    def text(self, value: str) -> None:
        self.pieces[:] = [value]

    def record(self, chunk: pb.Chunk, times: TokenTimes) -> None:
        now = time.perf_counter()
        if not self.first_at:
            self.first_at = now
            times.ttft.add(now - self.started)
        else:
            times.itl.add(now - self.last_at)
        self.last_at = now
        self.ids.extend(chunk.token_ids)
        self.pieces.append(chunk.text)   # not text += ...: that copies the whole output per token
        self.logprobs.extend(chunk.logprobs)
        if chunk.prompt_logprobs and not self.prompt_logprobs:
            self.prompt_logprobs.extend(chunk.prompt_logprobs)


@dataclass(frozen=True)
class TokenTimes:
    """Where a router records its streams' time to first token and gaps between tokens."""

    ttft: LatencyWindow
    itl: LatencyWindow


@dataclass
class InFlight:
    """One request streaming through this router: the replica and call it runs on now, and
    whether it is being moved off that replica (``evacuate``) or aborted."""

    request_id: str
    replica_id: str = ""
    sub_id: str = ""               # its request id on that replica
    call: ReplicaCall | None = None
    evacuate: bool = False
    evacuated_with: int = 0        # the streams moved off that replica at once with this one
    aborted: bool = False

    def moved_to(self, replica_id: str, sub_id: str, call: ReplicaCall) -> None:
        self.replica_id, self.sub_id, self.call, self.evacuate = replica_id, sub_id, call, False


class ReplicaCall(Protocol):
    """One request's stream of entries from a replica (``replica_link.SubStream``)."""

    def __aiter__(self) -> AsyncIterator[rpb.StreamEntry]: ...

    died_with: int   # streams the failure that ended it took at once (0: its own)

    def take_ready_chunks(self) -> list[pb.Chunk]: ...

    def done(self) -> bool: ...

    def cancel(self) -> bool: ...


def token_budget(req: pb.GenerateRequest, prompt: list[int] | None, default_max_tokens: int, max_context: int) -> int:
    """The request's max_tokens; 0 means the server default, clipped to the context the prompt
    leaves, exactly as a replica clips it."""
    if req.sampling.max_tokens:
        return req.sampling.max_tokens
    if prompt is None:
        return default_max_tokens
    return min(default_max_tokens, max_context - len(prompt))


def already_done(req: pb.GenerateRequest, progress: Progress, max_tokens: int, eos_ids) -> int | None:
    """The finish reason when the ids sent so far already end the request (after a failure)."""
    if not progress.ids:
        return None
    last = progress.ids[-1]
    if last in req.sampling.stop_token_ids:
        return pb.STOP
    if not req.sampling.ignore_eos and last in eos_ids:
        return pb.EOS
    if len(progress.ids) >= max_tokens:
        return pb.LENGTH
    return None


def sub_request(req: pb.GenerateRequest, request_id: str, prompt: list[int] | None, progress: Progress) -> pb.GenerateRequest:
    """The request for the next replica: after a failure, prompt + ids sent so far as a resume,
    so that replica rebuilds the text already sent (held-back bytes, a stop string's start)."""
    sub = pb.GenerateRequest(request_id=request_id, stream=True)
    sub.sampling.CopyFrom(req.sampling)
    if progress.ids:   # the client has the prompt's logprobs; the next replica's prompt holds generated ids too
        sub.sampling.ClearField("prompt_logprobs")
    if progress.migrations:
        sub.request_id = f"{request_id}#{progress.migrations}"
    if prompt is None:
        sub.text = req.text
    else:
        sub.token_ids.ids.extend(prompt + progress.ids)
        if progress.ids:
            sub.resume.generated_tokens = len(progress.ids)
            sub.resume.emitted_chars = len(progress.text)
    return sub


@dataclass(frozen=True)
class SegmentEnd:
    """How a segment ended, when it did not raise."""

    finished: bool = False
    overloaded: bool = False              # RESOURCE_EXHAUSTED before any token: try another replica
    failure: str = ""                     # why the request must move ("" when finished)
    code: grpc.StatusCode | None = None   # the replica's status code when it failed the call
    message: str = ""                     # the replica's own words, for an overload no other replica can take
    died_with: int = 0                    # streams the failure took at once (0: this request's own failure)


@dataclass
class Segment:
    """The stretch of one request (``flight``, the client's ``request``) on one replica: ``sub``
    sent there, answered on ``call``; ``prompt_tokens`` count as pending prefill on ``load``
    until the first token."""

    request: pb.GenerateRequest
    sub: pb.GenerateRequest
    call: ReplicaCall
    flight: InFlight
    progress: Progress
    prompt: list[int] | None
    load: Load
    prompt_tokens: int
    times: TokenTimes

    async def run(self) -> AsyncIterator[pb.GenerateResponse | SegmentEnd]:
        """The responses for the client, then the ``SegmentEnd``."""
        call, load, pending, rid = self.call, self.load, self.prompt_tokens, self.flight.request_id
        load.queued(pending)
        first = True
        # a resumed replica's Complete holds every generated id and the whole text, a fresh one's
        # what came after the ids and text already here
        kept = (0, 0) if self.sub.HasField("resume") else (len(self.progress.ids), len(self.progress.text))
        kept_logprobs = len(self.progress.logprobs)   # a replica's Complete holds only the logprobs it computed
        try:
            async for entry in call:
                if entry.WhichOneof("kind") != "chunk":
                    yield pb.GenerateResponse(request_id=rid, complete=self._complete(entry.complete, kept, kept_logprobs))
                    end = SegmentEnd(finished=True)
                    break
                chunk = entry.chunk
                if more := call.take_ready_chunks():   # behind: everything waiting goes out as one message
                    chunk = pb.Chunk(token_ids=[t for c in (chunk, *more) for t in c.token_ids],
                                     text="".join(c.text for c in (chunk, *more)),
                                     logprobs=[lp for c in (chunk, *more) for lp in c.logprobs],
                                     prompt_logprobs=[lp for c in (chunk, *more) for lp in c.prompt_logprobs])
                if first:
                    first = False
                    load.started(pending)
                self.progress.record(chunk, self.times)
                if self.request.stream:
                    yield pb.GenerateResponse(request_id=rid, chunk=chunk)
            else:
                end = SegmentEnd(failure="the stream ended without a result")
        except grpc.aio.AioRpcError as err:
            end = _call_failed(err, before_first_token=first, died_with=call.died_with)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not (self.flight.evacuate or self.flight.aborted) or (task is not None and task.cancelling()):
                raise
            end = SegmentEnd(failure=EVACUATED, died_with=self.flight.evacuated_with)
        finally:
            load.ended(pending, started=not first)
            if not call.done():
                call.cancel()
        yield end

    def _complete(self, last: pb.Complete, kept: tuple[int, int], kept_logprobs: int) -> pb.Complete:
        """The request's ``Complete`` from the replica's, after the first ``kept`` (ids, chars) and
        ``kept_logprobs`` logprobs."""
        progress = self.progress
        seg_ids, seg_text = kept
        progress.ids[seg_ids:] = list(last.output_ids)
        progress.text = progress.text[:seg_text] + last.text
        progress.logprobs[kept_logprobs:] = list(last.logprobs)
        if not progress.prompt_logprobs:
            progress.prompt_logprobs.extend(last.prompt_logprobs)
        return assemble_complete(last.finish_reason, progress, self.prompt, last)


def _call_failed(err: grpc.aio.AioRpcError, before_first_token: bool, died_with: int) -> SegmentEnd:
    code = err.code()
    message = err.details() or code.name
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and before_first_token:
        return SegmentEnd(overloaded=True, failure=f"{code.name}: {err.details()}", code=code, message=message)
    if code not in MIGRATE_CODES:
        raise RequestError(code, "", message) from None
    return SegmentEnd(failure=f"{code.name}: {err.details()}", code=code, died_with=died_with)
