"""Connection options shared by the sync and asyncio clients: retries, TLS, bearer token.

``ClientConfig`` is validated once when a client is built; the clients ask it for the
channel credentials, the channel options and the call metadata.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import grpc

from ttdist.client.errors import InvalidRequest

DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, used only for UNAVAILABLE before the first token.

    Attempt ``n`` (1-based) that fails waits ``min(initial * multiplier**(n-1), max)``
    seconds, scaled by a random factor in ``[1 - jitter, 1 + jitter]``, then tries again,
    up to ``max_attempts`` attempts in all and ``max_wait_s`` seconds of retrying (None:
    no limit of that kind; the call's deadline always applies). ``RetryPolicy(max_attempts=1)``
    never retries.
    """

    max_attempts: int | None = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_wait_s: float | None = None

    def __post_init__(self):
        if self.max_attempts is not None and (not isinstance(self.max_attempts, int) or self.max_attempts < 1):
            raise InvalidRequest(f"retry.max_attempts must be an integer >= 1 or None, got {self.max_attempts!r}",
                                 field="retry.max_attempts")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise InvalidRequest("retry backoff must satisfy 0 < initial_backoff_s <= max_backoff_s, got "
                                 f"{self.initial_backoff_s} and {self.max_backoff_s}", field="retry.initial_backoff_s")
        if self.multiplier < 1:
            raise InvalidRequest(f"retry.multiplier must be >= 1, got {self.multiplier}", field="retry.multiplier")
        if not 0 <= self.jitter < 1:
            raise InvalidRequest(f"retry.jitter must be in [0, 1), got {self.jitter}", field="retry.jitter")
        if self.max_wait_s is not None and not self.max_wait_s >= 0:
            raise InvalidRequest(f"retry.max_wait_s must be >= 0 or None, got {self.max_wait_s}",
                                 field="retry.max_wait_s")

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.initial_backoff_s * self.multiplier ** (attempt - 1), self.max_backoff_s)
        u = (rng or random).uniform(-1.0, 1.0)
        return base * (1.0 + self.jitter * u)


def _read_pem(name: str, value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as e:
        raise InvalidRequest(f"tls.{name}: cannot read {value}: {e.strerror}", field=f"tls.{name}") from None


@dataclass(frozen=True)
class TLSConfig:
    """TLS for the channel. PEM values are bytes or a path to a file.

    ``root_certificates`` None = the system's roots; ``private_key`` + ``certificate_chain``
    enable mutual TLS; ``server_name`` overrides the name checked against the certificate.
    """

    root_certificates: bytes | str | Path | None = None
    private_key: bytes | str | Path | None = None
    certificate_chain: bytes | str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        key = _read_pem("private_key", self.private_key)
        chain = _read_pem("certificate_chain", self.certificate_chain)
        if (key is None) != (chain is None):
            raise InvalidRequest("tls: private_key and certificate_chain must be given together",
                                 field="tls.private_key")
        return grpc.ssl_channel_credentials(_read_pem("root_certificates", self.root_certificates), key, chain)


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs to reach the router; validated once at construction."""

    target: str = DEFAULT_TARGET
    token: str | None = None
    tls: TLSConfig | None = None
    timeout: float | None = None           # default deadline per call, seconds; None = no deadline
    retry: RetryPolicy = RetryPolicy()

    @classmethod
    def build(cls, target: str, *, token, tls, timeout, retry) -> ClientConfig:
        if not isinstance(target, str) or not target.strip():
            raise InvalidRequest(f"target must be 'host:port', got {target!r}", field="target")
        target = target.removeprefix("grpc://")
        if tls is True:
            tls = TLSConfig()
        elif tls is False:
            tls = None
        elif tls is not None and not isinstance(tls, TLSConfig):
            raise InvalidRequest(f"tls must be True, False, None or a TLSConfig, got {tls!r}", field="tls")
        if token is not None and (not isinstance(token, str) or not token):
            raise InvalidRequest("token must be a non-empty string", field="token")
        check_timeout(timeout)
        if retry is None:
            retry = RetryPolicy()
        elif not isinstance(retry, RetryPolicy):
            raise InvalidRequest(f"retry must be a RetryPolicy, got {retry!r}", field="retry")
        return cls(target=target, token=token, tls=tls, timeout=timeout, retry=retry)

    def channel_options(self) -> list[tuple[str, object]]:
        """Reconnect as fast as the retry policy asks, so a late router is picked up promptly."""
        initial_ms = max(1, int(self.retry.initial_backoff_s * 1000))
        options: list[tuple[str, object]] = [
            ("grpc.initial_reconnect_backoff_ms", initial_ms),
            ("grpc.min_reconnect_backoff_ms", initial_ms),
            ("grpc.max_reconnect_backoff_ms", max(initial_ms, int(self.retry.max_backoff_s * 1000))),
            ("grpc.enable_retries", 0),
        ]
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def check_timeout(timeout) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidRequest(f"timeout must be a positive number of seconds or None, got {timeout!r}",
                             field="timeout")
    return float(timeout)
