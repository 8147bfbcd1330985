"""OpenTelemetry traces of a request across router, replica and engine (``docs/runtime.md``)."""

from ttdist.tracing.config import TracingConfig
from ttdist.tracing.tracer import Tracing, make_tracing

__all__ = ["TracingConfig", "Tracing", "make_tracing"]
