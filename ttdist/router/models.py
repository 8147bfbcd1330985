"""Several served models behind one public port: one ``Router`` per model, picked by ``model``.

Each model has its own ``Router`` (its policy and the policy's state, such as cache_aware's
prefix trees, its tokenizer, its card and replica pool, its latency window) and its own
``ChatPrompter`` (its chat template). ``ModelRouters`` is what the public services hold:

- ``route(name)``: the model a request names; an empty name is the first (default) model; an
  unknown one is NOT_FOUND naming the served models (HTTP 404 ``model_not_found``).
- ``generate``: the request's chat rendered with its model's template, then that model's router.
- ``abort``: the request is in one model's router; each is asked until one has it.
- health: serving while any model's router has a ready replica (and none is draining).

A cluster of one model is the same object with one entry (``ModelRouters.one``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import AsyncIterator, Awaitable, Callable

import grpc

from ttdist.router.chat import ChatPrompter
from ttdist.router.router import Router
from ttdist.runtime.request_checks import ModelCard, RequestError
from ttdist.runtime.routing_table import RoutingTable
from ttdist.v1 import generation_pb2 as pb


@dataclass
class ModelRoute:
    """One served model: its router and its chat prompter."""

    router: Router
    chat: ChatPrompter

    @property
    def card(self) -> ModelCard:
        return self.router.table.card


class ModelRouters:
    def __init__(self, routes: dict[str, ModelRoute]) -> None:
        if not routes:
            raise ValueError("ModelRouters needs at least one model")
        self.routes = routes
        self.on_serving: Callable[[bool], Awaitable[None]] | None = None   # the health check's setter
        self._serving: bool | None = None

    @classmethod
    def one(cls, router: Router, chat: ChatPrompter | None = None) -> ModelRouters:
        """A single router (its model's name is read from its table once it has one)."""
        return cls({"": ModelRoute(router, chat or ChatPrompter(None, router.tokenizer))})

    @property
    def names(self) -> list[str]:
        """The served model names, in spec order (a ``one`` router: its card's id)."""
        return [route.card.model_id for route in self.routes.values()]

    @property
    def default(self) -> ModelRoute:
        return next(iter(self.routes.values()))

    @property
    def config(self):
        """The first router's config (every model's router shares the cluster-wide settings)."""
        return self.default.router.config

    def route(self, name: str) -> ModelRoute:
        """The model ``name`` names ("" = the default one); NOT_FOUND naming the served ones."""
        if not name:
            return self.default
        for route in self.routes.values():
            if route.card.model_id == name:
                return route
        served = ", ".join(repr(n) for n in self.names)
        raise RequestError(grpc.StatusCode.NOT_FOUND, "model", f"unknown model {name!r}; this server serves {served}")

    def cards(self) -> list[ModelCard]:
        return [route.card for route in self.routes.values()]

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        for route in self.routes.values():
            route.router.on_serving = self._model_serving
        for route in self.routes.values():
            await route.router.start()

    async def stop(self) -> None:
        for route in self.routes.values():
            await route.router.stop()

    async def _model_serving(self, _: bool) -> None:
        """A model's router changed: health follows the models taken together."""
        serving = self.serving
        changed, self._serving = serving != self._serving, serving
        if changed and self.on_serving is not None:
            await self.on_serving(serving)

    @property
    def serving(self) -> bool:
        return any(route.router.serving for route in self.routes.values())

    @property
    def inflight(self) -> int:
        return sum(route.router.inflight for route in self.routes.values())

    async def drain(self) -> None:
        for route in self.routes.values():
            await route.router.drain()

    # ------------------------------------------------------------ requests
    async def generate(self, req: pb.GenerateRequest, timeout: float | None) -> AsyncIterator[pb.GenerateResponse]:
        """``req`` on its model's router (its chat rendered with that model's template)."""
        route = self.route(req.model)
        async for resp in route.router.generate(route.chat.resolve(req), timeout):
            yield resp

    async def abort(self, request_id: str) -> bool:
        for route in self.routes.values():
            if await route.router.abort(request_id):
                return True
        return False

    async def cluster_status(self) -> list[tuple[ModelRoute, RoutingTable]]:
        """Every model's table, with each live replica's load as the replica reports it now."""
        tables = await asyncio.gather(*(route.router.cluster_status() for route in self.routes.values()))
        return list(zip(self.routes.values(), tables))


def as_models(router: Router | ModelRouters, chat: ChatPrompter | None = None) -> ModelRouters:
    """``router`` as ``ModelRouters`` (a single ``Router`` with ``chat``: a one-model server)."""
    return router if isinstance(router, ModelRouters) else ModelRouters.one(router, chat)


def cluster_status_proto(routes: list[tuple[ModelRoute, RoutingTable]]) -> pb.ClusterStatus:
    """GetClusterStatus: every model's replicas; ``model``, ``policy`` and the generation defaults
    of the default (first) model, ``models`` listing them all, ``autoscale`` each autoscaled pool."""
    first, table = routes[0]
    return pb.ClusterStatus(
        replicas=[replace(e, model=e.model or t.card.model_id).to_proto() for _, t in routes for e in t.replicas],
        model=table.card.model_id, policy=first.router.policy.name,
        generation_defaults=table.card.generation_defaults.to_proto(),
        models=[t.card.to_proto() for _, t in routes],
        autoscale=[t.autoscale.to_proto(t.card.model_id) for _, t in routes if t.autoscale is not None],
    )
