"""The engine's ``TokenLogprob``s as ``ttdist.v1`` messages, and the engine's logprob settings of a
request (``sampling.logprobs``, ``sampling.prompt_logprobs``, checked by ``request_checks``)."""

from __future__ import annotations

from ttdist.engine.logprobs import TokenLogprob
from ttdist.v1 import generation_pb2 as pb


def to_proto(logprobs: list[TokenLogprob | None] | None) -> list[pb.TokenLogprob]:
    """Messages for ``logprobs`` (None entries, the first prompt token's, are left out)."""
    return [pb.TokenLogprob(token_id=lp.token_id, logprob=lp.logprob,
                            top=[pb.TopLogprob(token_id=t, logprob=v) for t, v in lp.top])
            for lp in logprobs or () if lp is not None]


def engine_counts(s: pb.SamplingParams) -> dict:
    """``SamplingParams`` keyword arguments of the engine for the logprob fields set."""
    return {name: getattr(s, name) if s.HasField(name) else None for name in ("logprobs", "prompt_logprobs")}
