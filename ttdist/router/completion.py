"""The ``Complete`` a client gets at the end of a request, assembled over every segment.

A request that moved between replicas has one answer: all its ids and text, usage counted
over the whole request (the prompt as the client sent it, every generated token), and timings
from the router's clock (time to first token and the mean gap between tokens as the client saw
them, the total time). The queue time and cached prompt tokens are the last replica's.
"""

from __future__ import annotations

import time
from typing import Protocol

from ttdist.v1 import generation_pb2 as pb


class Produced(Protocol):
    """What a request has produced so far (``migration.Progress``); perf_counter seconds."""

    ids: list[int]
    text: str
    started: float
    first_at: float
    last_at: float
    last_replica: str
    logprobs: list          # pb.TokenLogprob per generated id (empty when not asked)
    prompt_logprobs: list


def assemble_complete(reason: int, produced: Produced, prompt: list[int] | None,
                      last: pb.Complete | None = None) -> pb.Complete:
    """The request's ``Complete`` with finish ``reason``; ``last`` is the last replica's own
    ``Complete`` (None when the router ends the request itself)."""
    now = time.perf_counter()
    prompt_tokens = len(prompt) if prompt is not None else (last.usage.prompt_tokens if last else 0)
    cached = min(last.usage.cached_tokens, prompt_tokens) if last else 0
    n = len(produced.ids)
    itl = (produced.last_at - produced.first_at) / (n - 1) if n > 1 and produced.first_at else 0.0
    return pb.Complete(
        finish_reason=reason,
        usage=pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=n, cached_tokens=cached),
        output_ids=produced.ids, text=produced.text, replica_id=produced.last_replica,
        timings=pb.Timings(
            queue_seconds=last.timings.queue_seconds if last else 0.0,
            ttft_seconds=(produced.first_at or now) - produced.started,
            mean_inter_token_seconds=itl, total_seconds=now - produced.started,
        ),
        logprobs=produced.logprobs, prompt_logprobs=produced.prompt_logprobs,
    )
