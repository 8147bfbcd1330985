"""Log-probabilities a request asks for, as the engine and its runner pass them.

``SamplingParams.logprobs`` = N asks, for every generated token, its logprob and the N most
likely tokens' (0: the token's alone); ``prompt_logprobs`` = N the same for every prompt token
given those before it (the first prompt token has none). N is at most ``MAX_LOGPROBS``, which
the mesh computes for every row that asks (``ttdist.mesh.logprobs.TOP``); the runner cuts each
row to its request's N. Prompt logprobs are of the model's raw distribution; generated tokens'
are raw too unless the runner is set to the processed one (after temperature).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ttdist.engine.errors import InvalidRequestError

MAX_LOGPROBS = 20
LOGPROBS_MODES = ("raw", "processed")


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability and the ``top`` (id, logprob) pairs of its position, best first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class PrefillLogprobs:
    """What ``ModelRunner.prefill_logprobs`` returns: the sampled token (when the chunk samples)
    with its logprob (when asked), and one ``TokenLogprob`` per ``PrefillInput.prompt_targets``."""

    token: int | None
    sampled: TokenLogprob | None = None
    prompt: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class DecodeLogprobs:
    """What ``ModelRunner.decode_logprobs`` returns: one token per user and, for the users whose
    ``SamplingSpec.logprobs`` is set, its ``TokenLogprob`` (None for the others)."""

    tokens: list[int]
    logprobs: list[TokenLogprob | None]


def check_count(name: str, value) -> None:
    """``value`` is None (off) or an integer in [0, MAX_LOGPROBS]; else an InvalidRequestError naming ``name``."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LOGPROBS:
        raise InvalidRequestError(name, f"must be an integer in [0, {MAX_LOGPROBS}] or None, got {value!r}")
