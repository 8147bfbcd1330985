"""A wedged engine process holds up nothing else on its replica's event loop.

Two replicas serve on one event loop, as ``ReplicaActor``s without Ray (each gets its engine
from an injected factory): one over an ``EngineProcess``, one over an ``AsyncEngine``. The
engine process's child is stopped dead (SIGSTOP: it answers nothing, like a child stuck in a
driver call that holds its GIL) while the other replica streams a request. GetClusterStatus and
drain of the wedged replica then wait for the child's stats until its control call times out,
and meanwhile the other replica's tokens and its GetClusterStatus keep flowing: no call that
waits on the child runs on the loop. A replica that read its engine's stats on the loop would
stop every stream of the loop for the whole timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import grpc
import ray

from ttdist.engine import AsyncEngine, EngineConfig
from ttdist.engine.process import EngineProcess
from ttdist.engine.process import parent as engine_process_parent
from ttdist.runtime.replica import ReplicaActor, ReplicaSetup
from ttdist.runtime.request_checks import ModelCard
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc

from tests.support.engine_fakes import fake_core

RUNNER = dict(page_size=4, num_pages=64, max_batch=8, decode_s=0.05)
CONFIG = EngineConfig(max_batch=8, prefill_chunk=8)
CARD = ModelCard("fake", vocab_size=64, max_context=256, page_size=4)
CONTROL_TIMEOUT_S = 3.0   # how long a call waits for the wedged child (10 s in service)
MAX_GAP_S = 1.0           # a token or a status answer of the healthy replica comes at least this often


def process_engine(setup: ReplicaSetup, weights) -> EngineProcess:
    return EngineProcess(fake_core, (RUNNER, CONFIG))


def thread_engine(setup: ReplicaSetup, weights) -> AsyncEngine:
    return AsyncEngine.around(fake_core(RUNNER, CONFIG))


def no_coordinator(*args, **kwargs):
    raise ValueError("no coordinator in this test")   # the heartbeats look again later; the replicas serve on


async def stream_arrivals(stub: pb_grpc.GenerationStub, arrivals: list[float]) -> None:
    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2, 3]), stream=True,
                                 sampling=pb.SamplingParams(max_tokens=250, ignore_eos=True))
    async for _ in stub.Generate(request):
        arrivals.append(time.monotonic())


async def test_a_wedged_engine_process_holds_up_no_token_and_no_status_of_the_loop(monkeypatch):
    monkeypatch.setattr(engine_process_parent, "CONTROL_TIMEOUT_S", CONTROL_TIMEOUT_S)
    monkeypatch.setattr(ReplicaActor, "node_id", lambda self: "node-a")
    monkeypatch.setattr(ray, "get_actor", no_coordinator)
    wedged = ReplicaActor(ReplicaSetup("wedged", "1x1", "sim", CARD), engine_factory=process_engine)
    healthy = ReplicaActor(ReplicaSetup("healthy", "1x1", "sim", CARD), engine_factory=thread_engine)
    await wedged.start(None)
    await healthy.start(None)
    channels = {a: grpc.aio.insecure_channel(r.address) for a, r in (("wedged", wedged), ("healthy", healthy))}
    stubs = {a: pb_grpc.GenerationStub(c) for a, c in channels.items()}
    child = wedged.engine.pid
    arrivals: list[float] = []
    streaming = asyncio.ensure_future(stream_arrivals(stubs["healthy"], arrivals))
    try:
        while len(arrivals) < 3:   # the healthy replica streams
            await asyncio.sleep(0.01)
        os.kill(child, signal.SIGSTOP)
        wedged_from = time.monotonic()
        wedged_status = asyncio.ensure_future(stubs["wedged"].GetClusterStatus(pb.ClusterStatusRequest(), timeout=30))
        draining = asyncio.ensure_future(wedged.drain(timeout_s=0.1))
        status_waits = []
        while not (wedged_status.done() and draining.done()):
            await asyncio.sleep(0.25)
            asked = time.monotonic()
            answer = await stubs["healthy"].GetClusterStatus(pb.ClusterStatusRequest(), timeout=30)
            status_waits.append(time.monotonic() - asked)
            assert answer.replicas[0].replica_id == "healthy" and answer.replicas[0].running == 1
        wedged_until = time.monotonic()

        # both calls of the wedged replica really waited for its child, one timeout each ...
        assert wedged_until - wedged_from >= 2 * CONTROL_TIMEOUT_S
        # ... and answered with the last figures the child gave (every page free, nothing running)
        entry = (await wedged_status).replicas[0]
        assert (entry.replica_id, entry.kv_pages_total, entry.kv_pages_free, entry.running) == ("wedged", 64, 64, 0)
        assert await draining == 0
        # meanwhile the healthy replica on the same loop streamed and answered its status at once
        assert not streaming.done(), "the healthy stream ended before the wedge did"
        times = [wedged_from, *(t for t in arrivals if wedged_from < t < wedged_until), wedged_until]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert max(gaps) < MAX_GAP_S, f"tokens stalled {max(gaps):.2f} s while the engine process was wedged"
        assert len(status_waits) >= 4 and max(status_waits) < MAX_GAP_S, f"status answers took {status_waits}"
    finally:
        os.kill(child, signal.SIGCONT)
        streaming.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await streaming
        for channel in channels.values():
            await channel.close()
        await wedged.stop()
        await healthy.stop()
