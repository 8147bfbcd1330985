"""OpenAI request bodies checked field by field, and the response objects built from results.

``parse_completion`` and ``parse_chat`` turn a JSON body into a ``ParsedRequest`` (or raise
``ApiError`` naming the bad field); the ``*_object`` / ``*_chunk`` functions build the JSON
the OpenAI API returns. Fields the replicas cannot honour are refused with a 400 that says
so (``suffix``). Logprobs (``logprobs`` / ``top_logprobs``, ``echo`` and vLLM's
``prompt_logprobs``) are computed on the mesh (``ttdist.router.openai.logprobs`` shapes them).
``presence_penalty``, ``frequency_penalty`` and ``logit_bias`` are applied on the mesh, and vLLM's
extensions ``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``, ``ignore_eos`` and
``stop_token_ids`` are accepted, and ``bad_words`` (``ttdist.engine.bad_words``). ``temperature``, ``top_p``, ``top_k`` and ``repetition_penalty``
left out take the model's generation_config.json defaults (the router fills them in), else
OpenAI's (temperature 1).
Structured outputs (``ttdist.router.openai.structured``) and tool calls
(``ttdist.router.openai.tools``) are parsed in their own modules.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace

from ttdist.engine.bad_words import MAX_BAD_WORDS
from ttdist.router.openai.errors import bad_param, unsupported
from ttdist.router.openai.structured import parse_structured_output
from ttdist.router.openai.tools import ToolUse, parse_calls, parse_tool_use, template_message
from ttdist.v1 import generation_pb2 as pb

MAX_N = 64
MAX_SEED = 2**63
COMPLETIONS_DEFAULT_MAX_TOKENS = 16      # OpenAI's default for /v1/completions
FINISH = {pb.STOP: "stop", pb.EOS: "stop", pb.LENGTH: "length", pb.ABORT: "abort"}
MAX_LOGPROBS = 20
DEFAULT_TEMPERATURE = 1.0                # OpenAI's, for a request and a model that give none


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 0                  # 0 = the server's default
    temperature: float | None = None     # None (left out): the model's default, else 1.0
    top_p: float | None = None           # None: the model's default, else off
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None          # top N per generated token (None: no logprobs)
    prompt_logprobs: int | None = None   # top N per prompt token (echo with logprobs, or vLLM's field)
    repetition_penalty: float | None = None   # None: the model's default, else off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_p: float = 0.0
    min_tokens: int = 0
    structured_output: pb.StructuredOutput | None = None   # the output's grammar (None: free text)
    bad_words: tuple[str, ...] = ()      # vLLM's: words the output may not contain

    def to_proto(self, choice: int, default_temperature: float = DEFAULT_TEMPERATURE) -> pb.SamplingParams:
        """Choice ``i`` of ``n`` draws from seed + i, so seeded choices differ and repeat. Fields left
        out stay unset for the router to fill from the model's defaults; a temperature nobody gives
        is ``default_temperature``."""
        s = pb.SamplingParams(
            temperature=default_temperature if self.temperature is None else self.temperature,
            max_tokens=self.max_tokens, stop=self.stop, stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            logit_bias=dict(self.logit_bias), min_p=self.min_p, min_tokens=self.min_tokens, bad_words=self.bad_words,
        )
        for name in ("top_p", "top_k", "repetition_penalty"):
            if (value := getattr(self, name)) is not None:
                setattr(s, name, value)
        if self.seed is not None:
            s.seed = (self.seed + choice) % MAX_SEED
        if self.logprobs is not None:
            s.logprobs = self.logprobs
        if self.prompt_logprobs is not None:
            s.prompt_logprobs = self.prompt_logprobs
        if self.structured_output is not None:
            s.structured_output.CopyFrom(self.structured_output)
        return s


@dataclass(frozen=True)
class ParsedRequest:
    kind: str                                   # "completion" or "chat"
    model: str
    prompts: tuple = ()                         # completions: str or tuple of ids, one per prompt
    messages: tuple = ()                        # chat: the conversation
    sampling: Sampling = field(default_factory=Sampling)
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    add_generation_prompt: bool = True
    echo: bool = False                          # completions: the prompt's text (and logprobs) first
    tool_use: ToolUse = field(default_factory=ToolUse)


def _get(body: dict, name: str, kinds, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds:
        raise bad_param(name, f"must be {_kind_names(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise bad_param(name, f"must be {_kind_names(kinds)}, got {type(value).__name__}")
    return value


def _kind_names(kinds) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array", dict: "an object"}
    return " or ".join(names[k] for k in kinds if k in names)


def _number(body, name, lo, hi, default):
    value = _get(body, name, (int, float), default)
    if value is None:
        return None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise bad_param(name, f"must be between {lo} and {hi}, got {value}")
    return float(value)


def _logit_bias(body: dict) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``logit_bias``: token ids (JSON keys, so strings of digits) to biases in [-100, 100]."""
    raw = _get(body, "logit_bias", dict, {})
    out = []
    for key, bias in raw.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise bad_param("logit_bias", f"keys must be token ids, got {key!r}") from None
        if token < 0:
            raise bad_param("logit_bias", f"token id {token} is negative")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias) or not -100 <= bias <= 100:
            raise bad_param("logit_bias", f"the bias of token {token} must be between -100 and 100, got {bias!r}")
        out.append((token, float(bias)))
    return tuple(out)


def _penalties(body: dict) -> dict:
    repetition = _get(body, "repetition_penalty", (int, float))
    if repetition is not None and not (math.isfinite(repetition) and repetition > 0):
        raise bad_param("repetition_penalty", f"must be a number > 0 (1 = off), got {repetition}")
    return {"repetition_penalty": None if repetition is None else float(repetition),
            "presence_penalty": _number(body, "presence_penalty", -2, 2, 0.0),
            "frequency_penalty": _number(body, "frequency_penalty", -2, 2, 0.0),
            "logit_bias": _logit_bias(body), "min_p": _number(body, "min_p", 0, 1, 0.0),
            "min_tokens": _count(body, "min_tokens", 0, 2**31 - 1, 0)}


def _count(body, name, lo, hi, default):
    value = _get(body, name, int, default)
    if not lo <= value <= hi:
        raise bad_param(name, f"must be between {lo} and {hi}, got {value}")
    return value


def _sampling(body: dict, max_tokens_field: str | None, default_max_tokens: int) -> Sampling:
    if max_tokens_field is not None:
        max_tokens = _count(body, max_tokens_field, 1, 2**31 - 1, default_max_tokens or 1)
    else:
        max_tokens = default_max_tokens
    stop = _get(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) and s for s in stop):
        raise bad_param("stop", "must be a string or an array of non-empty strings")
    stop_ids = _get(body, "stop_token_ids", list, [])
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in stop_ids):
        raise bad_param("stop_token_ids", "must be an array of token ids")
    seed = _get(body, "seed", int)
    if seed is not None and not 0 <= seed < MAX_SEED:
        raise bad_param("seed", f"must be in [0, 2**63), got {seed}")
    top_k = _get(body, "top_k", int)
    if top_k is not None and not -1 <= top_k <= 2**31 - 1:
        raise bad_param("top_k", f"must be between -1 and {2**31 - 1}, got {top_k}")
    return Sampling(
        max_tokens=max_tokens, temperature=_number(body, "temperature", 0, 2, None),
        top_p=_number(body, "top_p", 0, 1, None), top_k=None if top_k is None else max(0, top_k),
        seed=seed, stop=tuple(stop), stop_token_ids=tuple(stop_ids),
        ignore_eos=_get(body, "ignore_eos", bool, False), **_penalties(body),
        structured_output=parse_structured_output(body), bad_words=_bad_words(body),
    )


def _bad_words(body: dict) -> tuple[str, ...]:
    words = _get(body, "bad_words", list, [])
    if len(words) > MAX_BAD_WORDS or not all(isinstance(w, str) and w.strip() for w in words):
        raise bad_param("bad_words", f"must be an array of at most {MAX_BAD_WORDS} non-blank strings")
    return tuple(words)


def _common(body: dict) -> dict:
    _get(body, "user", str)
    n = _count(body, "n", 1, MAX_N, 1)
    best_of = _get(body, "best_of", int)
    if best_of is not None and best_of != n:
        raise unsupported("best_of", "only best_of == n (no server-side ranking without logprobs)")
    stream = _get(body, "stream", bool, False)
    options = _get(body, "stream_options", dict, {})
    if options and not stream:
        raise bad_param("stream_options", "is only allowed with stream: true")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_param("stream_options.include_usage", "must be a boolean")
    return {"model": _get(body, "model", str, ""), "n": n, "stream": stream, "include_usage": include_usage}


def parse_completion(body: dict) -> ParsedRequest:
    """A ``/v1/completions`` body: ``prompt`` is a string, an array of strings, an array of
    token ids or an array of token-id arrays (one choice set per prompt)."""
    if "prompt" not in body or body["prompt"] is None:
        raise bad_param("prompt", "is required", "missing_required_parameter")
    logprobs = _logprob_count(body, "logprobs")
    echo = _get(body, "echo", bool, False)
    if _get(body, "suffix", str):
        raise unsupported("suffix", "the served models have no fill-in-the-middle mode")
    common = _common(body)
    prompt_logprobs = _logprob_count(body, "prompt_logprobs")
    if echo and logprobs is not None:
        prompt_logprobs = max(logprobs, prompt_logprobs or 0)
    sampling = replace(_sampling(body, "max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS), logprobs=logprobs,
                       prompt_logprobs=prompt_logprobs)
    return ParsedRequest(kind="completion", prompts=_prompts(body["prompt"]), sampling=sampling, echo=echo, **common)


def _logprob_count(body: dict, name: str) -> int | None:
    value = _get(body, name, int)
    if value is not None and not 0 <= value <= MAX_LOGPROBS:
        raise bad_param(name, f"must be between 0 and {MAX_LOGPROBS}, got {value}")
    return value


def _chat_logprobs(body: dict) -> int | None:
    """Chat's ``logprobs: true`` with ``top_logprobs: N`` (0 when left out): N; None without logprobs."""
    top = _logprob_count(body, "top_logprobs")
    if not _get(body, "logprobs", bool, False):
        if top is not None:
            raise bad_param("top_logprobs", "is only allowed with logprobs: true")
        return None
    return top or 0


def _prompts(prompt) -> tuple:
    if isinstance(prompt, str):
        return (prompt,)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return tuple(prompt)
        if all(_is_ids(p) for p in prompt):
            return (tuple(prompt),)
        if all(isinstance(p, list) and p and all(_is_ids(q) for q in p) for p in prompt):
            return tuple(tuple(p) for p in prompt)
    raise bad_param("prompt", "must be a string, an array of strings, an array of token ids or an array of "
                              "token-id arrays, and not empty")


def _is_ids(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_chat(body: dict) -> ParsedRequest:
    """A ``/v1/chat/completions`` body. Message content is a string or an array of text parts."""
    logprobs = _chat_logprobs(body)
    tool_use = parse_tool_use(body)
    common = _common(body)
    field_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    if body.get(field_name) is None:
        sampling = _sampling(body, None, 0)
    else:
        sampling = _sampling(body, field_name, 0)
    sampling = replace(sampling, logprobs=logprobs, prompt_logprobs=_logprob_count(body, "prompt_logprobs"))
    messages = _get(body, "messages", list)
    if not messages:
        raise bad_param("messages", "is required: a non-empty array of {role, content}", "missing_required_parameter")
    schema = tool_use.call_schema()
    if schema is not None:
        if sampling.structured_output is not None:
            raise bad_param("tool_choice", "a required or named tool call cannot be combined with an output constraint")
        sampling = replace(sampling, structured_output=pb.StructuredOutput(json_schema=json.dumps(schema)))
    return ParsedRequest(
        kind="chat", messages=tuple(_message(m, i) for i, m in enumerate(messages)), sampling=sampling,
        add_generation_prompt=_get(body, "add_generation_prompt", bool, True), tool_use=tool_use, **common,
    )


def _message(m, i: int) -> dict:
    if not isinstance(m, dict):
        raise bad_param(f"messages[{i}]", "must be an object with role and content")
    content = m.get("content")
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise unsupported(f"messages[{i}].content[{j}]", "only text parts ({\"type\": \"text\", \"text\": ...})")
            parts.append(part["text"])
        content = "\n".join(parts)
    out = {"role": m.get("role"), "content": content}
    for key in ("name", "tool_call_id"):
        if isinstance(m.get(key), str):
            out[key] = m[key]
    if out["role"] == "assistant" and m.get("tool_calls"):
        if not isinstance(m["tool_calls"], list) or not all(isinstance(c, dict) for c in m["tool_calls"]):
            raise bad_param(f"messages[{i}].tool_calls", "must be an array of tool calls")
        out = template_message({**out, "tool_calls": m["tool_calls"]})
    return out


# ------------------------------------------------------------------ responses

def usage_object(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def _envelope(kind: str, rid: str, model: str, created: int, choices: list, chunk: bool) -> dict:
    objects = {("completion", False): "text_completion", ("completion", True): "text_completion",
               ("chat", False): "chat.completion", ("chat", True): "chat.completion.chunk"}
    return {"id": rid, "object": objects[kind, chunk], "created": created, "model": model,
            "system_fingerprint": None, "choices": choices}


def final_object(req: ParsedRequest, rid: str, created: int, completes: list[pb.Complete], usage: dict) -> dict:
    """The non-streaming answer: one choice per Complete, in index order."""
    choices = []
    for i, c in enumerate(completes):
        if req.kind == "chat":
            calls = parse_calls(c.text) if req.tool_use.parses_calls else None
            message = {"role": "assistant", "content": None if calls else c.text}
            if calls:
                message["tool_calls"] = calls
            choices.append({"index": i, "message": message, "logprobs": None,
                            "finish_reason": "tool_calls" if calls else FINISH[c.finish_reason]})
        else:
            choices.append({"index": i, "text": c.text, "logprobs": None, "finish_reason": FINISH[c.finish_reason]})
    return {**_envelope(req.kind, rid, req.model, created, choices, False), "usage": usage}


def delta_chunk(req: ParsedRequest, rid: str, created: int, index: int, text: str | None,
                finish_reason: int | None = None, first: bool = False) -> dict:
    """One streamed event for choice ``index``: a text delta, or its end (``finish_reason``)."""
    reason = FINISH[finish_reason] if finish_reason is not None else None
    if req.kind == "chat":
        delta: dict = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
    out = _envelope(req.kind, rid, req.model, created, [choice], True)
    if req.include_usage:
        out["usage"] = None
    return out


def tool_call_chunks(req: ParsedRequest, rid: str, created: int, index: int, calls: list[dict]) -> list[dict]:
    """A choice's tool calls streamed as OpenAI does: each call's id, type and name, then its arguments,
    then the end with ``finish_reason: tool_calls``."""
    out = []
    for k, call in enumerate(calls):
        head = {"index": k, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}
        for part in (head, {"index": k, "function": {"arguments": call["function"]["arguments"]}}):
            chunk = _envelope(req.kind, rid, req.model, created,
                              [{"index": index, "delta": {"tool_calls": [part]}, "logprobs": None, "finish_reason": None}], True)
            out.append({**chunk, "usage": None} if req.include_usage else chunk)
    end = _envelope(req.kind, rid, req.model, created, [{"index": index, "delta": {}, "logprobs": None,
                                                         "finish_reason": "tool_calls"}], True)
    out.append({**end, "usage": None} if req.include_usage else end)
    return out


def usage_chunk(req: ParsedRequest, rid: str, created: int, usage: dict) -> dict:
    return {**_envelope(req.kind, rid, req.model, created, [], True), "usage": usage}


def models_object(models: list[dict]) -> dict:
    """``/v1/models``: every served model (``model_object`` each)."""
    return {"object": "list", "data": list(models)}


def model_object(model_id: str, max_context: int, created: int, generation_defaults: dict | None = None) -> dict:
    """The model; ``generation_defaults``: the sampling values a request that leaves them out gets."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "ttdist", "max_model_len": max_context,
            "generation_defaults": dict(generation_defaults or {})}


def now() -> int:
    return int(time.time())
