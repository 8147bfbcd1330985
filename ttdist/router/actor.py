"""The router actor: a thin Ray shell serving ``Router`` on the public port.

It reads the registry from the coordinator (named actor) and reports back latencies and
migrations in the same call.
"""

from __future__ import annotations

import os

import ray

from ttdist.router.core import Router, RouterConfig
from ttdist.router.service import start_router_server
from ttdist.runtime.replica import COORDINATOR_NAME, NAMESPACE
from ttdist.runtime.table import RouterReport, RoutingTable

TABLE_TIMEOUT_S = 5.0


class CoordinatorSource:
    """The coordinator as the router's ``ReplicaSource``."""

    def __init__(self, handle) -> None:
        self.handle = handle

    async def table(self, report: RouterReport) -> RoutingTable:
        return await self.handle.routing_table.remote(report)


class RouterActor:
    def __init__(self, config: RouterConfig, host: str, port: int, tokenizer_dir: str = "") -> None:
        self.config = config
        self.host = host
        self.port = port
        self.tokenizer_dir = tokenizer_dir
        self.router: Router | None = None
        self.server = None

    async def start(self) -> int:
        tokenizer = None
        if self.tokenizer_dir:
            from ttdist.engine.tokenizer import Tokenizer

            tokenizer = Tokenizer.from_dir(self.tokenizer_dir)
        source = CoordinatorSource(ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE))
        self.router = Router(self.config, source, tokenizer)
        self.server = await start_router_server(self.router, self.host, self.port)
        return self.server.port

    def pid(self) -> int:
        return os.getpid()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0.5)
        if self.router is not None:
            await self.router.stop()
