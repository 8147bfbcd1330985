"""How a process exports its spans: the OTLP endpoint (empty: tracing off) and the sampling ratio."""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlparse

from ttdist.errors import PermanentError


class TracingConfigError(PermanentError, ValueError):
    """A tracing setting that cannot work."""


@dataclass(frozen=True)
class TracingConfig:
    otlp_traces_endpoint: str = ""    # OTLP/gRPC collector, e.g. http://collector:4317; "" = no tracing, no cost
    sample_ratio: float = 1.0         # share of new traces sampled (a request with a traceparent follows its flag)
    export_interval_s: float = 1.0    # spans wait at most this long in a process before they are sent
    insecure: bool = True             # plain gRPC to the collector (an https:// endpoint uses TLS)

    @property
    def enabled(self) -> bool:
        return bool(self.otlp_traces_endpoint)

    def check(self) -> None:
        if self.otlp_traces_endpoint:
            url = urlparse(self.otlp_traces_endpoint if "://" in self.otlp_traces_endpoint
                           else f"http://{self.otlp_traces_endpoint}")
            if url.scheme not in ("http", "https", "grpc") or not url.hostname:
                raise TracingConfigError(f"tracing.otlp_traces_endpoint: not host:port or a URL: "
                                         f"{self.otlp_traces_endpoint!r}")
        if not (isinstance(self.sample_ratio, (int, float)) and 0.0 <= self.sample_ratio <= 1.0):
            raise TracingConfigError(f"tracing.sample_ratio must be in [0, 1], got {self.sample_ratio!r}")
        if not (isinstance(self.export_interval_s, (int, float)) and math.isfinite(self.export_interval_s)
                and self.export_interval_s > 0):
            raise TracingConfigError(f"tracing.export_interval_s must be > 0 seconds, got {self.export_interval_s!r}")
