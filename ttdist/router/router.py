"""The router: checks a request, picks a replica, streams its tokens, moves it when a replica fails.

``Router`` knows the replicas through a ``ReplicaSource`` (the coordinator in a cluster, a
fixed table in tests), refreshed every ``refresh_s`` into its ``ReplicaSet`` (the table, a
channel and stream per replica, its own count of streams per replica, fresher than heartbeats,
for the load-based policies). Per request it:

1. checks the fields (``check_request``), tokenizes text so routing and migration work on ids;
2. filters ready replicas, lets the policy pick one and opens a stream to it; when none can
   take it, waits for one (to the request's deadline, else ``ready_wait_s``), counted in its
   reports as ``waiting_for_replica`` so an autoscaled pool with no replica starts one;
3. forwards chunks (streaming) and builds the final ``Complete`` over all segments
   (``completion``);
4. on a replica failure mid-stream (connection lost, UNAVAILABLE, INTERNAL, or the coordinator
   marking it failed) resubmits prompt + ids already sent, as a ``resume``, to another ready
   replica (``migration``). Greedy and seeded decoding continue exactly. Which replicas a
   request avoids and when it gives up is ``attempts.Attempts``: only failures that implicate
   the request count (its own engine error, being the one stream a replica died with); a
   replica death that takes several streams moves them all, each waiting for a ready replica
   within its deadline.

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
from ttdist.router.attempts import Attempts, Failure, wait_for_replica
from ttdist.router.completion import assemble_complete
from ttdist.router.latency import LatencyWindow
from ttdist.router.migration import (
    InFlight, Progress, Segment, SegmentEnd, TokenTimes, already_done, sub_request, token_budget,
)
from ttdist.router.policies import NoReplicaError, ReplicaView, RequestInfo, make_policy, route
from ttdist.router.replica_set import ReplicaSet
from ttdist.router.trace import RequestTrace
from ttdist.router.stream_interval import ChunkMerger, StreamInterval, interval_for, merged
from ttdist.runtime.generation_defaults import apply_generation_defaults
from ttdist.runtime.request_checks import RequestError, check_prompt_length, check_request, invalid
from ttdist.dashboard.events import EventKind
from ttdist.dashboard.replica_state import ReplicaState
from ttdist.runtime.routing_table import ReplicaEntry, RouterReport, RoutingTable
from ttdist.tracing import TracingConfig, make_tracing
from ttdist.v1 import generation_pb2 as pb

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
    max_migrations: int = 3            # failures that implicate a request (attempts.py) it survives
    max_moves: int = 32                # moves of a request without a deadline, implicating or not
    refresh_s: float = 0.25
    suspect_s: float = 10.0
    latency_window: int = 4096
    status_timeout_s: float = 1.0      # GetClusterStatus: how long to wait for each replica's own figures
    ready_wait_s: float = 30.0         # no replica can take a request: wait this long for one (or to its deadline)
    max_engine_errors: int = 2         # engine errors (INTERNAL) on this many replicas end a request with INTERNAL
    max_lone_deaths: int = 2           # the one stream on this many replicas that died: INTERNAL (the poison rule)
    tracing: TracingConfig = TracingConfig()   # OTLP spans of each sampled request (off by default)
    model: str = ""                    # the served model it routes ("" = the cluster's first); one Router per model


class ReplicaSource(Protocol):
    async def table(self, report: RouterReport) -> RoutingTable:
        """The current registry; ``report`` carries what the router saw since last time."""


class Router:
    def __init__(self, config: RouterConfig, source: ReplicaSource, tokenizer=None) -> None:
        self.config = config
        self.policy = make_policy(config.policy)
        self.source = source
        self.tokenizer = tokenizer
        self.on_serving: Callable[[bool], Awaitable[None]] | None = None
        self.replicas = ReplicaSet(config.cluster_token, config.suspect_s)
        self.tracing = make_tracing(config.tracing, "ttdist-router")
        self._serving: bool | None = None
        self._streams: dict[str, InFlight] = {}
        self._times = TokenTimes(LatencyWindow(config.latency_window), LatencyWindow(config.latency_window))
        self._events: list[Event] = []
        self._requests_total = self._migrations_total = 0
        self._waiting_for_replica = 0   # requests held now because no replica could take them
        self._task: asyncio.Task | None = None
        self._draining = False

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.replicas.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)

    @property
    def serving(self) -> bool:
        """What the health checks (gRPC and HTTP) say: serving, as of the last refresh."""
        return bool(self._serving)

    @property
    def table(self) -> RoutingTable:
        return self.replicas.table

    @property
    def inflight(self) -> int:
        """Requests streaming through this router now."""
        return len(self._streams)

    def views(self) -> list[ReplicaView]:
        return self.replicas.views()

    def choose(self, info: RequestInfo, exclude: frozenset[str] = frozenset()) -> ReplicaView:
        """The policy's replica for ``info`` among the ready ones, less suspects and ``exclude``
        (raises ``NoReplicaError`` when none is left)."""
        return route(self.policy, self.replicas.candidates(), info, exclude)

    async def refresh(self) -> None:
        report = replace(self.report_snapshot(), events=tuple(self._events), prefix_held=self.replicas.prefix_held(),
                         table_version=self.replicas.table_version)
        table = await self.source.table(report)
        self._events = self._events[len(report.events):]
        self._apply(table)
        ready = len(self.replicas.candidates()) > 0
        serving = not self._draining and (ready or table.starts_on_demand)
        changed, self._serving = serving != self._serving, serving
        if changed and self.on_serving is not None:
            await self.on_serving(serving)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            try:
                await self.refresh()
            except Exception as err:  # noqa: BLE001 - a failed refresh keeps the last table
                self._event(EventKind.ROUTER_REFRESH_FAILED, "", repr(err))

    def _apply(self, table: RoutingTable) -> None:
        """Take ``table``; a stream on a replica that left it or failed moves elsewhere."""
        self.replicas.apply(table)
        leaving = [f for f in self._streams.values()
                   if f.replica_id and f.call is not None and not f.evacuate and self.replicas.gone(f.replica_id)]
        for flight in leaving:
            flight.evacuate = True
            flight.evacuated_with = sum(f.replica_id == flight.replica_id for f in leaving)
            flight.call.cancel()

    async def cluster_status(self) -> RoutingTable:
        """The registry as of now, with each live replica's load as the replica reports it now."""
        await self.refresh()
        table = self.table
        timeout_s = self.config.status_timeout_s
        entries = await asyncio.gather(*(self.replicas.live_entry(e, timeout_s) for e in table.replicas))
        return replace(table, replicas=tuple(entries))

    def _event(self, kind: str, replica_id: str, message: str) -> None:
        """Events wait here for the next report; bounded while the coordinator does not answer."""
        self._events.append(Event(time.time(), kind, replica_id, message))
        del self._events[:-MAX_PENDING_EVENTS]

    def report_snapshot(self) -> RouterReport:
        return RouterReport(
            policy=self.policy.name, ttft_seconds=self._times.ttft.summary(),
            inter_token_seconds=self._times.itl.summary(), requests_total=self._requests_total,
            migrations_total=self._migrations_total, router_id=self.config.router_id, model=self.config.model,
            waiting_for_replica=self._waiting_for_replica,
        )

    async def abort(self, request_id: str) -> bool:
        """Abort a request in flight here: the replica frees its pages, the stream ends with ABORT.
        With several routers (``config.routers > 1``) a request that is not here is aborted on every
        live replica (its moved segments too), so the router that owns it ends it with ABORT."""
        flight = self._streams.get(request_id)
        if flight is None:
            return self.config.routers > 1 and await self._abort_on_replicas(request_id)
        flight.aborted = True
        entry = self.replicas.entry(flight.replica_id) if flight.replica_id else None
        if entry is not None and await self.replicas.abort(entry.address, flight.sub_id) is None:
            if flight.call is not None:
                flight.call.cancel()
        return True

    async def _abort_on_replicas(self, request_id: str) -> bool:
        ids = [request_id] + [f"{request_id}#{k}" for k in range(1, self.config.max_moves + 1)]
        live = [e for e in self.table.replicas if e.state in (ReplicaState.READY, ReplicaState.UNHEALTHY, ReplicaState.DRAINING) and e.address]
        return any(await asyncio.gather(*(self.replicas.abort(e.address, sub_id) for e in live for sub_id in ids)))

    async def drain(self) -> None:
        """Stop taking requests (health NOT_SERVING, new ones UNAVAILABLE); those in flight go on."""
        if self.tracing is not None and (span := self.tracing.start("router.drain", attributes={
                "ttdist.router_id": self.config.router_id, "ttdist.inflight": len(self._streams)})) is not None:
            span.end()
        self._draining = True
        self._serving = False
        if self.on_serving is not None:
            await self.on_serving(False)

    async def generate(self, req: pb.GenerateRequest, timeout: float | None) -> AsyncIterator[pb.GenerateResponse]:
        """The responses for ``req``; raises ``RequestError`` for a bad request or a lost one."""
        if self._draining:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "", "the router is draining: it takes no new requests")
        card = self.table.card
        check_request(req, card)
        apply_generation_defaults(req.sampling, card.generation_defaults)
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
        flight = InFlight(rid)
        self._streams[rid] = flight
        self._requests_total += 1
        trace = RequestTrace.start(self.tracing, req, rid, info.prompt_tokens, self.policy.name)
        error: BaseException | None = None
        try:
            responses = self._run(req, flight, prompt, info, deadline, trace)
            if req.stream and not interval.every_token:
                responses = merged(responses, ChunkMerger(interval), rid)
            async for resp in responses:
                if trace is not None and resp.HasField("complete"):
                    trace.finished(resp.complete)
                yield resp
        except BaseException as err:
            error = err
            raise
        finally:
            self._streams.pop(rid, None)
            if trace is not None:
                trace.close(error)

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

    async def _run(self, req, flight: InFlight, prompt, info: RequestInfo, deadline, trace: RequestTrace | None):
        """The request's segments, one replica each, until one finishes or the request must end."""
        max_tokens = token_budget(req, prompt, self.config.default_max_tokens, self.table.card.max_context)
        progress = Progress(time.perf_counter(), [])
        attempts = Attempts(self.config.max_migrations, self.config.max_engine_errors, self.config.max_lone_deaths,
                            self.config.max_moves)
        eos = getattr(self.tokenizer, "eos_token_ids", ())
        while True:
            done = already_done(req, progress, max_tokens, eos)
            if done is not None:
                yield pb.GenerateResponse(request_id=flight.request_id, complete=assemble_complete(done, progress, prompt))
                return
            routing = trace.routing() if trace is not None else 0.0
            replica = await self._pick(info, attempts, deadline)
            if trace is not None:
                trace.routed(routing, replica, info)
            attempts.tried.append(replica.replica_id)
            entry = self.replicas.entry(replica.replica_id)
            end = SegmentEnd()
            async for item in self._segment(req, flight, entry, prompt, info, progress, deadline, trace).run():
                if isinstance(item, SegmentEnd):
                    end = item
                else:
                    yield item
            if trace is not None:
                trace.segment_ended(end, len(progress.ids))
            if end.finished:
                self.policy.on_complete(replica.replica_id, info)
                return
            if end.overloaded:
                if len(self.views()) <= 1:
                    raise RequestError(end.code, "", end.message)
                attempts.overloaded(entry)
                continue
            if flight.aborted:
                yield pb.GenerateResponse(request_id=flight.request_id, complete=assemble_complete(pb.ABORT, progress, prompt))
                return
            failure = Failure(end.code, end.failure, self._died_with(entry, end))
            error = attempts.failed(entry, failure, deadline)
            if trace is not None and error is None:
                trace.migrating(entry.replica_id, failure)
            if prompt is None:
                raise RequestError(end.code if error else grpc.StatusCode.UNAVAILABLE, "",
                                   f"replica {replica.replica_id} failed: {end.failure}")
            progress.migrations += 1
            self._moved(entry, end, flight.request_id)
            if error is not None:
                raise error

    def _segment(self, req, flight: InFlight, entry: ReplicaEntry, prompt, info: RequestInfo,
                 progress: Progress, deadline: float | None, trace: RequestTrace | None) -> Segment:
        """Open the request's next stretch on ``entry``'s replica."""
        sub = sub_request(req, flight.request_id, prompt, progress)
        if trace is not None:
            trace.segment(sub, entry.replica_id)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        call = self.replicas.link(entry.address).generate(sub, timeout)
        flight.moved_to(entry.replica_id, sub.request_id, call)
        progress.last_replica = entry.replica_id
        return Segment(req, sub, call, flight, progress, prompt, self.replicas.load(entry.replica_id),
                       len(sub.token_ids.ids) or info.prompt_tokens, self._times)

    async def _pick(self, info: RequestInfo, attempts: Attempts, deadline: float | None) -> ReplicaView:
        """The replica for the next segment; waits (to the deadline, else ``ready_wait_s``) while none can take it."""
        def pick():
            if attempts.overloaded_on and attempts.all_overloaded(self.table, lambda e: e.state == ReplicaState.READY):
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "", "every ready replica is overloaded")
            return self.choose(info, attempts.avoid(self.table))

        until = deadline if deadline is not None else time.monotonic() + self.config.ready_wait_s
        try:
            return pick()
        except NoReplicaError:
            pass
        self._waiting_for_replica += 1   # reported to the coordinator: an autoscaled pool starts a replica for it
        try:
            return await wait_for_replica(pick, until, self.config.refresh_s)
        except NoReplicaError as err:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "", str(err)) from None
        finally:
            self._waiting_for_replica -= 1

    def _died_with(self, entry: ReplicaEntry, end: SegmentEnd) -> int:
        """How many streams ``end``'s failure took at once. This router sees only its own streams on
        a broken link: with several routers, the replica's last heartbeat counts the others' too."""
        if end.died_with == 1 and self.config.routers > 1:
            return max(1, entry.running + entry.waiting)
        return end.died_with

    def _moved(self, entry: ReplicaEntry, end: SegmentEnd, request_id: str) -> None:
        """A request moves away from ``entry``; the replica is suspect (skipped for a while) unless
        the failure was the engine failing on that request alone."""
        if not Failure(end.code, end.failure, end.died_with).own_engine_error:
            self.replicas.suspect(entry)
        self._migrations_total += 1
        self._event(EventKind.REQUEST_MIGRATED, entry.replica_id, f"{request_id}: {end.failure}")
