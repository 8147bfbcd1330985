"""How the public API is served: the HTTP port, API keys, TLS and the chat template.

Part of ``ClusterConfig`` (``api``; the ``api:`` mapping of a cluster spec). ``ttdist serve``
and cluster specs serve HTTP on 8000 unless told otherwise; a ``ClusterConfig`` built in code
serves it only when ``http_port`` is set (tests pick free ports). Keys are
resolved where the config enters (``--api-key``, ``--api-key-file``, ``TTDIST_API_KEY``, a
spec's ``api_key_file``), so nothing below reads files or the environment for them.

Safe by default: a public host that is not a loopback address is refused without an API key,
unless ``insecure`` says to serve it open anyway.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path


class ApiConfigError(ValueError):
    """A public-API setting that cannot work; the message names it."""


@dataclass(frozen=True)
class ApiConfig:
    http_port: int | None = None                 # OpenAI-compatible HTTP; None = off (serve and specs: 8000)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    tls_cert: str | None = None                  # PEM files: serve gRPC and HTTP over TLS
    tls_key: str | None = None
    tls_client_ca: str | None = None             # set = clients must present a certificate it signed (mTLS)
    chat_template: str | None = None             # a jinja file that replaces the checkpoint's chat template
    insecure: bool = False                       # allow a non-loopback host without API keys

    def check(self, host: str) -> None:
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ApiConfigError(f"http_port must be in 0..65535 (or off), got {self.http_port}")
        if any(not isinstance(k, str) or not k.strip() or any(c.isspace() for c in k) for k in self.api_keys):
            raise ApiConfigError("API keys must be non-empty strings without whitespace")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ApiConfigError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ApiConfigError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "chat_template"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ApiConfigError(f"--{name.replace('_', '-')}: no such file {path}")
        if not self.api_keys and not self.insecure and not is_loopback(host):
            raise ApiConfigError(
                f"refusing to serve on {host or 'all interfaces'} without an API key: give --api-key KEY "
                "(or --api-key-file FILE, or TTDIST_API_KEY), or --insecure to serve it open anyway")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_key_file(path: str | Path) -> list[str]:
    """One key per line; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ApiConfigError(f"--api-key-file: cannot read {path}: {err.strerror}") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ApiConfigError(f"--api-key-file: {path} holds no keys")
    return keys
