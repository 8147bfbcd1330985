"""A real OTLP/gRPC trace receiver for tests: the collector's ``TraceService`` from
opentelemetry-proto on a local port, keeping every span it is sent.

``OtlpReceiver().start()`` listens on 127.0.0.1 (``endpoint`` is what ``--otlp-traces-endpoint``
takes); ``spans()`` are the spans received so far as ``Span`` rows (ids as hex, attributes as
plain values, the service that sent them); ``wait_for(pred)`` waits until ``pred(spans)`` holds.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as ts_grpc

from tests.support.waiting import wait_for


@dataclass(frozen=True)
class Span:
    name: str
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict
    events: tuple[str, ...]
    error: bool


def _value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class OtlpReceiver(ts_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self._spans: list[Span] = []
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.port = 0

    def Export(self, request: ts.ExportTraceServiceRequest, context) -> ts.ExportTraceServiceResponse:
        rows = []
        for rs in request.resource_spans:
            service = next((_value(a.value) for a in rs.resource.attributes if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    rows.append(Span(s.name, service, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                     s.start_time_unix_nano, s.end_time_unix_nano,
                                     {a.key: _value(a.value) for a in s.attributes}, tuple(e.name for e in s.events),
                                     s.status.code == 2))
        with self._lock:
            self._spans.extend(rows)
        return ts.ExportTraceServiceResponse()

    def start(self) -> "OtlpReceiver":
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        ts_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def wait_for(self, pred, timeout: float = 60.0, what: str = "spans") -> list[Span]:
        return wait_for(lambda: (spans := self.spans()) and pred(spans) and spans, timeout,
                        lambda: f"{what}; received: {[(s.service, s.name) for s in self.spans()]}", every=0.1)
