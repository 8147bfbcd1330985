"""Who may call the servers: API keys and TLS on the public listeners, the cluster token inside.

Public API (router, gRPC and HTTP): with API keys configured every call must carry
``authorization: Bearer <key>`` (gRPC metadata or the HTTP header); a missing or wrong key is
UNAUTHENTICATED / 401. Health checks (grpc.health.v1, ``GET /health``) stay open so load
balancers and ``ttdist serve --wait`` work without a key. ``ServerTLS`` serves both
listeners over TLS, and with a client CA requires client certificates (mutual TLS).

Internal replica ports: the coordinator makes a random token when the cluster starts and hands
it to replicas and routers; a replica's server refuses any call without it (health included,
which nothing outside the cluster needs), so a process that finds a replica's port cannot use it.
"""

from __future__ import annotations

import hmac
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def new_cluster_token() -> str:
    return secrets.token_urlsafe(32)


class ApiKeys:
    """The accepted keys; empty means no authentication."""

    def __init__(self, keys=()) -> None:
        self._keys = tuple(k.encode() for k in keys if k)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def accepts(self, authorization: str | None) -> bool:
        """True for ``Bearer <a configured key>`` (always True when no keys are configured)."""
        if not self._keys:
            return True
        if not authorization or not authorization[:7].lower() == "bearer ":
            return False
        given = authorization[7:].strip().encode()
        ok = False
        for key in self._keys:     # compare against every key: the time taken does not say which matched
            ok |= hmac.compare_digest(given, key)
        return ok


def _deny(message: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - abort raises

    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)


class BearerInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls whose ``authorization`` metadata is not ``Bearer <accepted key>``."""

    def __init__(self, keys: ApiKeys, open_prefixes: tuple[str, ...] = (HEALTH_PREFIX,), what: str = "API key") -> None:
        self.keys = keys
        self.open_prefixes = open_prefixes
        self.what = what

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if details.method.startswith(self.open_prefixes):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        given = metadata.get("authorization")
        if self.keys.accepts(given):
            return await continuation(details)
        why = f"a valid {self.what} is required (authorization: Bearer ...)" if not given else f"invalid {self.what}"
        return _deny(why, await continuation(details))


class _TokenMetadata:
    """Adds ``authorization: Bearer <token>`` to a call's metadata."""

    def __init__(self, token: str) -> None:
        self._pair = ("authorization", f"Bearer {token}")

    def _details(self, details):
        return details._replace(metadata=list(details.metadata or ()) + [self._pair])


# grpc.aio files each interceptor under the first call kind it implements: one class per kind
class _UnaryUnaryToken(_TokenMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _UnaryStreamToken(_TokenMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _StreamStreamToken(_TokenMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


def cluster_channel(address: str, token: str, options=None) -> grpc.aio.Channel:
    """A channel to a replica's internal port that presents the cluster token on every call."""
    interceptors = [kind(token) for kind in (_UnaryUnaryToken, _UnaryStreamToken, _StreamStreamToken)] if token else None
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


def cluster_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata a blocking stub passes to a replica (tests, tools)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


@dataclass(frozen=True)
class ServerTLS:
    """PEM files for a public listener; ``client_ca`` set = clients must present a certificate it signed."""

    cert: str
    key: str
    client_ca: str | None = None

    def _read(self, name: str) -> bytes:
        path = getattr(self, name)
        try:
            return Path(path).read_bytes()
        except OSError as err:
            raise ValueError(f"tls {name}: cannot read {path}: {err.strerror}") from None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        ca = self._read("client_ca") if self.client_ca else None
        return grpc.ssl_server_credentials([(self._read("key"), self._read("cert"))], root_certificates=ca,
                                           require_client_auth=ca is not None)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca:
            context.load_verify_locations(self.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def cluster_interceptors(token: str) -> list[grpc.aio.ServerInterceptor]:
    """What a replica's server checks: the cluster token on every call (none when ``token`` is empty)."""
    return [BearerInterceptor(ApiKeys([token]), open_prefixes=(), what="cluster token")] if token else []
