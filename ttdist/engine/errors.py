"""Typed errors the engine raises to its callers (the replica's gRPC servicer maps them)."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidRequestError(EngineError, ValueError):
    """A request field is wrong; ``field`` names it (``sampling.top_p``) and the message says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class OverloadedError(EngineError):
    """The waiting queue is full; the caller should retry later or elsewhere."""


class EngineStoppedError(EngineError):
    """The engine is not running (not started, shut down, or its model failed)."""


class UserGroupsError(EngineError, ValueError):
    """The runner's user groups cannot split its decode slots or its KV pages evenly."""
