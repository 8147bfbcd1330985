"""What the sync and asyncio clients share about one call: its request, deadline and retries,
and the assembly of the response stream into chunks and a final completion.

The two clients differ only in how they wait (blocking vs ``await``); every decision is made
here, so both behave the same.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from ttdist.client.errors import Cancelled, DeadlineExceeded, InvalidRequest, ServerError, TtdistError, Unavailable
from ttdist.client.options import ClientConfig, RetryPolicy, TLSConfig, check_timeout
from ttdist.client.types import Chunk, Completion, SamplingParams, build_chat, build_request
from ttdist.v1 import generation_pb2 as pb

_SAMPLING_FIELDS = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "stop_token_ids", "ignore_eos",
                    "logprobs", "prompt_logprobs",
                    "repetition_penalty", "presence_penalty", "frequency_penalty", "logit_bias", "min_p", "min_tokens",
                    "bad_words", "json_schema", "json_object", "regex", "choice", "grammar")


USE_CLIENT_TIMEOUT = object()  # the default of every ``timeout=`` keyword: the client's own timeout


def resolve_timeout(config: ClientConfig, timeout) -> float | None:
    return config.timeout if timeout is USE_CLIENT_TIMEOUT else check_timeout(timeout)


class GenerateOptions(TypedDict, total=False):
    """Keyword arguments of ``generate`` / ``stream`` / ``generate_batch``.

    token_ids: the prompt as token ids (instead of text).
    max_tokens: most tokens to generate (None = the server's default).
    temperature: 0 = greedy. top_k: 0 = off. top_p: 1 = off. seed: for reproducible sampling. Left
    out, temperature, top_k, top_p and repetition_penalty take the model's generation_config.json
    defaults (else greedy / off).
    repetition_penalty (> 0, 1 = off), presence_penalty and frequency_penalty ([-2, 2]), logit_bias
    ({token id: bias in [-100, 100]}), min_p ([0, 1]), min_tokens (EOS and stop ids wait for them),
    bad_words (vLLM's: words the output may not contain).
    stop: strings that end the generation. stop_token_ids: token ids that end it.
    ignore_eos: keep generating past the end-of-sequence token.
    logprobs: per generated token its logprob and the top N (0..20); prompt_logprobs: the same per
    prompt token (``Completion.logprobs`` / ``prompt_logprobs``, and on each ``Chunk``).
    json_schema / json_object / regex / choice / grammar: the output follows a JSON schema (dict or
    JSON text), is a JSON object, matches a regex, is one of the choices, or follows a Lark grammar.
    model: the model id (None = the served model). request_id: your own id (default: a uuid).
    timeout: deadline for the whole call in seconds (default: the client's; None = none).
    """

    token_ids: Sequence[int]
    max_tokens: int | None
    temperature: float
    top_k: int
    top_p: float
    seed: int | None
    stop: Sequence[str] | str
    stop_token_ids: Sequence[int]
    ignore_eos: bool
    logprobs: int | None
    prompt_logprobs: int | None
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[int, float]
    min_p: float
    min_tokens: int
    bad_words: Sequence[str]
    json_schema: dict | str | None
    json_object: bool
    regex: str | None
    choice: Sequence[str]
    grammar: str | None
    model: str | None
    request_id: str | None
    timeout: float | None


@dataclass(frozen=True)
class PreparedCall:
    request: pb.GenerateRequest
    timeout: float | None


def prepare_generate(config: ClientConfig, prompt, options: dict, *, stream: bool) -> PreparedCall:
    """Validate the caller's arguments once and build the request (typed errors name the field)."""
    known = set(_SAMPLING_FIELDS) | {"token_ids", "model", "request_id", "timeout"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidRequest(f"unknown parameter {unknown[0]!r}; known: {', '.join(sorted(known))}",
                             field=unknown[0])
    sampling = SamplingParams(**{k: options[k] for k in _SAMPLING_FIELDS if options.get(k) is not None})
    request_id = options.get("request_id") or uuid.uuid4().hex
    if not isinstance(request_id, str):
        raise InvalidRequest(f"request_id must be a string, got {request_id!r}", field="request_id")
    request = build_request(prompt, options.get("token_ids"), sampling, request_id=request_id,
                            model=options.get("model"), stream=stream)
    timeout = resolve_timeout(config, options.get("timeout", USE_CLIENT_TIMEOUT))
    return PreparedCall(request=request, timeout=timeout)


def prepare_chat(config: ClientConfig, messages, options: dict, *, stream: bool) -> PreparedCall:
    """Like ``prepare_generate`` for a conversation: the router renders ``messages`` with the
    model's chat template (``add_generation_prompt`` keyword, default True)."""
    options = dict(options)
    add = options.pop("add_generation_prompt", True)
    if not isinstance(add, bool):
        raise InvalidRequest(f"add_generation_prompt must be a boolean, got {add!r}", field="add_generation_prompt")
    if options.get("token_ids") is not None:
        raise InvalidRequest("a chat takes messages, not token_ids", field="token_ids")
    prepared = prepare_generate(config, "", options, stream=stream)
    prepared.request.chat.CopyFrom(build_chat(messages, add))
    return prepared


class Attempts:
    """Deadline and retry bookkeeping for one logical call (all its attempts together)."""

    def __init__(self, policy: RetryPolicy, timeout: float | None, rng: random.Random | None = None):
        self.policy = policy
        self.timeout = timeout
        self.started_at = time.monotonic()
        self.deadline = None if timeout is None else self.started_at + timeout
        self.attempt = 0
        self._rng = rng

    def start(self) -> float | None:
        """Begin the next attempt; the seconds it may take (None = no deadline)."""
        self.attempt += 1
        if self.deadline is None:
            return None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline of {self.timeout:g} s exceeded")
        return remaining

    def retry_delay(self, err: TtdistError) -> float:
        """Seconds to wait before retrying after ``err``, or raise when it must not be retried."""
        if isinstance(err, DeadlineExceeded) and self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded(f"deadline of {self.timeout:g} s exceeded ({err.message})",
                                   request_id=err.request_id) from None
        if not isinstance(err, Unavailable):
            raise err
        policy = self.policy
        if policy.max_attempts is not None and self.attempt >= policy.max_attempts:
            raise Unavailable(f"{err.message} (gave up after {self.attempt} attempts)",
                              request_id=err.request_id, code=err.code) from None
        delay = policy.backoff_s(self.attempt, self._rng)
        elapsed = time.monotonic() - self.started_at
        if policy.max_wait_s is not None and elapsed + delay > policy.max_wait_s:
            raise Unavailable(f"{err.message} (gave up after {elapsed:.1f} s, {self.attempt} attempts)",
                              request_id=err.request_id, code=err.code) from None
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            raise DeadlineExceeded(f"deadline of {self.timeout:g} s exceeded while retrying: {err.message}",
                                   request_id=err.request_id) from None
        return delay


class ReadyWait:
    """The polling schedule of ``wait_ready``: health checks with growing pauses until a deadline."""

    def __init__(self, config: ClientConfig, timeout: float):
        self.target = config.target
        self.timeout = check_timeout(timeout)
        self.deadline = time.monotonic() + self.timeout
        self.delay = config.retry.initial_backoff_s
        self.max_delay = config.retry.max_backoff_s
        self.last = "no answer"

    def remaining(self) -> float | None:
        """Seconds left for the next health check, or None once the deadline has passed."""
        left = self.deadline - time.monotonic()
        return max(left, 0.05) if left > 0 else None

    def pause(self) -> float:
        pause = min(self.delay, max(0.0, self.deadline - time.monotonic()))
        self.delay = min(self.delay * 2, self.max_delay)
        return pause

    def expired(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"{self.target} not ready after {self.timeout:g} s (last: {self.last})")


class StreamState:
    """Turns GenerateResponse messages into Chunks and the final Completion."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.received = 0
        self.completion: Completion | None = None

    @property
    def started(self) -> bool:
        """True once anything arrived: from then on the router, not the client, owns recovery."""
        return self.received > 0

    def on_response(self, resp: pb.GenerateResponse) -> Chunk | None:
        self.received += 1
        if resp.request_id:
            self.request_id = resp.request_id
        kind = resp.WhichOneof("kind")
        if kind == "chunk":
            return Chunk.from_proto(self.request_id, resp.chunk)
        if kind == "complete":
            self.completion = Completion.from_proto(self.request_id, resp.complete)
            return None
        raise ServerError("the server sent a response with neither a chunk nor a completion",
                          request_id=self.request_id)

    def on_end(self) -> Completion:
        if self.completion is None:
            raise ServerError("the stream ended without a completion", request_id=self.request_id)
        return self.completion


class StreamBase:
    """State and decisions of one streaming call; the sync and asyncio streams add only the I/O."""

    def __init__(self, stub, prepared: PreparedCall, config: ClientConfig):
        self._stub = stub
        self._request = prepared.request
        self._metadata = config.metadata()
        self._attempts = Attempts(config.retry, prepared.timeout)
        self._state = StreamState(prepared.request.request_id)
        self._call = None
        self._done = False
        self._closed = False

    @property
    def request_id(self) -> str:
        return self._state.request_id

    @property
    def completion(self) -> Completion | None:
        """The final Completion, once the stream has been read to its end (else None)."""
        return self._state.completion

    def _start_call(self):
        """The gRPC call of the next attempt, with the time left before the deadline."""
        self._call = self._stub.Generate(self._request, timeout=self._attempts.start(), metadata=self._metadata)
        return self._call

    def _retry_delay(self, err: TtdistError) -> float:
        """Seconds to wait before the next attempt; raises once tokens arrived or retries are spent."""
        self._call = None
        try:
            if self._state.started:
                raise err
            return self._attempts.retry_delay(err)
        except TtdistError:
            self._done = True
            raise

    def _end(self) -> None:
        if not self._closed:
            self._state.on_end()

    def _final(self) -> Completion:
        if self._closed and self._state.completion is None:
            raise Cancelled("the stream was closed before it finished", request_id=self.request_id)
        return self._state.on_end()

    def _cancel(self) -> None:
        if self._call is not None and not self._done:
            self._call.cancel()
        self._done = True
        self._closed = True

    def __del__(self):
        if not getattr(self, "_done", True):
            self._cancel()


class ClientBase:
    """What ``Client`` and ``AsyncClient`` share: the config, and how a generation or a chat
    becomes a stream of ``stream_type`` on the Generation stub that ``_open`` gives."""

    stream_type: type[StreamBase]

    def __init__(self, target: str, *, token: str | None, tls: bool | TLSConfig | None, timeout: float | None,
                 retry: RetryPolicy | None):
        self.config = ClientConfig.build(target, token=token, tls=tls, timeout=timeout, retry=retry)

    def _open(self) -> tuple:
        """The Generation and Health stubs of the client's channel."""
        raise NotImplementedError

    def _attempts(self, timeout) -> Attempts:
        """Deadline and retries of one unary call; ``timeout`` as the caller gave it."""
        return Attempts(self.config.retry, resolve_timeout(self.config, timeout))

    def _generation(self, prompt, options: dict, *, stream: bool):
        prepared = prepare_generate(self.config, prompt, options, stream=stream)
        return self.stream_type(self._open()[0], prepared, self.config)

    def _chat(self, messages, options: dict, *, stream: bool):
        prepared = prepare_chat(self.config, messages, options, stream=stream)
        return self.stream_type(self._open()[0], prepared, self.config)


def check_batch(prompts, concurrency: int, options: dict) -> list:
    """Validate a batch call's own arguments; the prompts as a list."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise InvalidRequest("prompts must be a list of prompts (text or token id lists)", field="prompts")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidRequest(f"concurrency must be an integer >= 1, got {concurrency!r}", field="concurrency")
    for name in ("request_id", "token_ids"):
        if options.get(name) is not None:
            raise InvalidRequest(f"{name} cannot be shared by a batch; pass prompts instead", field=name)
    return list(prompts)
