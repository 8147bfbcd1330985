"""The router's public listeners: gRPC on ``port`` and OpenAI HTTP on ``api.http_port``.

Both check the same API keys (health stays open) and serve the same TLS certificate; both
call the same ``ModelRouters`` (one ``Router`` and ``ChatPrompter`` per served model).
"""

from __future__ import annotations

from dataclasses import dataclass

from ttdist.router.chat import ChatPrompter
from ttdist.router.models import ModelRouters
from ttdist.router.router import Router
from ttdist.router.openai import OpenAIServer, RunningHttp, start_http_server
from ttdist.router.service import start_router_server
from ttdist.runtime.api_config import ApiConfig
from ttdist.runtime.auth import ApiKeys, BearerInterceptor, ServerTLS
from ttdist.runtime.grpc_server import RunningServer


@dataclass
class PublicServers:
    grpc: RunningServer
    http: RunningHttp | None = None

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    async def stop(self, grace: float = 1.0) -> None:
        if self.http is not None:
            await self.http.stop()
        await self.grpc.stop(grace)


async def serve_public(router: Router | ModelRouters, host: str, port: int, api: ApiConfig,
                       model_dir: str = "") -> PublicServers:
    """Start ``router`` and serve it on both listeners (HTTP only when ``api.http_port`` is set); a
    single ``Router`` renders chats with ``model_dir``'s template (or ``api.chat_template``)."""
    keys = ApiKeys(api.api_keys)
    tls = ServerTLS(api.tls_cert, api.tls_key, api.tls_client_ca) if api.tls else None
    if not isinstance(router, ModelRouters):
        router = ModelRouters.one(router, ChatPrompter.load(model_dir, router.tokenizer, api.chat_template))
    running = await start_router_server(
        router, host, port, interceptors=[BearerInterceptor(keys)] if keys else [],
        credentials=tls.grpc_credentials() if tls else None,
    )
    public = PublicServers(running)
    if api.http_port is not None:
        try:
            public.http = await start_http_server(OpenAIServer(router, keys=keys), host, api.http_port,
                                                  tls.ssl_context() if tls else None)
        except BaseException:
            await running.stop(0)
            raise
    return public
