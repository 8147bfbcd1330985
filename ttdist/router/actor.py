"""The router actor: a thin Ray shell serving one ``Router`` per served model on the public port.

It reads the registry from the coordinator (named actor) and reports back latencies and
migrations in the same call; a call that fails or takes longer than ``TABLE_TIMEOUT_S``
(the coordinator is restarting) leaves the router serving from its last table.

Supervision: Ray restarts a router actor whose process dies (``max_restarts``); the new
process serves the same host:port again (the port is fixed when the actor is created) and
rebuilds its table from the coordinator, retrying until it answers. Clients retry requests
that had not streamed yet. ``drain`` turns health NOT_SERVING, refuses new requests with
UNAVAILABLE and waits for the streams in flight (up to a timeout).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, replace

import ray

from ttdist.router.chat import ChatPrompter
from ttdist.router.models import ModelRoute, ModelRouters
from ttdist.router.router import Router, RouterConfig
from ttdist.router.public import serve_public
from ttdist.runtime.api_config import ApiConfig
from ttdist.runtime.replica import COORDINATOR_NAME, NAMESPACE, restarted_by_ray
from ttdist.runtime.routing_table import RouterReport, RoutingTable

TABLE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RouteSpec:
    """How the router actor routes one served model: its name, policy, checkpoint folder (for
    the tokenizer and chat template; "" = none) and chat template override."""

    name: str
    policy: str = "round_robin"
    tokenizer_dir: str = ""
    chat_template: str | None = None


class CoordinatorSource:
    """The coordinator as the ``ReplicaSource`` of one model's router."""

    def __init__(self, handle, model: str = "") -> None:
        self.handle = handle
        self.model = model

    async def table(self, report: RouterReport) -> RoutingTable:
        return await asyncio.wait_for(self.handle.routing_table.remote(report, self.model), TABLE_TIMEOUT_S)


def _route(config: RouterConfig, spec: RouteSpec, coordinator) -> ModelRoute:
    tokenizer = None
    if spec.tokenizer_dir:
        from ttdist.engine.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir_if_present(spec.tokenizer_dir)
    router = Router(replace(config, policy=spec.policy, model=spec.name), CoordinatorSource(coordinator, spec.name),
                    tokenizer)
    return ModelRoute(router, ChatPrompter.load(spec.tokenizer_dir, tokenizer, spec.chat_template))


class RouterActor:
    def __init__(self, config: RouterConfig, host: str, port: int, models: tuple[RouteSpec, ...],
                 api: ApiConfig | None = None) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.models = models
        self.api = api if api is not None else ApiConfig(http_port=None)   # HTTP, API keys, TLS
        self.router: ModelRouters | None = None
        self.server = None
        self._restart_task: asyncio.Task | None = None
        if restarted_by_ray():
            self._restart_task = asyncio.get_running_loop().create_task(self._start_again())

    async def _start_again(self) -> None:
        """After Ray restarted this actor: serve the same port again once the coordinator answers."""
        while True:
            try:
                await self.start()
                return
            except Exception:  # noqa: BLE001 - the coordinator may be restarting too: try again
                await self._close()
                await asyncio.sleep(1.0)

    async def start(self) -> int:
        coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
        routes = await asyncio.to_thread(lambda: {s.name: _route(self.config, s, coordinator) for s in self.models})
        self.router = ModelRouters(routes)
        self.server = await serve_public(self.router, self.host, self.port, self.api)
        return self.server.port

    def pid(self) -> int:
        return os.getpid()

    def serving(self) -> bool:
        """True once it serves and a replica is ready (what its health check says)."""
        return self.router is not None and self.server is not None and self.router.serving

    def http_port(self) -> int | None:
        """The OpenAI HTTP port it serves (None: HTTP is off or not started yet)."""
        return self.server.http_port if self.server is not None else None

    def serving_port(self) -> int:
        """The port it serves (0 while a restarted router is still starting)."""
        return self.server.port if self.server is not None else 0

    async def drain(self, timeout_s: float) -> int:
        """NOT_SERVING, new requests UNAVAILABLE, wait up to ``timeout_s`` for the streams in
        flight; returns how many were still running."""
        if self.router is None or self.server is None:
            return 0
        await self.router.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.router.inflight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.router.inflight

    async def stop(self) -> None:
        if self._restart_task is not None:
            self._restart_task.cancel()
        await self._close()

    async def _close(self) -> None:
        if self.server is not None:
            await self.server.stop(0.5)
        if self.router is not None:
            await self.router.stop()
        self.server = self.router = None
