"""The ``Generation`` service of one replica: proto requests in, engine outputs out.

A thin adapter over a ``ServingEngine`` (``generate``, ``abort``, ``tokenizer``):
it checks the request, turns it into a ``GenerationRequest``, streams each step's new ids
and text as a ``Chunk`` and ends with a ``Complete``. Engine errors become status codes:
a bad field INVALID_ARGUMENT, a full queue RESOURCE_EXHAUSTED, a stopped engine UNAVAILABLE
(which tells the router to move the stream elsewhere), and INTERNAL naming the cause when
the engine failed on this request alone or failed while running it (the router moves it
once more; a request that failed so on two replicas ends with INTERNAL).

Every token it streams is timed into the replica's ``ReplicaLatency`` (TTFT and inter-token
histograms), and ``on_change`` is called when a request starts and when it ends, so the
replica can report its new running / waiting counts at once.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Awaitable
from dataclasses import replace
from typing import Callable, Union

import grpc

from ttdist.engine.errors import EngineStoppedError, InvalidRequestError, OverloadedError
from ttdist.engine.request import FinishReason, GenerationRequest, RequestOutput, Resume, SamplingParams
from ttdist.engine.serving import ServingEngine
from ttdist.runtime.auth import cluster_interceptors
from ttdist.runtime.grpc_server import RunningServer, start_generation_server
from ttdist.runtime.logprob_proto import engine_counts, to_proto
from ttdist.runtime.request_checks import ModelCard, RequestError, abort_with, check_abort, check_request, invalid
from ttdist.runtime.replica_latency import ReplicaLatency
from ttdist.runtime.replica_trace import ReplicaTrace
from ttdist.tracing import Tracing
from ttdist.tracing.tracer import take_context
from ttdist.runtime.routing_table import ReplicaEntry
from ttdist.runtime import structured_output
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc
from ttdist.v1 import replica_pb2 as rpb
from ttdist.v1 import replica_pb2_grpc as rpb_grpc

OFFLOAD_PROMPT_CHARS = 16384   # longer text prompts are tokenized off the event loop

# What GetClusterStatus answers: a replica's entry, read without blocking the loop (a coroutine
# function when it waits on the engine; a plain one when its figures are at hand)
StatusSource = Callable[[], Union[ReplicaEntry, Awaitable[ReplicaEntry]]]

FINISH_TO_PROTO = {
    FinishReason.STOP: pb.STOP,
    FinishReason.LENGTH: pb.LENGTH,
    FinishReason.EOS: pb.EOS,
    FinishReason.ABORT: pb.ABORT,
}


def to_engine_request(req: pb.GenerateRequest) -> GenerationRequest:
    """The engine's request for a checked proto request (a fresh id when it has none)."""
    s = req.sampling
    sampling = SamplingParams(
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p if 0 < s.top_p < 1 else 1.0,
        seed=s.seed if s.HasField("seed") else None,
        max_tokens=s.max_tokens or None,
        stop=list(s.stop),
        stop_token_ids=list(s.stop_token_ids),
        ignore_eos=s.ignore_eos,
        **engine_counts(s),
        repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else 1.0,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        logit_bias=dict(s.logit_bias),
        min_p=s.min_p,
        min_tokens=s.min_tokens,
        structured_output=structured_output.to_engine(s),
        bad_words=list(s.bad_words),
    )
    request_id = req.request_id or uuid.uuid4().hex
    if req.WhichOneof("input") == "text":
        return GenerationRequest(request_id, prompt=req.text, sampling=sampling)
    ids = list(req.token_ids.ids)
    n = req.resume.generated_tokens
    if n:
        resume = Resume(ids[len(ids) - n:], req.resume.emitted_chars)
        return GenerationRequest(request_id, prompt_token_ids=ids[:len(ids) - n], sampling=sampling, resume=resume)
    return GenerationRequest(request_id, prompt_token_ids=ids, sampling=sampling)


def complete_proto(out: RequestOutput, replica_id: str) -> pb.Complete:
    usage = out.usage
    timings = out.timings
    return pb.Complete(
        finish_reason=FINISH_TO_PROTO[out.finish_reason or FinishReason.ABORT],
        usage=pb.Usage(
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else len(out.output_ids),
            cached_tokens=usage.cached_tokens if usage else 0,
        ),
        output_ids=out.output_ids,
        text=out.output_text,
        replica_id=replica_id,
        timings=pb.Timings(
            queue_seconds=timings.queue_s, ttft_seconds=timings.ttft_s,
            mean_inter_token_seconds=timings.mean_inter_token_s, total_seconds=timings.total_s,
        ) if timings else None,
    )


class EngineFailure(RequestError):
    """The engine failed as a whole (not on this request alone) and ended ``streams`` streams."""

    def __init__(self, message: str, streams: int) -> None:
        super().__init__(grpc.StatusCode.INTERNAL, "", message)
        self.streams = streams


class _Outbox:
    """The entries of one router stream since its last message: all go out together."""

    def __init__(self) -> None:
        self._batch = rpb.ReplicaStreamBatch()
        self._ready = asyncio.Event()
        self.closed = False

    def add(self, key: int, **kind) -> None:
        self._batch.entries.add(key=key, **kind)
        self._ready.set()

    def error(self, key: int, err: RequestError) -> None:
        streams = err.streams if isinstance(err, EngineFailure) else 0
        self.add(key, error=rpb.StreamError(code=err.code.value[0], message=str(err), streams_failed=streams))

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def take(self) -> rpb.ReplicaStreamBatch | None:
        """The next message (None once closed). The engine wakes every reader of one step in the
        same loop turn, so by the time this wakes that step's entries are all here."""
        while not self._batch.entries:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        batch, self._batch = self._batch, rpb.ReplicaStreamBatch()
        return batch


class ReplicaService(pb_grpc.GenerationServicer, rpb_grpc.ReplicaServicer):
    """Serves one engine. ``status`` gives this replica's registry entry for GetClusterStatus."""

    def __init__(
        self, engine: ServingEngine, card: ModelCard, replica_id: str, status: StatusSource,
        latency: ReplicaLatency | None = None, on_change: Callable[[], None] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.engine = engine
        self.tracing = tracing
        self.card = card
        self.replica_id = replica_id
        self.latency = latency if latency is not None else ReplicaLatency()
        self._status = status
        self._on_change = on_change or (lambda: None)
        self._active = 0                                  # requests in _results now
        self._engine_failure: tuple[str, int] | None = None   # the engine's last failure and the streams it ended

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        trace = self._trace(request, context.invocation_metadata())
        error: BaseException | None = None
        try:
            check_request(request, self.card)
            engine_request = to_engine_request(request)
            rid = engine_request.request_id
            async for item in self._results(engine_request, request.stream, trace):
                if isinstance(item, pb.Chunk):
                    yield pb.GenerateResponse(request_id=rid, chunk=item)
                else:
                    yield pb.GenerateResponse(request_id=rid, complete=item)
        except RequestError as err:
            error = err
            await abort_with(context, err)
        finally:
            if trace is not None:
                trace.close(error)

    async def ReplicaStream(self, request_iterator, context: grpc.aio.ServicerContext):
        """One router's requests multiplexed on one stream; one message per engine step (see
        ``ttdist.router.replica_link``). The router closing its side or going away ends the
        stream and aborts every request it still had open here (their pages are freed)."""
        await context.send_initial_metadata(())   # the router knows the stream is up (see replica_link)
        outbox = _Outbox()
        tasks: dict[int, asyncio.Task] = {}

        async def read() -> None:
            async for msg in request_iterator:
                if msg.WhichOneof("kind") == "open":
                    key = msg.open.key
                    if key in tasks:
                        outbox.error(key, invalid("key", f"stream key {key} is already open"))
                        continue
                    task = asyncio.get_running_loop().create_task(self._serve_entry(key, msg.open.request, outbox))
                    tasks[key] = task
                    task.add_done_callback(lambda _, k=key: tasks.pop(k, None))
                else:
                    task = tasks.pop(msg.cancel, None)
                    if task is not None:
                        task.cancel()

        reader = asyncio.get_running_loop().create_task(read())
        reader.add_done_callback(lambda _: outbox.close())   # the router closed its side: end
        try:
            while (batch := await outbox.take()) is not None:
                yield batch
        finally:
            reader.cancel()
            for task in list(tasks.values()):
                task.cancel()

    async def _serve_entry(self, key: int, request: pb.GenerateRequest, outbox: "_Outbox") -> None:
        trace = self._trace(request)
        error: BaseException | None = None
        try:
            check_request(request, self.card)
            async for item in self._results(to_engine_request(request), request.stream, trace):
                if isinstance(item, pb.Chunk):
                    outbox.add(key, chunk=item)
                else:
                    outbox.add(key, complete=item)
        except RequestError as err:
            error = err
            outbox.error(key, err)
        except Exception as err:  # noqa: BLE001 - as Generate would end: UNKNOWN with the error text
            error = err
            outbox.error(key, RequestError(grpc.StatusCode.UNKNOWN, "", f"{type(err).__name__}: {err}"))
        finally:
            if trace is not None:
                trace.close(error)

    def _trace(self, request: pb.GenerateRequest, metadata=None) -> ReplicaTrace | None:
        """The request's spans here, when tracing is on and the request carries a sampled trace
        context (in the message, or a direct caller's ``traceparent`` metadata)."""
        if self.tracing is None:
            return None
        take_context(request, metadata)
        return ReplicaTrace.start(self.tracing, request.traceparent, request.tracestate, self.replica_id,
                                  request.request_id)

    async def _results(self, engine_request: GenerationRequest, stream: bool, trace: ReplicaTrace | None):
        """The request's ``Chunk``s (when streaming), then its ``Complete``; raises ``RequestError``."""
        rid = engine_request.request_id
        clock = self.latency.request()
        logprobs: list = []            # every output's, for the Complete
        prompt_logprobs: list = []
        self._active += 1
        try:
            self._on_change()
            engine_request = await self._tokenized(engine_request)
            await structured_output.compile_off_loop(engine_request.sampling.structured_output, self.engine.tokenizer)
            if trace is not None:
                engine_request = replace(engine_request, traced=True)
                trace.submitted()
            async for out in self.engine.generate(engine_request):
                clock.tokens(len(out.token_ids))
                if out.request_error:
                    raise RequestError(grpc.StatusCode.INTERNAL, "", f"replica {self.replica_id}: the engine failed on "
                                       f"this request: {out.request_error}")
                if out.error:
                    raise EngineFailure(f"replica {self.replica_id}: {out.error}", self._streams_ended(out.error))
                chunk_logprobs, chunk_prompt = to_proto(out.logprobs), to_proto(out.prompt_logprobs)
                logprobs.extend(chunk_logprobs)
                prompt_logprobs.extend(chunk_prompt)
                if stream and (out.token_ids or out.text):
                    yield pb.Chunk(token_ids=out.token_ids, text=out.text, logprobs=chunk_logprobs,
                                   prompt_logprobs=chunk_prompt)
                if out.finished:
                    if trace is not None:
                        trace.finished(out)
                    complete = complete_proto(out, self.replica_id)
                    complete.logprobs.extend(logprobs)
                    complete.prompt_logprobs.extend(prompt_logprobs)
                    yield complete
                    return
        except InvalidRequestError as err:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, err.field, err.reason) from None
        except OverloadedError as err:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "", f"replica {self.replica_id} is overloaded: {err}") from None
        except EngineStoppedError as err:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "", f"replica {self.replica_id} is not running: {err}") from None
        except RequestError:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. the tokenizer failed on this prompt: this request only
            raise RequestError(grpc.StatusCode.INTERNAL, "", f"replica {self.replica_id}: the engine failed on this "
                               f"request: {type(err).__name__}: {err}") from None
        finally:
            self._active -= 1
            self._on_change()
        raise RequestError(grpc.StatusCode.UNAVAILABLE, "", f"replica {self.replica_id} ended {rid} without a result")

    def _streams_ended(self, error: str) -> int:
        """How many streams the engine's failure ``error`` ended: the requests here when its first
        one saw it (the engine ends them all with the same error in one go; each one that has
        seen it is no longer counted in ``_active``)."""
        if self._engine_failure is None or self._engine_failure[0] != error:
            self._engine_failure = (error, self._active)
        return self._engine_failure[1]

    async def _tokenized(self, request: GenerationRequest) -> GenerationRequest:
        """A long text prompt tokenized in a worker thread (the engine would do it on the event
        loop, holding up every other stream of this replica meanwhile)."""
        tokenizer = self.engine.tokenizer
        if tokenizer is None or request.prompt is None or len(request.prompt) < OFFLOAD_PROMPT_CHARS:
            return request
        ids = await asyncio.to_thread(tokenizer.encode, request.prompt)
        return replace(request, prompt=None, prompt_token_ids=ids)

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortResponse:
        try:
            check_abort(request)
        except RequestError as err:
            await abort_with(context, err)
        return pb.AbortResponse(found=bool(self.engine.abort(request.request_id)))

    async def ListModels(self, request, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[self.card.to_proto()])

    async def GetClusterStatus(self, request, context) -> pb.ClusterStatus:
        entry = self._status()
        if inspect.isawaitable(entry):
            entry = await entry
        return pb.ClusterStatus(replicas=[entry.to_proto()], model=self.card.model_id)


async def start_replica_server(
    engine: ServingEngine, card: ModelCard, replica_id: str, status: StatusSource, host: str = "127.0.0.1", port: int = 0,
    *, latency: ReplicaLatency | None = None, on_change: Callable[[], None] | None = None, token: str = "",
    tracing: Tracing | None = None,
) -> RunningServer:
    """Serve ``engine`` on host:port (0 = any free port), SERVING at once; with ``token`` every call
    must present it (``authorization: Bearer <token>``): only the cluster may use the port."""
    service = ReplicaService(engine, card, replica_id, status, latency, on_change, tracing)
    running = await start_generation_server(
        service, host, port, also=lambda server: rpb_grpc.add_ReplicaServicer_to_server(service, server),
        interceptors=cluster_interceptors(token))
    await running.set_serving(True)
    return running
