"""Several routers in front of the same replicas: one port, Abort and status from any of them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import replace

import grpc

from tests.support.scripted import expected_tokens
from tests.support.generation import collect, request
from ttdist.dashboard.status import LatencySummary
from ttdist.router.router import Router
from ttdist.router.service import start_router_server
from ttdist.runtime.scripted_engine import ScriptedEngineConfig
from ttdist.runtime.routing_table import RouterReport, combine_reports
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def second_router(stack, port: int = 0):
    """Another router over the same replicas (what ``--routers 2`` starts), its server and its
    stub; all stopped on leaving."""
    router = Router(replace(stack.router.config, router_id="router-1"), stack.source)
    server = await start_router_server(router, "127.0.0.1", port)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield router, server, pb_grpc.GenerationStub(channel)
    finally:
        await channel.close()
        await server.stop(0)
        await router.stop()


async def test_abort_from_another_router_ends_the_stream_and_frees_the_replica(make_stack):
    stack = await make_stack(2, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.01), routers=2)
    async with second_router(stack) as (_, _, other):
        for i in range(2):    # one on each replica, round robin: the second is a moved-segment-free id too
            call = stack.stub.Generate(request([4, i], 400, request_id=f"long-{i}"))
            assert (await call.read()).WhichOneof("kind") == "chunk"
            assert (await other.Abort(pb.AbortRequest(request_id=f"long-{i}"))).found
            last = None
            while (resp := await call.read()) is not grpc.aio.EOF:
                last = resp
            assert last.complete.finish_reason == pb.ABORT
        assert [e.stats().running for e in stack.engines] == [0, 0]
        assert not (await other.Abort(pb.AbortRequest(request_id="long-0"))).found
        a = await stack.stub.GetClusterStatus(pb.ClusterStatusRequest())
        b = await other.GetClusterStatus(pb.ClusterStatusRequest())
        assert [r.replica_id for r in a.replicas] == [r.replica_id for r in b.replicas] == ["replica-0", "replica-1"]


async def test_one_router_alone_does_not_forward_aborts(make_stack):
    stack = await make_stack(1, engine=ScriptedEngineConfig(vocab_size=1000, step_s=0.01))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.replica_servers[0].port}") as channel:
        direct = pb_grpc.GenerationStub(channel)
        call = direct.Generate(request([4, 4], 400, request_id="not-the-routers"))
        await call.read()
        assert not (await stack.stub.Abort(pb.AbortRequest(request_id="not-the-routers"))).found
        call.cancel()


async def test_two_routers_share_one_port(make_stack):
    port = free_port()
    stack = await make_stack(2, routers=2)
    first_router = Router(stack.router.config, stack.source)
    first = await start_router_server(first_router, "127.0.0.1", port)
    try:
        async with second_router(stack, port) as (router, server, _):
            assert first.port == server.port == port

            async def one(i):   # a channel with its own connection: the kernel picks the router
                options = [("grpc.use_local_subchannel_pool", 1)]
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
                    ids, _ = await collect(pb_grpc.GenerationStub(ch), request([7, i], 3))
                    assert ids == expected_tokens([7, i], 3)
            await asyncio.gather(*(one(i) for i in range(24)))
            served = [first_router.report_snapshot().requests_total, router.report_snapshot().requests_total]
            assert sum(served) == 24 and min(served) > 0, served
    finally:
        await first.stop(0)
        await first_router.stop()


def test_reports_of_several_routers_add_up():
    a = RouterReport(policy="least_load", ttft_seconds=LatencySummary(0.010, 0.050, 30), requests_total=30,
                     migrations_total=1, router_id="router-0")
    b = RouterReport(policy="least_load", ttft_seconds=LatencySummary(0.020, 0.090, 10), requests_total=10,
                     router_id="router-1")
    both = combine_reports([a, b])
    assert (both.requests_total, both.migrations_total, both.policy) == (40, 1, "least_load")
    assert both.ttft_seconds.count == 40 and both.ttft_seconds.p99 == 0.090
    assert abs(both.ttft_seconds.p50 - 0.0125) < 1e-12
    assert combine_reports([a]) is a
