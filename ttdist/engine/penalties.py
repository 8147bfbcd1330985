"""A request's penalties and biases: checked against OpenAI's (and Hugging Face's) ranges, then
frozen into the ``PenaltySpec`` the runner applies on the mesh (``ttdist.mesh.penalties``).

A request whose settings are all neutral gets no spec, so its decode steps run the plain path.
"""

from __future__ import annotations

import math

from ttdist.engine.errors import InvalidRequestError
from ttdist.engine.request import SamplingParams
from ttdist.engine.runner import PenaltySpec

MAX_BIAS = 100.0
MAX_OPENAI_PENALTY = 2.0


def check_penalties(s: SamplingParams, vocab_size: int, max_tokens: int) -> None:
    """Raise ``InvalidRequestError`` naming the first field out of range."""
    r = s.repetition_penalty
    if not _number(r) or not math.isfinite(r) or r <= 0:
        raise InvalidRequestError("sampling.repetition_penalty", f"must be a finite number > 0 (1 = off), got {r!r}")
    for name in ("presence_penalty", "frequency_penalty"):
        v = getattr(s, name)
        if not _number(v) or not -MAX_OPENAI_PENALTY <= v <= MAX_OPENAI_PENALTY:
            raise InvalidRequestError(f"sampling.{name}", f"must be within [-2, 2] (0 = off), got {v!r}")
    if not _number(s.min_p) or not 0.0 <= s.min_p <= 1.0:
        raise InvalidRequestError("sampling.min_p", f"must be within [0, 1] (0 = off), got {s.min_p!r}")
    if not _int(s.min_tokens) or s.min_tokens < 0:
        raise InvalidRequestError("sampling.min_tokens", f"must be an integer >= 0, got {s.min_tokens!r}")
    if s.min_tokens > max_tokens:
        raise InvalidRequestError("sampling.min_tokens", f"{s.min_tokens} exceeds max_tokens={max_tokens}")
    if not isinstance(s.logit_bias, dict):
        raise InvalidRequestError("sampling.logit_bias", f"must map token ids to biases, got {type(s.logit_bias).__name__}")
    for token, bias in s.logit_bias.items():
        if not _int(token) or not 0 <= token < vocab_size:
            raise InvalidRequestError("sampling.logit_bias", f"token id {token!r} is outside the vocabulary [0, {vocab_size})")
        if not _number(bias) or not -MAX_BIAS <= bias <= MAX_BIAS:
            raise InvalidRequestError("sampling.logit_bias", f"the bias of token {token} must be within [-100, 100], got {bias!r}")


def penalty_spec(s: SamplingParams, eos_ids: tuple[int, ...]) -> PenaltySpec | None:
    """The runner's spec for checked settings; None when every one is neutral. ``min_tokens`` bans
    the stop token ids and (unless ``ignore_eos``) the EOS ids until reached."""
    banned = tuple(dict.fromkeys(list(s.stop_token_ids) + ([] if s.ignore_eos else list(eos_ids))))
    min_tokens = s.min_tokens if banned else 0
    spec = PenaltySpec(
        repetition_penalty=float(s.repetition_penalty), presence_penalty=float(s.presence_penalty),
        frequency_penalty=float(s.frequency_penalty),
        logit_bias=tuple(sorted((int(t), float(b)) for t, b in s.logit_bias.items() if b != 0)),
        min_p=float(s.min_p), min_tokens=min_tokens, banned_ids=banned if min_tokens else (),
    )
    neutral = PenaltySpec()
    return None if spec == neutral else spec


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
