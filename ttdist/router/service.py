"""The public ``Generation`` service: the router's methods behind gRPC status codes.

``start_router_server`` serves it with grpc.health.v1 (SERVING while at least one replica
is ready) and server reflection, so ``grpcurl`` works against the port.
"""

from __future__ import annotations

import grpc

from ttdist.router.chat import ChatPrompter
from ttdist.router.router import Router
from ttdist.runtime.grpc_server import RunningServer, start_generation_server
from ttdist.runtime.request_checks import RequestError, abort_with, check_abort
from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc


class RouterService(pb_grpc.GenerationServicer):
    def __init__(self, router: Router, chat: ChatPrompter | None = None) -> None:
        self.router = router
        self.chat = chat or ChatPrompter(None, None)

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        try:
            async for resp in self.router.generate(self.chat.resolve(request), context.time_remaining()):
                yield resp
        except RequestError as err:
            await abort_with(context, err)

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortResponse:
        try:
            check_abort(request)
        except RequestError as err:
            await abort_with(context, err)
        return pb.AbortResponse(found=await self.router.abort(request.request_id))

    async def ListModels(self, request, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[self.router.table.card.to_proto()])

    async def GetClusterStatus(self, request, context) -> pb.ClusterStatus:
        try:
            table = await self.router.cluster_status()
        except Exception as err:  # noqa: BLE001 - no table to answer from
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the coordinator did not answer: {err!r}")
        return pb.ClusterStatus(
            replicas=[e.to_proto() for e in table.replicas], model=table.card.model_id, policy=self.router.policy.name,
            generation_defaults=table.card.generation_defaults.to_proto(),
            autoscale=table.autoscale.to_proto() if table.autoscale is not None else None,
        )


async def start_router_server(router: Router, host: str, port: int, *, chat: ChatPrompter | None = None,
                              interceptors=(), credentials: grpc.ServerCredentials | None = None) -> RunningServer:
    """Start ``router`` (first table fetched) and serve it on host:port (``chat`` renders chat
    requests; ``interceptors`` check API keys; ``credentials`` serve TLS)."""
    running = await start_generation_server(RouterService(router, chat), host, port, interceptors=interceptors,
                                            credentials=credentials, reuse_port=router.config.routers > 1)
    router.on_serving = running.set_serving
    try:
        await router.start()
    except BaseException:
        await running.stop(0)   # no table: free the port for the next try
        raise
    return running
