"""A router in front of replicas, all real gRPC servers in this process (no Ray).

``make_stack(engine_factory, n)`` starts ``n`` engines (``engine_factory(i)`` builds replica
``i``'s engine), a replica server for each, a router over a static table of them and the
router's server (the gRPC one, or both public listeners with ``public_api``), and an asyncio
channel to it. ``Stack.close`` stops them in reverse. The ``make_stack`` fixture builds
stacks of scripted replicas and closes them after the test.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import grpc
import pytest

from ttdist.router.router import Router, RouterConfig
from ttdist.router.public import serve_public
from ttdist.router.service import start_router_server
from ttdist.router.sources import StaticSource
from ttdist.runtime.api_config import ApiConfig
from ttdist.runtime.replica_latency import ReplicaLatency
from ttdist.runtime.replica_service import start_replica_server
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.routing_table import ReplicaEntry, RoutingTable
from ttdist.runtime.scripted_engine import ScriptedEngine, ScriptedEngineConfig
from ttdist.v1 import generation_pb2_grpc as pb_grpc

SCRIPTED_CARD = ModelCard("scripted", vocab_size=1000, max_context=512, page_size=4)

Status = Callable[[], ReplicaEntry]


def ready_status(engine, replica_id: str) -> Status:
    """What a replica answers to GetClusterStatus: just "ready"."""
    return lambda: ReplicaEntry(replica_id, "", "ready")


def own_status(engine, replica_id: str) -> Status:
    """What a replica answers to GetClusterStatus: its engine's figures right now."""
    def status() -> ReplicaEntry:
        st = engine.stats()
        return ReplicaEntry(replica_id, "", "ready", kv_pages_total=st.total_pages, kv_pages_free=st.free_pages,
                            running=st.running, waiting=st.waiting, tokens_per_second=st.tokens_per_second)
    return status


def page_status(engine, replica_id: str) -> Status:
    """What a replica answers to GetClusterStatus: "ready" and its engine's KV pages."""
    def status() -> ReplicaEntry:
        st = engine.stats()
        return ReplicaEntry(replica_id, "", "ready", kv_pages_total=st.total_pages, kv_pages_free=st.free_pages)
    return status


@dataclass
class Stack:
    engines: list
    replica_servers: list
    latencies: list[ReplicaLatency | None]
    source: StaticSource
    router: Router
    server: object                       # the router's RunningServer, or its PublicServers
    channel: grpc.aio.Channel | None     # to the router's gRPC port (None behind public listeners)
    stub: pb_grpc.GenerationStub | None

    def set_state(self, index: int, state: str) -> None:
        reps = list(self.source.current.replicas)
        reps[index] = replace(reps[index], state=state)
        self.source.current = replace(self.source.current, replicas=tuple(reps))

    def serving(self, request_id: str) -> int:
        """The index of the replica the router streams ``request_id`` from."""
        return int(self.router._streams[request_id].replica_id.split("-")[1])

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        await self.server.stop(0)
        await self.router.stop()
        for srv in self.replica_servers:
            await srv.stop(0)
        for eng in self.engines:
            eng.shutdown()


async def make_stack(
    engine_factory: Callable[[int], object], n: int = 1, *, card: ModelCard = SCRIPTED_CARD,
    router_config: RouterConfig = RouterConfig(refresh_s=0.05), tokenizer=None,
    status: Callable[[object, str], Status] = ready_status, states: list[str] | None = None,
    track_latency: bool = False, with_pids: bool = False, replica_token: str = "", public_api: ApiConfig | None = None,
    model_dir: str = "", replica_tracing=None,
) -> Stack:
    """``n`` replicas ``replica-<i>`` (``states[i]`` in the router's table, else "ready"; pid
    ``i + 1`` there ``with_pids``) behind one router on 127.0.0.1; ``model_dir``: the checkpoint whose
    chat template the public listeners render chats with."""
    engines, servers, entries, latencies = [], [], [], []
    for i in range(n):
        engine = engine_factory(i)
        engine.start()
        rid = f"replica-{i}"
        latency = ReplicaLatency() if track_latency else None
        srv = await start_replica_server(engine, card, rid, status(engine, rid), latency=latency, token=replica_token,
                                         tracing=replica_tracing)
        engines.append(engine)
        servers.append(srv)
        latencies.append(latency)
        state = states[i] if states else "ready"
        extra = {"pid": i + 1} if with_pids else {}
        entries.append(ReplicaEntry(rid, f"127.0.0.1:{srv.port}", state, **extra))
    source = StaticSource(RoutingTable(card, tuple(entries)))
    router = Router(router_config, source, tokenizer)
    if public_api is not None:
        server = await serve_public(router, "127.0.0.1", 0, public_api, model_dir)
        return Stack(engines, servers, latencies, source, router, server, None, None)
    server = await start_router_server(router, "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return Stack(engines, servers, latencies, source, router, server, channel, pb_grpc.GenerationStub(channel))


@pytest.fixture(name="make_stack")
async def scripted_stacks():
    """``await make_stack(n=2, engine=ScriptedEngineConfig(...), states=None, **router_options)``:
    ``n`` scripted replicas (own status, latency tracked) behind a router refreshing every 0.05 s;
    every stack closes after the test."""
    stacks: list[Stack] = []

    async def build(n=2, engine=ScriptedEngineConfig(vocab_size=1000), states=None, **router_options) -> Stack:
        config = RouterConfig(**{"refresh_s": 0.05, **router_options})
        stack = await make_stack(lambda i: ScriptedEngine(engine), n, router_config=config, status=own_status,
                                 states=states, track_latency=True)
        stacks.append(stack)
        return stack

    yield build
    for stack in stacks:
        await stack.close()
