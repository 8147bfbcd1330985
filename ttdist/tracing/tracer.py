"""One process's tracer over the OpenTelemetry SDK, or None: tracing off costs one ``is None``.

``make_tracing(config, service)`` gives None when ``config.otlp_traces_endpoint`` is empty (the
SDK is not even imported); else a ``Tracing`` whose spans go to the collector over OTLP/gRPC in
batches (``export_interval_s``), each process under its own ``service.name`` (ttdist-router,
ttdist-replica). Sampling is decided once, where a trace starts: a request that arrives with a
W3C ``traceparent`` follows its sampled flag, a new trace is sampled with ``sample_ratio``
(``ParentBased(TraceIdRatioBased)``). ``start`` returns None for a span that is not sampled, so
callers skip everything after it, and the router sends a replica a ``traceparent`` only for a
sampled request: a replica makes spans only under one.

Across processes the context travels as a ``traceparent`` string: from the client (gRPC
metadata, an HTTP header, or ``GenerateRequest.traceparent``) into the router, and from each of
the router's segment spans to the replica in the request it sends there. The engine process makes
no spans: it records its steps' times on the request (``Timings``) and the replica turns them into
spans with those times.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from ttdist.tracing.config import TracingConfig

TRACEPARENT, TRACESTATE = "traceparent", "tracestate"
MAX_TRACEPARENT_CHARS, MAX_TRACESTATE_CHARS = 256, 512   # W3C: 55 for version 00; tracestate 512


class Tracing:
    """Spans of one process, exported to ``config.otlp_traces_endpoint``."""

    def __init__(self, config: TracingConfig, service: str) -> None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.config = config
        self._kinds = {False: SpanKind.INTERNAL, True: SpanKind.SERVER}
        self._in_context = set_span_in_context
        self._propagator = TraceContextTextMapPropagator()
        endpoint = config.otlp_traces_endpoint
        self._provider = TracerProvider(resource=Resource.create({"service.name": service}),
                                        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=config.insecure and not endpoint.startswith("https://"))
        self._provider.add_span_processor(BatchSpanProcessor(
            exporter, schedule_delay_millis=max(1, int(config.export_interval_s * 1000))))
        self._tracer = self._provider.get_tracer("ttdist")

    def start(self, name: str, *, parent: Any = None, traceparent: str = "", tracestate: str = "",
              server: bool = False, attributes: Mapping[str, Any] | None = None, start_s: float | None = None):
        """A started span (None when its trace is not sampled) under ``parent`` (a span), else
        under the remote ``traceparent``, else a new trace. ``start_s``: its start (``time.time()``
        seconds) when that was before now."""
        if parent is not None:
            context = self._in_context(parent)
        elif traceparent:
            carrier = {TRACEPARENT: traceparent, TRACESTATE: tracestate} if tracestate else {TRACEPARENT: traceparent}
            context = self._propagator.extract(carrier)
        else:
            context = None
        span = self._tracer.start_span(name, context=context, kind=self._kinds[server], attributes=attributes,
                                       start_time=None if start_s is None else int(start_s * 1e9))
        if not span.is_recording():
            return None
        return span

    def traceparent(self, span) -> tuple[str, str]:
        """``span``'s context as W3C (traceparent, tracestate), for the next process."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._in_context(span))
        return carrier.get(TRACEPARENT, ""), carrier.get(TRACESTATE, "")

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self._provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Send what is left and stop."""
        self._provider.shutdown()


def make_tracing(config: TracingConfig, service: str) -> Tracing | None:
    """The process's ``Tracing``, or None when tracing is off."""
    return Tracing(config, service) if config.enabled else None


def take_context(req, headers) -> None:
    """Copy W3C ``traceparent`` / ``tracestate`` from ``headers`` (gRPC metadata pairs, or an HTTP
    header mapping) into ``req`` (a ``GenerateRequest``) unless it carries its own. Over-long
    values are dropped (W3C: an invalid traceparent starts a new trace)."""
    if req.traceparent or headers is None:
        return
    items = headers.items() if hasattr(headers, "items") else headers
    found = {k.lower(): v for k, v in items if isinstance(v, str) and k.lower() in (TRACEPARENT, TRACESTATE)}
    parent, state = found.get(TRACEPARENT, ""), found.get(TRACESTATE, "")
    if parent and len(parent) <= MAX_TRACEPARENT_CHARS:
        req.traceparent = parent
        if len(state) <= MAX_TRACESTATE_CHARS:
            req.tracestate = state


def end_at(span, at_s: float) -> None:
    """End ``span`` at ``at_s`` (``time.time()`` seconds)."""
    span.end(end_time=int(at_s * 1e9))


def wall_now() -> float:
    return time.time()
