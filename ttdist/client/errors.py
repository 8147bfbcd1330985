"""Typed exceptions raised by the client, one per gRPC status a caller can act on.

Every exception carries the server's message, the gRPC status code and, where known, the
request id. ``from_rpc_error`` maps a ``grpc.RpcError`` (sync or asyncio) to its class.
"""

from __future__ import annotations

import grpc


class TtdistError(Exception):
    """Base class of every error the client raises."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, request_id: str | None = None, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidRequest(TtdistError, ValueError):
    """A field of the request is invalid (INVALID_ARGUMENT); ``field`` names it when known."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, field: str | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.field = field


class NotFound(TtdistError, LookupError):
    """The requested model (or other named thing) does not exist (NOT_FOUND)."""

    code = grpc.StatusCode.NOT_FOUND


class Overloaded(TtdistError):
    """The cluster has no room for the request now (RESOURCE_EXHAUSTED); try again later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(TtdistError, ConnectionError):
    """The router cannot be reached or has no ready replica (UNAVAILABLE), after retries."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(TtdistError, TimeoutError):
    """The call did not finish before its deadline (DEADLINE_EXCEEDED)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(TtdistError):
    """The call was cancelled (CANCELLED)."""

    code = grpc.StatusCode.CANCELLED


class Unauthenticated(TtdistError, PermissionError):
    """The bearer token is missing or wrong (UNAUTHENTICATED or PERMISSION_DENIED)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ServerError(TtdistError):
    """Any other failure on the server side (INTERNAL, UNKNOWN, UNIMPLEMENTED, ...)."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[TtdistError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Unauthenticated,
}


def from_rpc_error(err: grpc.RpcError, *, request_id: str | None = None) -> TtdistError:
    """The typed exception for a failed call, keeping the server's message and status code."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else None
    message = details or f"call failed with {code.name}"
    cls = _BY_CODE.get(code, ServerError)
    return cls(message, request_id=request_id, code=code)
