"""The public request checked field by field, and the status codes errors map to.

Both the router and every replica check a ``GenerateRequest`` here before any work is
done, so bad input gets the same typed answer wherever it lands: a ``RequestError`` that
carries the gRPC status code, the offending field and a message naming both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import grpc

from ttdist.engine.bad_words import MAX_BAD_WORDS, MAX_WORD_CHARS
from ttdist.runtime.generation_defaults import GenerationDefaults
from ttdist.tracing.tracer import MAX_TRACEPARENT_CHARS, MAX_TRACESTATE_CHARS
from ttdist.v1 import generation_pb2 as pb

MAX_LOGPROBS = 20   # top logprobs per token (ttdist.engine.logprobs.MAX_LOGPROBS)


@dataclass(frozen=True)
class ModelCard:
    """The served model as clients see it, and the limits requests are checked against."""

    model_id: str
    vocab_size: int
    max_context: int
    page_size: int = 32
    max_stop_strings: int = 16
    max_stop_string_chars: int = 256
    max_text_chars: int = 1 << 20
    max_request_id_chars: int = 256
    max_stop_token_ids: int = 256
    generation_defaults: GenerationDefaults = GenerationDefaults()   # from the checkpoint's generation_config.json
    max_logit_bias: int = 1024

    def to_proto(self) -> pb.ModelInfo:
        return pb.ModelInfo(id=self.model_id, max_context=self.max_context, vocab_size=self.vocab_size,
                            generation_defaults=self.generation_defaults.to_proto())


GRAMMAR_FIELD = "sampling.structured_output"
MAX_GRAMMAR_CHARS = 1 << 20


class RequestError(Exception):
    """A request the server refuses: the status code, the field and why."""

    def __init__(self, code: grpc.StatusCode, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.code = code
        self.field = field


def invalid(field: str, message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, field, message)


def check_request(req: pb.GenerateRequest, card: ModelCard) -> None:
    """Raise ``RequestError`` for the first bad field of ``req``; return None if it is fine."""
    if len(req.request_id) > card.max_request_id_chars:
        raise invalid("request_id", f"longer than {card.max_request_id_chars} characters")
    if req.model and req.model != card.model_id:
        raise RequestError(
            grpc.StatusCode.NOT_FOUND, "model", f"unknown model {req.model!r}; this server serves {card.model_id!r}"
        )
    if len(req.traceparent) > MAX_TRACEPARENT_CHARS:
        raise invalid("traceparent", f"longer than {MAX_TRACEPARENT_CHARS} characters")
    if len(req.tracestate) > MAX_TRACESTATE_CHARS:
        raise invalid("tracestate", f"longer than {MAX_TRACESTATE_CHARS} characters")
    _check_input(req, card)
    _check_sampling(req.sampling, card)
    _check_resume(req)


def _check_input(req: pb.GenerateRequest, card: ModelCard) -> None:
    kind = req.WhichOneof("input")
    if kind is None:
        raise invalid("input", "set either text or token_ids")
    if kind == "text":
        if not req.text:
            raise invalid("text", "the prompt is empty")
        if len(req.text) > card.max_text_chars:
            raise invalid("text", f"longer than {card.max_text_chars} characters")
        return
    ids = req.token_ids.ids
    if not ids:
        raise invalid("token_ids", "the prompt is empty")
    bad = next((t for t in ids if t < 0 or t >= card.vocab_size), None)
    if bad is not None:
        raise invalid("token_ids", f"token id {bad} is outside the vocabulary [0, {card.vocab_size})")
    check_prompt_length(len(ids), card)


def check_prompt_length(n_tokens: int, card: ModelCard) -> None:
    if n_tokens >= card.max_context:
        raise invalid(
            "input", f"the prompt has {n_tokens} tokens; the context window is {card.max_context} (prompt must be shorter)"
        )


def _check_sampling(s: pb.SamplingParams, card: ModelCard) -> None:
    if not math.isfinite(s.temperature) or s.temperature < 0:
        raise invalid("sampling.temperature", f"must be a finite number >= 0, got {s.temperature}")
    if s.top_k < 0:
        raise invalid("sampling.top_k", f"must be >= 0 (0 = off), got {s.top_k}")
    if not math.isfinite(s.top_p) or s.top_p < 0 or s.top_p > 1:
        raise invalid("sampling.top_p", f"must be in [0, 1] (0 or 1 = off), got {s.top_p}")
    if s.max_tokens < 0:
        raise invalid("sampling.max_tokens", f"must be >= 0 (0 = server default), got {s.max_tokens}")
    if s.max_tokens >= card.max_context:
        raise invalid("sampling.max_tokens", f"{s.max_tokens} does not fit the context window of {card.max_context}")
    if len(s.stop) > card.max_stop_strings:
        raise invalid("sampling.stop", f"at most {card.max_stop_strings} stop strings, got {len(s.stop)}")
    for stop in s.stop:
        if not stop:
            raise invalid("sampling.stop", "stop strings must not be empty")
        if len(stop) > card.max_stop_string_chars:
            raise invalid("sampling.stop", f"a stop string is longer than {card.max_stop_string_chars} characters")
    if len(s.stop_token_ids) > card.max_stop_token_ids:
        raise invalid("sampling.stop_token_ids", f"at most {card.max_stop_token_ids} ids, got {len(s.stop_token_ids)}")
    bad = next((t for t in s.stop_token_ids if t < 0 or t >= card.vocab_size), None)
    if bad is not None:
        raise invalid("sampling.stop_token_ids", f"token id {bad} is outside the vocabulary [0, {card.vocab_size})")
    _check_logprobs(s)
    _check_penalties(s, card)
    _check_structured_output(s)
    _check_bad_words(s)


def _check_logprobs(s: pb.SamplingParams) -> None:
    for name in ("logprobs", "prompt_logprobs"):
        if s.HasField(name) and not 0 <= getattr(s, name) <= MAX_LOGPROBS:
            raise invalid(f"sampling.{name}", f"must be in [0, {MAX_LOGPROBS}] (unset = none), got {getattr(s, name)}")


def _check_penalties(s: pb.SamplingParams, card: ModelCard) -> None:
    """OpenAI's ranges for its penalties and biases; repetition_penalty > 0 (1 = off)."""
    if s.HasField("repetition_penalty") and not (math.isfinite(s.repetition_penalty) and s.repetition_penalty > 0):
        raise invalid("sampling.repetition_penalty", f"must be a finite number > 0 (1 = off), got {s.repetition_penalty}")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(s, name)
        if not (math.isfinite(value) and -2 <= value <= 2):
            raise invalid(f"sampling.{name}", f"must be in [-2, 2] (0 = off), got {value}")
    if not (math.isfinite(s.min_p) and 0 <= s.min_p <= 1):
        raise invalid("sampling.min_p", f"must be in [0, 1] (0 = off), got {s.min_p}")
    if s.min_tokens < 0 or (s.max_tokens and s.min_tokens > s.max_tokens):
        raise invalid("sampling.min_tokens", f"must be in [0, max_tokens], got {s.min_tokens}")
    if len(s.logit_bias) > card.max_logit_bias:
        raise invalid("sampling.logit_bias", f"at most {card.max_logit_bias} entries, got {len(s.logit_bias)}")
    for token, bias in s.logit_bias.items():
        if not 0 <= token < card.vocab_size:
            raise invalid("sampling.logit_bias", f"token id {token} is outside the vocabulary [0, {card.vocab_size})")
        if not (math.isfinite(bias) and -100 <= bias <= 100):
            raise invalid("sampling.logit_bias", f"the bias of token {token} must be in [-100, 100], got {bias}")


def _check_bad_words(s: pb.SamplingParams) -> None:
    if len(s.bad_words) > MAX_BAD_WORDS:
        raise invalid("sampling.bad_words", f"at most {MAX_BAD_WORDS} words, got {len(s.bad_words)}")
    for word in s.bad_words:
        if not word.strip() or len(word) > MAX_WORD_CHARS:
            raise invalid("sampling.bad_words", f"each word must be a non-blank string of at most {MAX_WORD_CHARS} "
                                                f"characters, got {word[:40]!r}")


def _check_structured_output(s: pb.SamplingParams) -> None:
    if not s.HasField("structured_output"):
        return
    spec = s.structured_output
    kind = spec.WhichOneof("kind")
    if kind is None:
        raise invalid(GRAMMAR_FIELD, "set one of json_schema, json_object, regex, choice or grammar")
    if kind == "json_object":
        if not spec.json_object:
            raise invalid(f"{GRAMMAR_FIELD}.json_object", "must be true when set")
        return
    if kind == "choice":
        options = list(spec.choice.options)
        if not options or not all(options):
            raise invalid(f"{GRAMMAR_FIELD}.choice", "give at least one option, none of them empty")
        text = "".join(options)
    else:
        text = getattr(spec, kind)
        if not text:
            raise invalid(f"{GRAMMAR_FIELD}.{kind}", "is empty")
    if len(text) > MAX_GRAMMAR_CHARS:
        raise invalid(f"{GRAMMAR_FIELD}.{kind}", f"longer than {MAX_GRAMMAR_CHARS} characters")
    if kind == "json_schema":
        try:
            json.loads(spec.json_schema)
        except ValueError as err:
            raise invalid(f"{GRAMMAR_FIELD}.json_schema", f"not JSON: {err}") from None


def _check_resume(req: pb.GenerateRequest) -> None:
    if not req.HasField("resume"):
        return
    n, emitted = req.resume.generated_tokens, req.resume.emitted_chars
    if req.WhichOneof("input") != "token_ids":
        raise invalid("resume", "a resumed generation gives its prompt and generated ids as token_ids")
    if not 0 <= n < len(req.token_ids.ids):
        raise invalid("resume.generated_tokens", f"must be in [0, {len(req.token_ids.ids)}) (the ids given), got {n}")
    if req.sampling.max_tokens and n >= req.sampling.max_tokens:
        raise invalid("resume.generated_tokens", f"{n} generated tokens already reach max_tokens={req.sampling.max_tokens}")
    if emitted < 0:
        raise invalid("resume.emitted_chars", f"must be >= 0, got {emitted}")


def check_abort(req: pb.AbortRequest) -> None:
    if not req.request_id:
        raise invalid("request_id", "name the request to abort")
    if len(req.request_id) > ModelCard.max_request_id_chars:
        raise invalid("request_id", f"longer than {ModelCard.max_request_id_chars} characters")


async def abort_with(context: grpc.aio.ServicerContext, err: RequestError) -> None:
    """End the RPC with ``err``'s status code and message."""
    await context.abort(err.code, str(err))
