"""A real grpc.aio server of the ttdist.v1 Generation service over a scripted backend.

The backend generates deterministic tokens (``expected_ids``), records every call (request,
metadata), every cancellation the server observes and every Abort, and fails on demand
(UNAVAILABLE for the first N calls or after K tokens, a fixed status for every call, slow
tokens for deadlines, a required bearer token). ``ScriptedServer`` runs it on its own event
loop in a thread, so sync and asyncio clients can both talk to it.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from tests.support.waiting import wait_for, wait_for_async
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc

MODEL_ID = "scripted-tiny"
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")
FIRST_ID = 100


def expected_ids(prompt_len: int, n: int) -> list[int]:
    """The tokens the backend generates for a prompt of ``prompt_len`` characters or ids."""
    return [FIRST_ID + (prompt_len + i) % len(WORDS) for i in range(n)]


def token_text(token_id: int) -> str:
    return WORDS[token_id - FIRST_ID] + " "


def expected_text(prompt_len: int, n: int) -> str:
    return "".join(token_text(t) for t in expected_ids(prompt_len, n))


def scripted_logprobs(sampling: pb.SamplingParams, ids: list[int]) -> list[pb.TokenLogprob]:
    """When asked: token ``t`` has logprob ``-t / 1000``, its top N are ``t, t + 1, ...`` at ``-(t + j) / 1000``."""
    if not sampling.HasField("logprobs"):
        return []
    return [pb.TokenLogprob(token_id=t, logprob=-t / 1000, top=[pb.TopLogprob(token_id=t + j, logprob=-(t + j) / 1000)
                                                                for j in range(sampling.logprobs)]) for t in ids]


@dataclass
class Script:
    unavailable_first: int = 0                 # answer UNAVAILABLE to the first N Generate calls
    error: tuple[grpc.StatusCode, str] | None = None   # every Generate fails with this status
    token_delay_s: float = 0.0                 # sleep before each token
    unavailable_after_tokens: int | None = None  # fail UNAVAILABLE after sending this many tokens
    hold_until_active: int = 0                 # each Generate waits until this many ran at once
    required_token: str | None = None          # UNAUTHENTICATED unless "Bearer <token>" is sent
    default_max_tokens: int = 8
    health: str = "SERVING"


@dataclass
class Recorded:
    requests: list[pb.GenerateRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)
    completed: list[str] = field(default_factory=list)
    abort_calls: list[str] = field(default_factory=list)
    active: int = 0
    peak_active: int = 0


class ScriptedGeneration(pb_grpc.GenerationServicer):
    def __init__(self, script: Script):
        self.script = script
        self.seen = Recorded()
        self._running: dict[str, bool] = {}

    async def Generate(self, request, context):
        seen, script = self.seen, self.script
        seen.requests.append(request)
        seen.metadata.append(dict(context.invocation_metadata()))
        if script.required_token and seen.metadata[-1].get("authorization") != f"Bearer {script.required_token}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        if len(seen.requests) <= script.unavailable_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no replica is ready")
        if script.error is not None:
            await context.abort(*script.error)
        if request.model and request.model != MODEL_ID:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.model}'")
        rid = request.request_id or f"srv-{len(seen.requests)}"
        prompt_len = len(request.text) if request.WhichOneof("input") == "text" else len(request.token_ids.ids)
        n = request.sampling.max_tokens or script.default_max_tokens
        seen.active += 1
        seen.peak_active = max(seen.peak_active, seen.active)
        self._running[rid] = True
        try:
            await self._hold(context)
            ids, finish = [], pb.LENGTH
            for i, t in enumerate(expected_ids(prompt_len, n)):
                if not self._running[rid]:
                    finish = pb.ABORT
                    break
                if script.token_delay_s:
                    await asyncio.sleep(script.token_delay_s)
                if script.unavailable_after_tokens == i:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "replica lost")
                ids.append(t)
                if request.stream:
                    yield pb.GenerateResponse(request_id=rid, chunk=pb.Chunk(
                        token_ids=[t], text=token_text(t), logprobs=scripted_logprobs(request.sampling, [t])))
            yield pb.GenerateResponse(request_id=rid, complete=pb.Complete(
                finish_reason=finish, output_ids=ids, text="".join(token_text(t) for t in ids),
                logprobs=scripted_logprobs(request.sampling, ids),
                replica_id="r0", usage=pb.Usage(prompt_tokens=prompt_len, completion_tokens=len(ids)),
                timings=pb.Timings(queue_seconds=0.001, ttft_seconds=0.002, total_seconds=0.003)))
            seen.completed.append(rid)
        except (asyncio.CancelledError, GeneratorExit):
            seen.cancelled.add(rid)
            raise
        finally:
            seen.active -= 1
            self._running.pop(rid, None)

    async def _hold(self, context) -> None:
        try:
            await wait_for_async(lambda: self.seen.peak_active >= self.script.hold_until_active, 10,
                                 "the concurrency asked for", every=0.01)
        except AssertionError:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "concurrency never reached")

    async def Abort(self, request, context):
        self.seen.abort_calls.append(request.request_id)
        found = request.request_id in self._running
        if found:
            self._running[request.request_id] = False
        return pb.AbortResponse(found=found)

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[pb.ModelInfo(id=MODEL_ID, max_context=256, vocab_size=108)])

    async def GetClusterStatus(self, request, context):
        replicas = [
            pb.ReplicaStatus(replica_id="r0", state="ready", pid=1234, node_id="node-a", mesh="1x2", backend="sim",
                             kv_pages_total=64, kv_pages_free=60, running=1, waiting=0,
                             address="127.0.0.1:40001", tokens_per_second=12.5, kv_pages_budget=600,
                             kv_pages_capped_by_host=True, dram_total_bytes=12 * 2**30, dram_weights_bytes=2**30,
                             dram_kv_bytes=2**29, dram_other_bytes=2**20),
            pb.ReplicaStatus(replica_id="r1", state="unhealthy", pid=1235, node_id="node-b", mesh="8x4",
                             backend="ttnn", kv_pages_total=2048, kv_pages_free=1800, running=0, waiting=3,
                             address="127.0.0.1:40002", kv_user_groups=4,
                             kv_pages_free_per_group=[512, 400, 512, 376]),
        ]
        return pb.ClusterStatus(replicas=replicas, model=MODEL_ID, policy="least_load")


class ScriptedServer:
    """The scripted service on 127.0.0.1, served from its own event loop thread."""

    def __init__(self, script: Script | None = None, *, port: int = 0,
                 credentials: grpc.ServerCredentials | None = None):
        self.servicer = ScriptedGeneration(script or Script())
        self._port, self._credentials = port, credentials
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None

    @property
    def seen(self) -> Recorded:
        return self.servicer.seen

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._port}"

    def start(self) -> ScriptedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        pb_grpc.add_GenerationServicer_to_server(self.servicer, self._server)
        health = health_aio.HealthServicer()
        await health.set("", health_pb2.HealthCheckResponse.ServingStatus.Value(self.servicer.script.health))
        health_pb2_grpc.add_HealthServicer_to_server(health, self._server)
        bind = f"127.0.0.1:{self._port}"
        if self._credentials is None:
            self._port = self._server.add_insecure_port(bind)
        else:
            self._port = self._server.add_secure_port(bind, self._credentials)
        await self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        """Poll ``predicate(seen)`` until it holds; False if it never did within ``timeout``."""
        try:
            return bool(wait_for(lambda: predicate(self.seen), timeout, "the server's record", every=0.01))
        except AssertionError:
            return False


@pytest.fixture
def scripted():
    """Start a ScriptedServer: ``scripted(**script_fields)``; every server stops after the test."""
    servers: list[ScriptedServer] = []

    def start(**fields) -> ScriptedServer:
        server = ScriptedServer(Script(**fields)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
