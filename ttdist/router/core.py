"""The router: checks a request, picks a replica, streams its tokens, moves it when a replica fails.

``Router`` knows the replicas through a ``ReplicaSource`` (the coordinator in a cluster, a
fixed table in tests), refreshed every ``refresh_s``. It keeps its own count of streams per
replica (fresher than heartbeats) for the load-based policies. Per request it:

1. checks the fields (``check_request``), tokenizes text so routing and migration work on ids;
2. filters ready replicas, lets the policy pick one and opens a stream to it; when none can
   take it, waits for one (to the request's deadline, else ``ready_wait_s``);
3. forwards chunks (streaming) and builds the final ``Complete`` over all segments;
4. on a replica failure mid-stream (connection lost, UNAVAILABLE, INTERNAL, or the coordinator
   marking it failed) resubmits prompt + ids already sent, as a ``resume``, to another ready
   replica: it rebuilds the text already sent, so the client sees no gap, no duplicate and
   the same text (held-back bytes and stop strings across the move included). Greedy and
   seeded decoding continue exactly. Which replicas a request avoids and when it gives up
   (engine errors on two replicas: INTERNAL) is ``attempts.Attempts``.

``cluster_status`` (GetClusterStatus) answers with the registry's states and each live
replica's load read from the replica itself (``status_timeout_s``), so a request that has
just finished no longer counts as running; a replica that does not answer in time keeps
its last heartbeat figures.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Awaitable, Callable, Protocol

import grpc

from ttdist.dashboard.events import Event
from ttdist.engine.page_pool import block_hashes
from ttdist.router.attempts import ENGINE_ERROR_CODES, Attempts, wait_for_replica
from ttdist.router.latency import LatencyWindow
from ttdist.router.policies import NoReplicaError, ReplicaView, RequestInfo, make_policy, route
from ttdist.router.replica_link import ReplicaLink, SubStream
from ttdist.router.stream_interval import ChunkMerger, StreamInterval, interval_for, merged
from ttdist.runtime.auth import cluster_channel
from ttdist.runtime.request_checks import RequestError, check_prompt_length, check_request, invalid
from ttdist.runtime.routing_table import DRAINING, FAILED, READY, UNHEALTHY, ReplicaEntry, RouterReport, RoutingTable
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc

MIGRATE_CODES = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED, grpc.StatusCode.DATA_LOSS,
}
SUSPECT = "suspect"
MAX_PENDING_EVENTS = 1000   # events kept for the coordinator while it does not answer (the oldest go)
INLINE_PROMPT_CHARS = 16384   # longer text prompts are tokenized in a worker thread


@dataclass(frozen=True)
class RouterConfig:
    policy: str = "round_robin"
    cluster_token: str = field(default="", repr=False)   # presented on every call to a replica's internal port
    default_max_tokens: int = 256
    stream_interval: StreamInterval = StreamInterval()   # chunks to clients: every token by default
    router_id: str = "router-0"        # its name in reports to the coordinator (one per router)
    routers: int = 1                   # routers serving one port (> 1: SO_REUSEPORT; Abort of a request not here goes to the replicas)
    max_inflight: int = 4096
    max_migrations: int = 3
    refresh_s: float = 0.25
    suspect_s: float = 10.0
    latency_window: int = 4096
    status_timeout_s: float = 1.0      # GetClusterStatus: how long to wait for each replica's own figures
    ready_wait_s: float = 30.0         # no replica can take a request: wait this long for one (or to its deadline)
    max_engine_errors: int = 2         # engine errors (INTERNAL) on this many replicas end a request with INTERNAL


class ReplicaSource(Protocol):
    async def table(self, report: RouterReport) -> RoutingTable:
        """The current registry; ``report`` carries what the router saw since last time."""


@dataclass
class _Load:
    running: int = 0
    waiting: int = 0
    pending_prefill_tokens: int = 0


@dataclass
class _Stream:
    request_id: str
    replica_id: str = ""
    sub_id: str = ""
    call: SubStream | None = None
    evacuate: bool = False
    aborted: bool = False
    attempts: Attempts | None = None


@dataclass
class _Progress:
    """What one request has produced so far, across replicas."""

    started: float
    ids: list[int]
    pieces: list[str] = field(default_factory=list)   # the text so far, joined only when read
    first_at: float = 0.0
    last_at: float = 0.0
    migrations: int = 0
    last_replica: str = ""

    @property
    def text(self) -> str:
        if len(self.pieces) > 1:
            self.pieces[:] = ["".join(self.pieces)]
        return self.pieces[0] if self.pieces else ""

    @text.setter
    def text(self, value: str) -> None:
        self.pieces[:] = [value]


class Router:
    def __init__(self, config: RouterConfig, source: ReplicaSource, tokenizer=None) -> None:
        self.config = config
        self.policy = make_policy(config.policy)
        self.source = source
        self.tokenizer = tokenizer
        self.on_serving: Callable[[bool], Awaitable[None]] | None = None
        self._table: RoutingTable | None = None
        self._serving: bool | None = None
        self._stubs: dict[str, tuple[grpc.aio.Channel, pb_grpc.GenerationStub]] = {}
        self._links: dict[str, ReplicaLink] = {}
        self._loads: dict[str, _Load] = {}
        self._suspect: dict[str, tuple[str, int, float]] = {}
        self._streams: dict[str, _Stream] = {}
        self._ttft = LatencyWindow(config.latency_window)
        self._itl = LatencyWindow(config.latency_window)
        self._events: list[Event] = []
        self._requests_total = self._migrations_total = 0
        self._task: asyncio.Task | None = None
        self._draining = False

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for link in self._links.values():
            await link.close()
        self._links.clear()
        for channel, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()

    @property
    def serving(self) -> bool:
        """What the health checks (gRPC and HTTP) say: serving, as of the last refresh."""
        return bool(self._serving)

    @property
    def table(self) -> RoutingTable:
        if self._table is None:
            raise RuntimeError("the router has no routing table yet: call start()")
        return self._table

    async def refresh(self) -> None:
        report = replace(self.report_snapshot(), events=tuple(self._events))
        table = await self.source.table(report)
        self._events = self._events[len(report.events):]
        self._apply(table)
        serving = not self._draining and any(v.state == READY for v in self.views())
        if serving != self._serving and self.on_serving is not None:
            await self.on_serving(serving)
        self._serving = serving

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            try:
                await self.refresh()
            except Exception as err:  # noqa: BLE001 - a failed refresh keeps the last table
                self._event("router_refresh_failed", "", repr(err))

    def _apply(self, table: RoutingTable) -> None:
        self._table = table
        by_id = {e.replica_id: e for e in table.replicas}
        for stream in self._streams.values():
            entry = by_id.get(stream.replica_id)
            gone = entry is None or entry.state == FAILED
            if stream.replica_id and gone and stream.call is not None and not stream.evacuate:
                stream.evacuate = True
                stream.call.cancel()
        addresses = {e.address for e in table.replicas}
        for address in [a for a in self._stubs if a not in addresses]:
            link = self._links.pop(address, None)
            if link is not None:
                asyncio.get_running_loop().create_task(link.close())
            channel, _ = self._stubs.pop(address)
            asyncio.get_running_loop().create_task(channel.close())

    async def cluster_status(self) -> RoutingTable:
        """The registry as of now, with each live replica's load as the replica reports it now."""
        await self.refresh()
        table = self.table
        entries = await asyncio.gather(*(self._live_entry(e) for e in table.replicas))
        return replace(table, replicas=tuple(entries))

    async def _live_entry(self, entry: ReplicaEntry) -> ReplicaEntry:
        if entry.state not in (READY, UNHEALTHY) or not entry.address:
            return entry
        try:
            answer = await self._stub(entry.address).GetClusterStatus(
                pb.ClusterStatusRequest(), timeout=self.config.status_timeout_s)
        except grpc.aio.AioRpcError:
            return entry
        live = next((r for r in answer.replicas if r.replica_id == entry.replica_id), None)
        if live is None:
            return entry
        return replace(entry, running=live.running, waiting=live.waiting, kv_pages_free=live.kv_pages_free,
                       tokens_per_second=live.tokens_per_second, kv_user_groups=live.kv_user_groups or 1,
                       kv_pages_free_per_group=tuple(live.kv_pages_free_per_group))

    def views(self) -> list[ReplicaView]:
        views = []
        now = time.monotonic()
        for e in self.table.replicas:
            load = self._loads.get(e.replica_id, _Load())
            suspect = self._suspect.get(e.replica_id)
            state = e.state
            if suspect and suspect[:2] == (e.address, e.pid) and now < suspect[2]:
                state = SUSPECT
            views.append(ReplicaView(
                e.replica_id, state, max(e.running, load.running), max(e.waiting, load.waiting),
                load.pending_prefill_tokens, e.prefix_hashes,
            ))
        return views

    def _stub(self, address: str) -> pb_grpc.GenerationStub:
        if address not in self._stubs:
            channel = cluster_channel(address, self.config.cluster_token)
            self._stubs[address] = (channel, pb_grpc.GenerationStub(channel))
        return self._stubs[address][1]

    def _link(self, address: str) -> ReplicaLink:
        """The one stream to ``address`` that all of this router's requests there share."""
        link = self._links.get(address)
        if link is None or link.broken:
            self._stub(address)
            link = self._links[address] = ReplicaLink(self._stubs[address][0])
        return link

    def _mark_suspect(self, entry: ReplicaEntry, reason: str, request_id: str, suspect: bool = True) -> None:
        """A request moves away from ``entry``; the replica is suspect (skipped for a while) unless
        the failure was the engine failing on that request alone."""
        if suspect:
            self._suspect[entry.replica_id] = (entry.address, entry.pid, time.monotonic() + self.config.suspect_s)
        self._migrations_total += 1
        self._event("request_migrated", entry.replica_id, f"{request_id}: {reason}")

    def _event(self, kind: str, replica_id: str, message: str) -> None:
        """Events wait here for the next report; bounded while the coordinator does not answer."""
        self._events.append(Event(time.time(), kind, replica_id, message))
        del self._events[:-MAX_PENDING_EVENTS]

    def report_snapshot(self) -> RouterReport:
        return RouterReport(
            policy=self.policy.name, ttft_seconds=self._ttft.summary(), inter_token_seconds=self._itl.summary(),
            requests_total=self._requests_total, migrations_total=self._migrations_total,
            router_id=self.config.router_id,
        )

    async def abort(self, request_id: str) -> bool:
        """Abort a request in flight here: the replica frees its pages, the stream ends with ABORT.
        With several routers (``config.routers > 1``) a request that is not here is aborted on every
        live replica (its moved segments too), so the router that owns it ends it with ABORT."""
        stream = self._streams.get(request_id)
        if stream is None:
            return self.config.routers > 1 and await self._abort_on_replicas(request_id)
        stream.aborted = True
        entry = self.table.entry(stream.replica_id) if stream.replica_id else None
        if entry is not None:
            try:
                await self._stub(entry.address).Abort(pb.AbortRequest(request_id=stream.sub_id), timeout=5.0)
            except grpc.aio.AioRpcError:
                if stream.call is not None:
                    stream.call.cancel()
        return True

    @property
    def inflight(self) -> int:
        """Requests streaming through this router now."""
        return len(self._streams)

    async def drain(self) -> None:
        """Stop taking requests (health NOT_SERVING, new ones UNAVAILABLE); those in flight go on."""
        self._draining = True
        self._serving = False
        if self.on_serving is not None:
            await self.on_serving(False)

    async def _abort_on_replicas(self, request_id: str) -> bool:
        ids = [request_id] + [f"{request_id}#{k}" for k in range(1, self.config.max_migrations + 1)]
        live = [e for e in self.table.replicas if e.state in (READY, UNHEALTHY, DRAINING) and e.address]

        async def one(address: str, sub_id: str) -> bool:
            try:
                return (await self._stub(address).Abort(pb.AbortRequest(request_id=sub_id), timeout=5.0)).found
            except grpc.aio.AioRpcError:
                return False
        return any(await asyncio.gather(*(one(e.address, sub_id) for e in live for sub_id in ids)))

    async def generate(self, req: pb.GenerateRequest, timeout: float | None) -> AsyncIterator[pb.GenerateResponse]:
        """The responses for ``req``; raises ``RequestError`` for a bad request or a lost one."""
        if self._draining:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "", "the router is draining: it takes no new requests")
        card = self.table.card
        check_request(req, card)
        rid = req.request_id or uuid.uuid4().hex
        prompt, hashes = await self._prompt_ids(req)
        if prompt is not None:
            check_prompt_length(len(prompt), card)
        if rid in self._streams:
            raise invalid("request_id", f"{rid!r} is already in flight")
        if len(self._streams) >= self.config.max_inflight:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "", f"{len(self._streams)} requests in flight")
        info = RequestInfo(rid, len(prompt) if prompt else len(req.text) // 4, hashes)
        interval = interval_for(req, self.config.stream_interval)
        deadline = None if timeout is None else time.monotonic() + timeout
        stream = _Stream(rid)
        self._streams[rid] = stream
        self._requests_total += 1
        try:
            responses = self._run(req, stream, prompt, info, deadline)
            if req.stream and not interval.every_token:
                responses = merged(responses, ChunkMerger(interval), rid)
            async for resp in responses:
                yield resp
        finally:
            self._streams.pop(rid, None)

    async def _prompt_ids(self, req: pb.GenerateRequest) -> tuple[list[int] | None, tuple[int, ...]]:
        """The prompt's ids (None: text and no tokenizer here) and its page hashes. A long prompt
        is tokenized and hashed off the event loop, so other requests keep streaming meanwhile."""
        page_size = self.table.card.page_size
        if req.WhichOneof("input") == "token_ids":
            ids = list(req.token_ids.ids)
        elif self.tokenizer is None:
            return None, ()
        elif len(req.text) < INLINE_PROMPT_CHARS:
            ids = self.tokenizer.encode(req.text)
        else:
            def encode() -> tuple[list[int], tuple[int, ...]]:
                ids = self.tokenizer.encode(req.text)
                return ids, tuple(block_hashes(ids, page_size))
            return await asyncio.get_running_loop().run_in_executor(None, encode)
        if len(ids) >= INLINE_PROMPT_CHARS // 4:
            return ids, tuple(await asyncio.get_running_loop().run_in_executor(None, block_hashes, ids, page_size))
        return ids, tuple(block_hashes(ids, page_size))

    async def _run(self, req, stream: _Stream, prompt, info: RequestInfo, deadline):
        max_tokens = self._max_tokens(req, prompt)
        progress = _Progress(time.perf_counter(), [])
        attempts = stream.attempts = Attempts(self.config.max_migrations, self.config.max_engine_errors)
        while True:
            done = self._already_done(req, progress, max_tokens)
            if done is not None:
                yield pb.GenerateResponse(request_id=stream.request_id, complete=self._complete(done, progress, prompt))
                return
            replica = await self._pick(info, attempts, deadline)
            attempts.tried.append(replica.replica_id)
            outcome = _Outcome()
            async for resp in self._segment(req, stream, replica.replica_id, prompt, info, progress, max_tokens,
                                            deadline, outcome):
                yield resp
            if outcome.finished:
                self.policy.on_complete(replica.replica_id, info)
                return
            if outcome.retry_elsewhere:
                attempts.overloaded(outcome.entry)
                continue
            if stream.aborted:
                yield pb.GenerateResponse(request_id=stream.request_id, complete=self._complete(pb.ABORT, progress, prompt))
                return
            error = attempts.failed(outcome.entry, outcome.code, outcome.failure)
            if prompt is None:
                raise RequestError(outcome.code if error else grpc.StatusCode.UNAVAILABLE, "",
                                   f"replica {replica.replica_id} failed: {outcome.failure}")
            progress.migrations += 1
            self._mark_suspect(outcome.entry, outcome.failure, stream.request_id, suspect=outcome.code not in ENGINE_ERROR_CODES)
            if error is not None:
                raise error

    async def _pick(self, info: RequestInfo, attempts: Attempts, deadline: float | None):
        """The replica for the next segment; waits (to the deadline, else ``ready_wait_s``) while none can take it."""
        def pick():
            if attempts.overloaded_on and attempts.all_overloaded(self.table, lambda e: e.state == READY):
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "", "every ready replica is overloaded")
            return route(self.policy, self.views(), info, attempts.avoid(self.table))

        until = deadline if deadline is not None else time.monotonic() + self.config.ready_wait_s
        try:
            return await wait_for_replica(pick, until, self.config.refresh_s)
        except NoReplicaError as err:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "", str(err)) from None

    def _max_tokens(self, req, prompt) -> int:
        """The request's max_tokens; 0 means the server default, clipped to the context the prompt
        leaves, exactly as a replica clips it."""
        if req.sampling.max_tokens:
            return req.sampling.max_tokens
        if prompt is None:
            return self.config.default_max_tokens
        return min(self.config.default_max_tokens, self.table.card.max_context - len(prompt))

    def _already_done(self, req, progress: _Progress, max_tokens: int) -> int | None:
        """The finish reason when the ids sent so far already end the request (after a failure)."""
        if not progress.ids:
            return None
        last = progress.ids[-1]
        if last in req.sampling.stop_token_ids:
            return pb.STOP
        eos = getattr(self.tokenizer, "eos_token_ids", ())
        if not req.sampling.ignore_eos and last in eos:
            return pb.EOS
        if len(progress.ids) >= max_tokens:
            return pb.LENGTH
        return None

    def _sub_request(self, req, stream: _Stream, prompt, progress: _Progress, max_tokens: int) -> pb.GenerateRequest:
        """The request for the next replica: after a failure, prompt + ids sent so far as a resume,
        so that replica rebuilds the text already sent (held-back bytes, a stop string's start)."""
        sub = pb.GenerateRequest(request_id=stream.request_id, stream=True)
        sub.sampling.CopyFrom(req.sampling)
        if progress.migrations:
            sub.request_id = f"{stream.request_id}#{progress.migrations}"
        if prompt is None:
            sub.text = req.text
        else:
            sub.token_ids.ids.extend(prompt + progress.ids)
            if progress.ids:
                sub.resume.generated_tokens = len(progress.ids)
                sub.resume.emitted_chars = len(progress.text)
        return sub

    async def _segment(self, req, stream, replica_id, prompt, info, progress: _Progress, max_tokens, deadline, outcome):
        entry = outcome.entry = self.table.entry(replica_id)
        sub = self._sub_request(req, stream, prompt, progress, max_tokens)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        call = self._link(entry.address).generate(sub, timeout)
        stream.call, stream.replica_id, stream.sub_id, stream.evacuate = call, replica_id, sub.request_id, False
        progress.last_replica = replica_id
        load = self._loads.setdefault(replica_id, _Load())
        pending = len(sub.token_ids.ids) or info.prompt_tokens
        load.waiting += 1
        load.pending_prefill_tokens += pending
        first = True
        # a resumed replica's Complete holds every generated id and the whole text
        seg_ids, seg_text = (0, 0) if sub.HasField("resume") else (len(progress.ids), len(progress.text))
        try:
            async for resp in call:
                if resp.WhichOneof("kind") == "chunk":
                    chunk = resp.chunk
                    if more := call.take_ready_chunks():   # behind: everything waiting goes out as one message
                        chunk = pb.Chunk(token_ids=[t for c in (chunk, *more) for t in c.token_ids],
                                         text="".join(c.text for c in (chunk, *more)))
                    if first:
                        first = False
                        load.waiting -= 1
                        load.pending_prefill_tokens -= pending
                        load.running += 1
                    self._record_chunk(progress, chunk)
                    if req.stream:
                        yield pb.GenerateResponse(request_id=stream.request_id, chunk=chunk)
                else:
                    progress.ids[seg_ids:] = list(resp.complete.output_ids)
                    progress.text = progress.text[:seg_text] + resp.complete.text
                    complete = self._complete(resp.complete.finish_reason, progress, prompt, resp.complete)
                    outcome.finished = True
                    yield pb.GenerateResponse(request_id=stream.request_id, complete=complete)
                    return
            outcome.failure = "the stream ended without a result"
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and first:
                outcome.retry_elsewhere = len(self.views()) > 1
                if not outcome.retry_elsewhere:
                    raise RequestError(code, "", err.details() or code.name) from None
            elif code not in MIGRATE_CODES:
                raise RequestError(code, "", err.details() or code.name) from None
            outcome.failure, outcome.code = f"{code.name}: {err.details()}", code
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not (stream.evacuate or stream.aborted) or (task is not None and task.cancelling()):
                raise
            outcome.failure = "the coordinator marked the replica failed"
        finally:
            if first:
                load.waiting -= 1
                load.pending_prefill_tokens -= pending
            else:
                load.running -= 1
            if not call.done():
                call.cancel()

    def _record_chunk(self, progress: _Progress, chunk: pb.Chunk) -> None:
        now = time.perf_counter()
        if not progress.first_at:
            progress.first_at = now
            self._ttft.add(now - progress.started)
        else:
            self._itl.add(now - progress.last_at)
        progress.last_at = now
        progress.ids.extend(chunk.token_ids)
        progress.pieces.append(chunk.text)   # not text += ...: that copies the whole output per token

    def _complete(self, reason: int, progress: _Progress, prompt, last: pb.Complete | None = None) -> pb.Complete:
        now = time.perf_counter()
        prompt_tokens = len(prompt) if prompt is not None else (last.usage.prompt_tokens if last else 0)
        cached = min(last.usage.cached_tokens, prompt_tokens) if last else 0
        n = len(progress.ids)
        itl = (progress.last_at - progress.first_at) / (n - 1) if n > 1 and progress.first_at else 0.0
        return pb.Complete(
            finish_reason=reason,
            usage=pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=n, cached_tokens=cached),
            output_ids=progress.ids, text=progress.text, replica_id=progress.last_replica,
            timings=pb.Timings(
                queue_seconds=last.timings.queue_seconds if last else 0.0,
                ttft_seconds=(progress.first_at or now) - progress.started,
                mean_inter_token_seconds=itl, total_seconds=now - progress.started,
            ),
        )


@dataclass
class _Outcome:
    finished: bool = False
    retry_elsewhere: bool = False
    failure: str = ""
    code: grpc.StatusCode | None = None     # the replica's status code when it failed the call
    entry: ReplicaEntry | None = None       # the replica incarnation this segment ran on
