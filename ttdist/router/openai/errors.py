"""Errors in OpenAI's JSON shape, with the HTTP status that matches the failure.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

The router's ``RequestError`` carries a gRPC status code; ``from_request_error`` maps it to
the HTTP status an OpenAI client expects (400 bad field, 404 unknown model, 429 overloaded,
503 no replica, 504 deadline).
"""

from __future__ import annotations

import grpc

TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
    405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
    500: "server_error", 503: "service_unavailable_error", 504: "timeout_error",
}

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ApiError(Exception):
    """A refused or failed HTTP request: status, message and the offending parameter."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


def bad_param(param: str, message: str, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, f"{param}: {message}", param, code)


def unsupported(param: str, why: str) -> ApiError:
    return ApiError(400, f"{param} is not supported by this server: {why}", param, "unsupported_parameter")


def from_request_error(err) -> ApiError:
    """The HTTP form of the router's ``RequestError``."""
    status = _HTTP_STATUS.get(err.code, 500)
    code = {404: "model_not_found", 429: "overloaded", 503: "unavailable", 504: "timeout"}.get(status)
    return ApiError(status, str(err), err.field or None, code)
