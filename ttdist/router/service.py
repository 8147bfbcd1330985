"""The public ``Generation`` service: the routers' methods behind gRPC status codes.

It serves every model of the cluster (``ModelRouters``): a request goes to the router of the
model it names, ``ListModels`` lists them all, ``GetClusterStatus`` shows every model's replicas.

``start_router_server`` serves it with grpc.health.v1 (SERVING while at least one replica
is ready) and server reflection, so ``grpcurl`` works against the port.
"""

from __future__ import annotations

import grpc

from ttdist.router.chat import ChatPrompter
from ttdist.router.models import ModelRouters, as_models, cluster_status_proto
from ttdist.router.router import Router
from ttdist.runtime.grpc_server import RunningServer, start_generation_server
from ttdist.runtime.request_checks import RequestError, abort_with, check_abort
from ttdist.tracing.tracer import take_context
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc


class RouterService(pb_grpc.GenerationServicer):
    def __init__(self, router: Router | ModelRouters, chat: ChatPrompter | None = None) -> None:
        self.models = as_models(router, chat)

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        if self.models.default.router.tracing is not None:   # one tracing config for every model
            take_context(request, context.invocation_metadata())
        try:
            async for resp in self.models.generate(request, context.time_remaining()):
                yield resp
        except RequestError as err:
            await abort_with(context, err)

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortResponse:
        try:
            check_abort(request)
        except RequestError as err:
            await abort_with(context, err)
        return pb.AbortResponse(found=await self.models.abort(request.request_id))

    async def ListModels(self, request, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[card.to_proto() for card in self.models.cards()])

    async def GetClusterStatus(self, request, context) -> pb.ClusterStatus:
        try:
            routes = await self.models.cluster_status()
        except Exception as err:  # noqa: BLE001 - no table to answer from
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the coordinator did not answer: {err!r}")
        return cluster_status_proto(routes)


async def start_router_server(router: Router | ModelRouters, host: str, port: int, *, chat: ChatPrompter | None = None,
                              interceptors=(), credentials: grpc.ServerCredentials | None = None) -> RunningServer:
    """Start ``router`` (first tables fetched) and serve it on host:port (``chat`` renders chat
    requests of a single router; ``interceptors`` check API keys; ``credentials`` serve TLS)."""
    models = as_models(router, chat)
    running = await start_generation_server(RouterService(models), host, port, interceptors=interceptors,
                                            credentials=credentials, reuse_port=models.config.routers > 1)
    models.on_serving = running.set_serving
    try:
        await models.start()
    except BaseException:
        await running.stop(0)   # no table: free the port for the next try
        raise
    return running
