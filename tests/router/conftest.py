"""A router in front of scripted replicas, all real gRPC servers in this process."""

from __future__ import annotations

from dataclasses import dataclass, replace

import grpc
import pytest

from ttdist.router.router import Router, RouterConfig
from ttdist.router.service import start_router_server
from ttdist.router.sources import StaticSource
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.replica_latency import ReplicaLatency
from ttdist.runtime.replica_service import start_replica_server
from ttdist.runtime.scripted_engine import ScriptedEngine, ScriptedEngineConfig, next_token
from ttdist.runtime.routing_table import ReplicaEntry, RoutingTable
from ttdist.v1 import generation_pb2_grpc as pb_grpc

CARD = ModelCard("scripted", vocab_size=1000, max_context=512, page_size=4)


def expected_tokens(prompt: list[int], n: int, vocab: int = 1000) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(next_token(seq, vocab))
    return seq[len(prompt):]


def own_status(engine: ScriptedEngine, replica_id: str):
    """What a replica answers to GetClusterStatus: its engine's figures right now."""
    def status() -> ReplicaEntry:
        st = engine.stats()
        return ReplicaEntry(replica_id, "", "ready", kv_pages_total=st.total_pages, kv_pages_free=st.free_pages,
                            running=st.running, waiting=st.waiting, tokens_per_second=st.tokens_per_second)
    return status


@dataclass
class Stack:
    engines: list[ScriptedEngine]
    replica_servers: list
    latencies: list[ReplicaLatency]
    source: StaticSource
    router: Router
    server: object
    channel: grpc.aio.Channel
    stub: pb_grpc.GenerationStub

    def set_state(self, index: int, state: str) -> None:
        reps = list(self.source.current.replicas)
        reps[index] = replace(reps[index], state=state)
        self.source.current = replace(self.source.current, replicas=tuple(reps))


@pytest.fixture
async def make_stack():
    stacks: list[Stack] = []

    async def build(n=2, engine=ScriptedEngineConfig(vocab_size=1000), states=None, **router_options) -> Stack:
        engines, servers, entries, latencies = [], [], [], []
        for i in range(n):
            eng = ScriptedEngine(engine)
            eng.start()
            rid = f"replica-{i}"
            latency = ReplicaLatency()
            srv = await start_replica_server(eng, CARD, rid, own_status(eng, rid), latency=latency)
            engines.append(eng)
            servers.append(srv)
            latencies.append(latency)
            state = states[i] if states else "ready"
            entries.append(ReplicaEntry(rid, f"127.0.0.1:{srv.port}", state))
        source = StaticSource(RoutingTable(CARD, tuple(entries)))
        config = RouterConfig(**{"refresh_s": 0.05, **router_options})
        router = Router(config, source)
        server = await start_router_server(router, "127.0.0.1", 0)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        stack = Stack(engines, servers, latencies, source, router, server, channel, pb_grpc.GenerationStub(channel))
        stacks.append(stack)
        return stack

    yield build
    for stack in stacks:
        await close_stack(stack)


async def close_stack(stack: Stack) -> None:
    await stack.channel.close()
    await stack.server.stop(0)
    await stack.router.stop()
    for srv in stack.replica_servers:
        await srv.stop(0)
    for eng in stack.engines:
        eng.shutdown()
