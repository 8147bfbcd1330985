"""One request's spans on the router (``ttdist.tracing``): made only for a sampled request.

    request            SERVER, under the caller's traceparent: id, prompt / completion tokens, finish
      route            one per replica picked: policy, replica, prefix hit (leading prompt pages it holds), attempt
      segment          the stretch on one replica; its context goes to the replica as ``traceparent``
        replica.generate ... (on the replica: queue, prefill chunks, decode; ``runtime/replica_trace.py``)
      migration        from a replica failure to the next replica picked: why, streams the failure took,
                       whether it counts against the request

A request that is not sampled gets no ``RequestTrace``: the router pays one ``is None`` per step.
"""

from __future__ import annotations

from ttdist.router.attempts import Failure
from ttdist.router.migration import SegmentEnd
from ttdist.router.policies import ReplicaView, RequestInfo
from ttdist.tracing import Tracing
from ttdist.tracing.tracer import wall_now
from ttdist.v1 import generation_pb2 as pb


def prefix_hit_pages(view: ReplicaView, info: RequestInfo) -> int:
    """Leading prompt pages ``view``'s prefix cache held at its last heartbeat."""
    n = 0
    for h in info.block_hashes:
        if h not in view.prefix_hashes:
            break
        n += 1
    return n


class RequestTrace:
    def __init__(self, tracing: Tracing, span, policy: str) -> None:
        self.tracing = tracing
        self.span = span
        self.policy = policy
        self._segment = None
        self._migration = None
        self._attempt = 0
        self.migrations = 0

    @classmethod
    def start(cls, tracing: Tracing | None, req: pb.GenerateRequest, request_id: str, prompt_tokens: int,
              policy: str) -> "RequestTrace | None":
        """The request's trace, under the caller's ``traceparent``; None when off or not sampled."""
        if tracing is None:
            return None
        span = tracing.start("request", traceparent=req.traceparent, tracestate=req.tracestate, server=True,
                             attributes={"ttdist.request_id": request_id, "ttdist.prompt_tokens": prompt_tokens,
                                         "ttdist.max_tokens": req.sampling.max_tokens, "ttdist.stream": req.stream})
        return None if span is None else cls(tracing, span, policy)

    def routing(self) -> float:
        """Call before picking a replica: the time the ``route`` span starts."""
        return wall_now()

    def routed(self, started_s: float, view: ReplicaView, info: RequestInfo) -> None:
        self._attempt += 1
        span = self.tracing.start("route", parent=self.span, start_s=started_s, attributes={
            "ttdist.policy": self.policy, "ttdist.replica_id": view.replica_id,
            "ttdist.prefix_hit_pages": prefix_hit_pages(view, info), "ttdist.prompt_pages": len(info.block_hashes),
            "ttdist.attempt": self._attempt})
        span.end()
        if self._migration is not None:
            self._migration.set_attribute("ttdist.to_replica", view.replica_id)
            self._migration.end()
            self._migration = None

    def segment(self, sub: pb.GenerateRequest, replica_id: str) -> None:
        """The request's stretch on ``replica_id`` starts: ``sub`` carries its context there."""
        self._segment = self.tracing.start("segment", parent=self.span, attributes={
            "ttdist.replica_id": replica_id, "ttdist.sub_request_id": sub.request_id,
            "ttdist.resumed_tokens": sub.resume.generated_tokens})
        sub.traceparent, sub.tracestate = self.tracing.traceparent(self._segment)

    def segment_ended(self, end: SegmentEnd, tokens: int) -> None:
        span, self._segment = self._segment, None
        span.set_attribute("ttdist.tokens_total", tokens)
        if end.failure:
            span.set_attribute("ttdist.failure", end.failure)
        span.end()

    def migrating(self, replica_id: str, failure: Failure) -> None:
        self.migrations += 1
        self.span.set_attribute("ttdist.migrations", self.migrations)
        self._migration = self.tracing.start("migration", parent=self.span, attributes={
            "ttdist.from_replica": replica_id, "ttdist.failure": failure.message,
            "ttdist.died_with": failure.died_with, "ttdist.implicates": failure.implicates})

    def finished(self, complete: pb.Complete) -> None:
        self.span.set_attributes({"ttdist.finish_reason": pb.FinishReason.Name(complete.finish_reason),
                                  "ttdist.completion_tokens": complete.usage.completion_tokens,
                                  "ttdist.cached_tokens": complete.usage.cached_tokens,
                                  "ttdist.replica_id": complete.replica_id})

    def close(self, error: BaseException | None) -> None:
        """End every span still open; ``error`` (the request's end, if it failed) marks them."""
        from opentelemetry.trace import Status, StatusCode

        for span in (self._segment, self._migration, self.span):
            if span is None:
                continue
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, str(error)))
            span.end()
        self._segment = self._migration = None
