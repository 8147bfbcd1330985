"""One request's spans on a replica, under the router's ``segment`` span (``ttdist.tracing``).

    replica.generate     SERVER, under the request's ``traceparent``: replica, request id, tokens
      engine.queue       arrival in the engine to its first scheduled step
      engine.prefill     one per prefill chunk: chunk index, tokens
      engine.decode      first token to last token (events ``first_token``, ``last_token``): tokens

The engine runs in a process of its own and makes no spans: for a traced request
(``GenerationRequest.traced``) it records when each prefill chunk ran, and its last output's
``Timings`` carry those times (seconds from the request's arrival) with the queue time and the
first and last token. The spans here take those times, anchored at the moment the replica handed
the request to the engine, so the whole trace shares one clock per machine.
"""

from __future__ import annotations

from ttdist.engine.request import RequestOutput
from ttdist.tracing import Tracing
from ttdist.tracing.tracer import end_at, wall_now


class ReplicaTrace:
    def __init__(self, tracing: Tracing, span, replica_id: str) -> None:
        self.tracing = tracing
        self.span = span
        self.replica_id = replica_id
        self.submitted_s = wall_now()

    @classmethod
    def start(cls, tracing: Tracing | None, traceparent: str, tracestate: str, replica_id: str,
              request_id: str) -> "ReplicaTrace | None":
        """The request's spans here: only under a sampled ``traceparent`` (the router decides)."""
        if tracing is None or not traceparent:
            return None
        span = tracing.start("replica.generate", traceparent=traceparent, tracestate=tracestate, server=True,
                             attributes={"ttdist.replica_id": replica_id, "ttdist.request_id": request_id})
        return None if span is None else cls(tracing, span, replica_id)

    def submitted(self) -> None:
        """The request goes to the engine now: the engine's times count from here."""
        self.submitted_s = wall_now()

    def finished(self, out: RequestOutput) -> None:
        """The engine's last output: the engine's spans from its ``Timings``."""
        t = out.timings
        if out.usage is not None:
            self.span.set_attributes({"ttdist.prompt_tokens": out.usage.prompt_tokens,
                                      "ttdist.completion_tokens": out.usage.completion_tokens,
                                      "ttdist.cached_tokens": out.usage.cached_tokens})
        if out.finish_reason is not None:
            self.span.set_attribute("ttdist.finish_reason", out.finish_reason.value)
        if t is None:
            return
        at = self.submitted_s
        self._child("engine.queue", at, at + t.queue_s, {"ttdist.queue_s": t.queue_s})
        for index, (start, end, tokens) in enumerate(t.prefill_chunks):
            self._child("engine.prefill", at + start, at + end, {"ttdist.chunk_index": index, "ttdist.chunk_tokens": tokens})
        if t.ttft_s:
            last = max(t.last_token_s, t.ttft_s)
            decode = self.tracing.start("engine.decode", parent=self.span, start_s=at + t.ttft_s, attributes={
                "ttdist.ttft_s": t.ttft_s, "ttdist.mean_inter_token_s": t.mean_inter_token_s,
                "ttdist.output_tokens": out.usage.completion_tokens if out.usage is not None else 0})
            decode.add_event("first_token", timestamp=int((at + t.ttft_s) * 1e9))
            decode.add_event("last_token", timestamp=int((at + last) * 1e9))
            end_at(decode, at + last)

    def _child(self, name: str, start_s: float, end_s: float, attributes: dict) -> None:
        span = self.tracing.start(name, parent=self.span, start_s=start_s, attributes=attributes)
        end_at(span, end_s)

    def close(self, error: BaseException | None) -> None:
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_status(Status(StatusCode.ERROR, str(error)))
        self.span.end()
