"""Checks a request before it is queued; every failure names the field and says why.

The context window is the model's ``max_context`` capped by what the page pool can hold for a
single request, so an accepted request can always run to its ``max_tokens``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ttdist.engine.errors import InvalidRequestError
from ttdist.engine.logprobs import check_count
from ttdist.engine.penalties import check_penalties
from ttdist.engine.request import GenerationRequest, Resume, SamplingParams
from ttdist.engine.tokenizer import Tokenizer

_MAX_SEED = 2**64


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    context_window: int
    default_max_tokens: int
    logprobs: bool = False   # the runner computes logprobs


@dataclass(frozen=True)
class ValidatedRequest:
    prompt_ids: list[int]
    max_tokens: int
    resumed_ids: list[int] = field(default_factory=list)


def validate_request(request: GenerationRequest, limits: Limits, tokenizer: Tokenizer | None) -> ValidatedRequest:
    if not isinstance(request, GenerationRequest):
        raise InvalidRequestError("request", f"expected a GenerationRequest, got {type(request).__name__}")
    if not isinstance(request.request_id, str) or not request.request_id:
        raise InvalidRequestError("request_id", "must be a non-empty string")
    sampling = request.sampling
    if not isinstance(sampling, SamplingParams):
        raise InvalidRequestError("sampling", f"expected SamplingParams, got {type(sampling).__name__}")
    prompt_ids, where = _prompt_ids(request, limits, tokenizer)
    window = limits.context_window
    if len(prompt_ids) >= window:
        raise InvalidRequestError(
            where, f"{len(prompt_ids)} prompt tokens leave no room in the context window of {window} "
            f"tokens (at most {window - 1})"
        )
    _check_sampling(sampling, limits, tokenizer)
    left = window - len(prompt_ids)
    max_tokens = sampling.max_tokens
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, left)
    elif not _is_int(max_tokens) or max_tokens < 1:
        raise InvalidRequestError("sampling.max_tokens", f"must be an integer >= 1, got {max_tokens!r}")
    elif max_tokens > left:
        raise InvalidRequestError(
            "sampling.max_tokens", f"{max_tokens} exceeds the context left: {len(prompt_ids)} prompt tokens "
            f"in a window of {window} leave {left}"
        )
    check_penalties(sampling, limits.vocab_size, max_tokens)
    resumed = _resumed_ids(request.resume, max_tokens, limits)
    return ValidatedRequest(prompt_ids, max_tokens, resumed)


def _resumed_ids(resume: Resume | None, max_tokens: int, limits: Limits) -> list[int]:
    if resume is None:
        return []
    if not isinstance(resume, Resume) or not isinstance(resume.output_ids, (list, tuple)):
        raise InvalidRequestError("resume", "must be a Resume with a list of output_ids")
    _check_ids("resume.output_ids", resume.output_ids, limits.vocab_size)
    if len(resume.output_ids) >= max_tokens:
        raise InvalidRequestError(
            "resume.output_ids", f"{len(resume.output_ids)} generated tokens already reach max_tokens={max_tokens}"
        )
    if not _is_int(resume.text_emitted) or resume.text_emitted < 0:
        raise InvalidRequestError("resume.text_emitted", f"must be an integer >= 0, got {resume.text_emitted!r}")
    return list(resume.output_ids)


def _prompt_ids(request: GenerationRequest, limits: Limits, tokenizer: Tokenizer | None) -> tuple[list[int], str]:
    if request.prompt is not None and request.prompt_token_ids is not None:
        raise InvalidRequestError("prompt", "give either prompt or prompt_token_ids, not both")
    if request.prompt_token_ids is not None:
        ids = request.prompt_token_ids
        if not isinstance(ids, (list, tuple)) or not ids:
            raise InvalidRequestError("prompt_token_ids", "must be a non-empty list of token ids")
        _check_ids("prompt_token_ids", ids, limits.vocab_size)
        return list(ids), "prompt_token_ids"
    if request.prompt is None:
        raise InvalidRequestError("prompt", "give a prompt (text) or prompt_token_ids")
    if not isinstance(request.prompt, str) or not request.prompt:
        raise InvalidRequestError("prompt", "must be a non-empty string")
    if tokenizer is None:
        raise InvalidRequestError("prompt", "this engine has no tokenizer: send prompt_token_ids")
    ids = tokenizer.encode(request.prompt)
    if not ids:
        raise InvalidRequestError("prompt", "encodes to no tokens")
    _check_ids("prompt", ids, limits.vocab_size)
    return ids, "prompt"


def _check_ids(field: str, ids: list[int], vocab_size: int) -> None:
    for index, token in enumerate(ids):
        if not _is_int(token) or not 0 <= token < vocab_size:
            raise InvalidRequestError(
                field, f"token id {token!r} at index {index} is outside the vocabulary [0, {vocab_size})"
            )


def _check_sampling(sampling: SamplingParams, limits: Limits, tokenizer: Tokenizer | None) -> None:
    t = sampling.temperature
    if not _is_number(t) or not math.isfinite(t) or t < 0:
        raise InvalidRequestError("sampling.temperature", f"must be a finite number >= 0 (0 = greedy), got {t!r}")
    if not _is_int(sampling.top_k) or sampling.top_k < 0:
        raise InvalidRequestError("sampling.top_k", f"must be an integer >= 0 (0 = off), got {sampling.top_k!r}")
    p = sampling.top_p
    if not _is_number(p) or not 0.0 <= p <= 1.0:
        raise InvalidRequestError("sampling.top_p", f"must be within [0, 1] (0 or 1 = off), got {p!r}")
    seed = sampling.seed
    if seed is not None and (not _is_int(seed) or not 0 <= seed < _MAX_SEED):
        raise InvalidRequestError("sampling.seed", f"must be an integer in [0, 2**64) or None, got {seed!r}")
    if not isinstance(sampling.stop, (list, tuple)):
        raise InvalidRequestError("sampling.stop", f"must be a list of strings, got {type(sampling.stop).__name__}")
    for index, stop in enumerate(sampling.stop):
        if not isinstance(stop, str) or not stop:
            raise InvalidRequestError("sampling.stop", f"entry {index} must be a non-empty string, got {stop!r}")
    if sampling.stop and tokenizer is None:
        raise InvalidRequestError("sampling.stop", "stop strings need a tokenizer, and this engine has none")
    if not isinstance(sampling.stop_token_ids, (list, tuple)):
        raise InvalidRequestError("sampling.stop_token_ids", "must be a list of token ids")
    _check_ids("sampling.stop_token_ids", sampling.stop_token_ids, limits.vocab_size)
    if not isinstance(sampling.ignore_eos, bool):
        raise InvalidRequestError("sampling.ignore_eos", f"must be a bool, got {sampling.ignore_eos!r}")
    check_count("sampling.logprobs", sampling.logprobs)
    check_count("sampling.prompt_logprobs", sampling.prompt_logprobs)
    if (sampling.logprobs is not None or sampling.prompt_logprobs is not None) and not limits.logprobs:
        raise InvalidRequestError("sampling.logprobs", "this engine's model runner does not compute logprobs")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
