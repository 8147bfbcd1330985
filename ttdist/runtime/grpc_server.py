"""A grpc.aio server for the ``Generation`` service, with grpc.health.v1 and reflection.

The router and every replica serve the same service; both start it here. The port is
bound exclusively (no SO_REUSEPORT), so two servers never silently share one, except where
several routers serve one public port on purpose (``reuse_port``); port 0 picks a free port
and the bound one is returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from ttdist.v1 import generation_pb2 as pb
from ttdist.v1 import generation_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Generation"].full_name


class PortInUseError(OSError):
    """The requested host:port cannot be bound."""


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)

    async def stop(self, grace: float = 1.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_generation_server(
    servicer: pb_grpc.GenerationServicer, host: str, port: int, *, also: Callable[[grpc.aio.Server], None] | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (), credentials: grpc.ServerCredentials | None = None,
    reuse_port: bool = False,
) -> RunningServer:
    """Serve ``servicer`` on host:port (0 = any free port); NOT_SERVING until told otherwise.
    ``interceptors`` check callers (API keys, the cluster token); ``credentials`` serve TLS.

    ``also`` adds more services to the server before it starts (a replica's internal stream).
    ``reuse_port``: several routers share this port (SO_REUSEPORT; the kernel spreads connections)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port))], interceptors=list(interceptors) or None)
    pb_grpc.add_GenerationServicer_to_server(servicer, server)
    if also is not None:
        also(server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    try:
        address = f"{host}:{port}"
        bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as err:
        raise PortInUseError(f"cannot listen on {host}:{port}: {err}") from None
    if bound == 0:
        raise PortInUseError(f"cannot listen on {host}:{port} (in use?)")
    await server.start()
    running = RunningServer(server, bound, health)
    await running.set_serving(False)
    return running
