"""The client's plain data: sampling parameters in, chunks / completions / cluster status out.

Each result type converts from its protobuf message with ``from_proto``; ``SamplingParams``
validates user input once (a typed ``InvalidRequest`` naming the field) and builds the
``GenerateRequest``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

from ttdist.client.errors import InvalidRequest
from ttdist.client.kv_tiers import KvTier, KvTiers
from ttdist.v1 import generation_pb2 as pb

_INT32_MAX = 2**31 - 1
MAX_LOGPROBS = 20
_UINT64_MAX = 2**64 - 1

FINISH_REASONS = {
    pb.FINISH_REASON_UNSPECIFIED: "unspecified",
    pb.STOP: "stop",
    pb.LENGTH: "length",
    pb.EOS: "eos",
    pb.ABORT: "abort",
}


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer, got {value!r}", field=name)
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be in [{low}, {high}], got {value}", field=name)
    return value


def _check_float(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidRequest(f"{name} must be a number, got {value!r}", field=name)
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be in [{low:g}, {high:g}], got {value:g}", field=name)
    return float(value)


def _check_token_ids(name: str, ids) -> tuple[int, ...]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise InvalidRequest(f"{name} must be a list of integers, got {type(ids).__name__}", field=name)
    return tuple(_check_int(f"{name}[{i}]", t, 0, _INT32_MAX) for i, t in enumerate(ids))


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. Left as None, temperature, top_k, top_p and repetition_penalty take the served
    model's generation_config.json defaults, else greedy decoding with every filter off; the
    penalties and biases default to off (``ttdist.mesh.penalties`` says how they apply)."""

    max_tokens: int | None = None          # None = the server's default
    temperature: float | None = None       # 0 = greedy
    top_k: int | None = None               # 0 = off
    top_p: float | None = None             # 1 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None            # per generated token: its logprob and the top N (0..20)
    prompt_logprobs: int | None = None     # per prompt token after the first: the same (0..20)
    repetition_penalty: float | None = None   # > 0, 1 = off (Hugging Face's: prompt + output tokens)
    presence_penalty: float = 0.0             # [-2, 2] (OpenAI's: output tokens)
    frequency_penalty: float = 0.0            # [-2, 2]
    logit_bias: dict[int, float] = field(default_factory=dict)   # token id -> bias in [-100, 100]
    min_p: float = 0.0                        # [0, 1]
    min_tokens: int = 0                       # EOS and stop token ids cannot end the output before this many
    bad_words: tuple[str, ...] = ()           # vLLM's: words the output may not contain
    # structured output (at most one): the text follows a JSON schema (a dict or its JSON text), is any
    # JSON object, matches a regex, is one of the choices, or follows a Lark grammar
    json_schema: dict | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] = ()
    grammar: str | None = None

    def __post_init__(self):
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, 0, _INT32_MAX)
        if self.temperature is not None:
            _check_float("temperature", self.temperature, 0.0, math.inf)
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 0, _INT32_MAX)
        if self.top_p is not None:
            _check_float("top_p", self.top_p, 0.0, 1.0)
        self._check_penalties()
        if self.seed is not None:
            _check_int("seed", self.seed, 0, _UINT64_MAX)
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not all(isinstance(s, str) and s for s in stop):
            raise InvalidRequest(f"stop must be a list of non-empty strings, got {self.stop!r}", field="stop")
        object.__setattr__(self, "stop", tuple(stop))
        object.__setattr__(self, "stop_token_ids", _check_token_ids("stop_token_ids", self.stop_token_ids))
        if not isinstance(self.ignore_eos, bool):
            raise InvalidRequest(f"ignore_eos must be true or false, got {self.ignore_eos!r}", field="ignore_eos")
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0, MAX_LOGPROBS)
        object.__setattr__(self, "choice", tuple(self.choice))
        words = (self.bad_words,) if isinstance(self.bad_words, str) else tuple(self.bad_words)
        if not all(isinstance(w, str) and w.strip() for w in words):
            raise InvalidRequest(f"bad_words must be non-blank strings, got {self.bad_words!r}", field="bad_words")
        object.__setattr__(self, "bad_words", words)
        set_ = [name for name in ("json_schema", "json_object", "regex", "choice", "grammar") if getattr(self, name)]
        if len(set_) > 1:
            raise InvalidRequest(f"give one output constraint, not {' and '.join(set_)}", field=set_[1])
        if self.choice and not all(isinstance(c, str) and c for c in self.choice):
            raise InvalidRequest(f"choice must be non-empty strings, got {self.choice!r}", field="choice")
        if isinstance(self.json_schema, dict):
            object.__setattr__(self, "json_schema", json.dumps(self.json_schema))

    def _check_penalties(self) -> None:
        if self.repetition_penalty is not None:
            _check_float("repetition_penalty", self.repetition_penalty, 0.0, math.inf)
            if not 0 < self.repetition_penalty < math.inf:
                raise InvalidRequest(f"repetition_penalty must be > 0, got {self.repetition_penalty}", field="repetition_penalty")
        _check_float("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_float("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_float("min_p", self.min_p, 0.0, 1.0)
        _check_int("min_tokens", self.min_tokens, 0, _INT32_MAX)
        if not isinstance(self.logit_bias, dict):
            raise InvalidRequest(f"logit_bias must map token ids to biases, got {self.logit_bias!r}", field="logit_bias")
        for token, bias in self.logit_bias.items():
            _check_int("logit_bias", token, 0, _INT32_MAX)
            _check_float("logit_bias", bias, -100.0, 100.0)

    def structured_output(self) -> pb.StructuredOutput | None:
        if self.json_schema:
            return pb.StructuredOutput(json_schema=self.json_schema)
        if self.json_object:
            return pb.StructuredOutput(json_object=True)
        if self.regex:
            return pb.StructuredOutput(regex=self.regex)
        if self.choice:
            return pb.StructuredOutput(choice=pb.Choices(options=list(self.choice)))
        if self.grammar:
            return pb.StructuredOutput(grammar=self.grammar)
        return None

    def to_proto(self) -> pb.SamplingParams:
        msg = pb.SamplingParams(
            max_tokens=self.max_tokens or 0, stop=list(self.stop),
            stop_token_ids=list(self.stop_token_ids), ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            logit_bias=self.logit_bias, min_p=self.min_p, min_tokens=self.min_tokens, bad_words=list(self.bad_words),
        )
        for name in ("temperature", "top_k", "top_p", "repetition_penalty", "seed", "logprobs", "prompt_logprobs"):
            if (value := getattr(self, name)) is not None:
                setattr(msg, name, value)
        constraint = self.structured_output()
        if constraint is not None:
            msg.structured_output.CopyFrom(constraint)
        return msg


def build_request(
    prompt: str | Sequence[int] | None, token_ids: Sequence[int] | None, sampling: SamplingParams,
    *, request_id: str, model: str | None, stream: bool,
) -> pb.GenerateRequest:
    """The GenerateRequest for a text prompt or a list of token ids (exactly one of them)."""
    if prompt is not None and token_ids is not None:
        raise InvalidRequest("give either a prompt or token_ids, not both", field="prompt")
    if prompt is None and token_ids is None:
        raise InvalidRequest("a prompt (text or token ids) is required", field="prompt")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest(f"model must be a string, got {model!r}", field="model")
    req = pb.GenerateRequest(request_id=request_id, model=model or "", sampling=sampling.to_proto(), stream=stream)
    if isinstance(prompt, str):
        req.text = prompt
    elif prompt is not None:
        req.token_ids.ids.extend(_check_token_ids("prompt", prompt))
    else:
        req.token_ids.ids.extend(_check_token_ids("token_ids", token_ids))
    return req


def build_chat(messages, add_generation_prompt: bool = True) -> pb.Chat:
    """The Chat input for a list of ``{"role": ..., "content": ...}`` dicts (or (role, content) pairs)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidRequest("messages must be a non-empty list of {'role': ..., 'content': ...}", field="messages")
    chat = pb.Chat(add_generation_prompt=add_generation_prompt)
    for i, m in enumerate(messages):
        role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else (
            tuple(m) if isinstance(m, (tuple, list)) and len(m) == 2 else (None, None))
        if not isinstance(role, str) or not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}] must have a string role and a string content, got {m!r}",
                                 field=f"messages[{i}]")
        chat.messages.add(role=role, content=content)
    return chat


@dataclass(frozen=True)
class TokenLogprob:
    """A token's natural-log probability and the most likely tokens of its position, best first,
    as (token id, logprob) pairs."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()

    @classmethod
    def from_proto(cls, msg: pb.TokenLogprob) -> TokenLogprob:
        return cls(msg.token_id, msg.logprob, tuple((t.token_id, t.logprob) for t in msg.top))


def _logprobs(messages) -> tuple[TokenLogprob, ...]:
    return tuple(TokenLogprob.from_proto(m) for m in messages)


@dataclass(frozen=True)
class Chunk:
    """Tokens that arrived together while streaming, and their text (and logprobs when asked:
    one per token; the prompt's on the first chunk)."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] = ()

    @classmethod
    def from_proto(cls, request_id: str, msg: pb.Chunk) -> Chunk:
        return cls(request_id, tuple(msg.token_ids), msg.text, _logprobs(msg.logprobs), _logprobs(msg.prompt_logprobs))


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True)
class Timings:
    """Server-side timings of one request, in seconds."""

    queue_s: float = 0.0
    ttft_s: float = 0.0
    mean_inter_token_s: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True)
class Completion:
    """A finished generation: every generated token and the full text, in both modes."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str                     # stop, length, eos, abort
    usage: Usage
    replica_id: str
    timings: Timings
    logprobs: tuple[TokenLogprob, ...] = ()          # one per token id, when asked
    prompt_logprobs: tuple[TokenLogprob, ...] = ()   # prompt tokens 2.. (the first has none), when asked

    @classmethod
    def from_proto(cls, request_id: str, msg: pb.Complete) -> Completion:
        t = msg.timings
        return cls(
            request_id=request_id, text=msg.text, token_ids=tuple(msg.output_ids),
            finish_reason=FINISH_REASONS.get(msg.finish_reason, "unspecified"),
            usage=Usage(msg.usage.prompt_tokens, msg.usage.completion_tokens, msg.usage.cached_tokens),
            replica_id=msg.replica_id,
            timings=Timings(t.queue_seconds, t.ttft_seconds, t.mean_inter_token_seconds, t.total_seconds),
            logprobs=_logprobs(msg.logprobs), prompt_logprobs=_logprobs(msg.prompt_logprobs),
        )

    def to_json(self) -> dict:
        out = asdict(self)
        out["token_ids"] = list(self.token_ids)
        return out


def generation_defaults(msg: pb.GenerationDefaults) -> dict:
    """The sampling defaults the server's model gives (only the fields it sets)."""
    return {name: getattr(msg, name) for name in ("temperature", "top_k", "top_p", "repetition_penalty") if msg.HasField(name)}


@dataclass(frozen=True)
class ModelInfo:
    id: str
    max_context: int
    vocab_size: int
    generation_defaults: dict = field(default_factory=dict)   # what a request leaving those fields out gets

    @classmethod
    def from_proto(cls, msg: pb.ModelInfo) -> ModelInfo:
        return cls(id=msg.id, max_context=msg.max_context, vocab_size=msg.vocab_size,
                   generation_defaults=generation_defaults(msg.generation_defaults))


@dataclass(frozen=True)
class ReplicaStatus:
    replica_id: str
    state: str                             # a ReplicaState value, or "failed (crash loop)"
    pid: int
    node_id: str
    mesh: str                              # "8x4"
    backend: str                           # sim | ttnn
    kv_pages_total: int
    kv_pages_free: int
    running: int
    waiting: int
    address: str
    tokens_per_second: float
    kv_pages_budget: int = 0               # pages the replica's DRAM ledger allows after its weights
    kv_pages_capped_by_host: bool = False  # a simulated cache in host RAM holds fewer pages
    dram_total_bytes: int = 0              # per chip, from the replica's ledger
    dram_weights_bytes: int = 0
    dram_kv_bytes: int = 0
    dram_other_bytes: int = 0
    kv_user_groups: int = 1                # KV user groups (a Galaxy's column groups); pages above are totals
    kv_pages_free_per_group: tuple[int, ...] = ()   # group g's free pages, by group id (() if not reported)
    model: str = ""                        # the served model whose pool it is in ("" from an older server)
    kv_tiers: KvTiers = field(default_factory=KvTiers)   # KV kept off the chips (host, node tiers)

    @classmethod
    def from_proto(cls, msg: pb.ReplicaStatus) -> ReplicaStatus:
        values = {f.name: getattr(msg, f.name) for f in fields(cls)}    # every field is the message's own
        values["kv_user_groups"] = msg.kv_user_groups or 1                 # 0: an older server
        values["kv_pages_free_per_group"] = tuple(msg.kv_pages_free_per_group)
        values["kv_tiers"] = KvTiers.from_proto(msg.kv_tiers)
        return cls(**values)


@dataclass(frozen=True)
class ScaleDecision:
    time: float        # unix seconds
    previous: int      # replicas before
    replicas: int      # replicas after
    reason: str


@dataclass(frozen=True)
class AutoscaleStatus:
    """One model's autoscaled replica pool: its bounds and signal, its size now, its last decisions."""

    min_replicas: int
    max_replicas: int
    signal: str
    target: float
    replicas: int
    scale_ups_total: int = 0
    scale_downs_total: int = 0
    decisions: tuple[ScaleDecision, ...] = ()
    model: str = ""                    # the served model whose pool it is

    @classmethod
    def from_proto(cls, msg: pb.AutoscaleStatus) -> AutoscaleStatus:
        values = {f.name: getattr(msg, f.name) for f in fields(cls)}
        values["decisions"] = tuple(ScaleDecision(d.time, d.previous, d.replicas, d.reason) for d in msg.decisions)
        return cls(**values)


@dataclass(frozen=True)
class ClusterStatus:
    model: str
    policy: str
    replicas: tuple[ReplicaStatus, ...] = field(default_factory=tuple)
    generation_defaults: dict = field(default_factory=dict)   # the model's sampling defaults
    models: tuple[ModelInfo, ...] = field(default_factory=tuple)   # every served model (``model``: the first)
    autoscale: tuple[AutoscaleStatus, ...] = ()               # one per autoscaled model (none: fixed counts)

    @classmethod
    def from_proto(cls, msg: pb.ClusterStatus) -> ClusterStatus:
        return cls(model=msg.model, policy=msg.policy,
                   replicas=tuple(ReplicaStatus.from_proto(r) for r in msg.replicas),
                   generation_defaults=generation_defaults(msg.generation_defaults),
                   models=tuple(ModelInfo.from_proto(m) for m in msg.models),
                   autoscale=tuple(AutoscaleStatus.from_proto(a) for a in msg.autoscale))

    def autoscale_of(self, model: str = "") -> AutoscaleStatus | None:
        """``model``'s autoscaled pool ("" = the default, first model's); None with a fixed count."""
        name = model or self.model
        return next((a for a in self.autoscale if a.model == name), None)

    def to_json(self) -> dict:
        return asdict(self)
