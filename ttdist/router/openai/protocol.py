"""OpenAI request bodies checked field by field, and the response objects built from results.

``parse_completion`` and ``parse_chat`` turn a JSON body into a ``ParsedRequest`` (or raise
``ApiError`` naming the bad field); the ``*_object`` / ``*_chunk`` functions build the JSON
the OpenAI API returns. Fields the replicas cannot honour are refused with a 400 that says
so (``logprobs``: replicas sample on the mesh and return only token ids; penalties, logit
bias, ``echo``, ``suffix``). Structured outputs (``ttdist.router.openai.structured``) and tool
calls (``ttdist.router.openai.tools``) are parsed in their own modules. vLLM's extensions ``top_k``, ``ignore_eos`` and
``stop_token_ids`` are accepted, so benchmark clients that send them work.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace

from ttdist.router.openai.errors import bad_param, unsupported
from ttdist.router.openai.structured import parse_structured_output
from ttdist.router.openai.tools import ToolUse, parse_calls, parse_tool_use, template_message
from ttdist.v1 import generation_pb2 as pb

MAX_N = 64
MAX_SEED = 2**63
COMPLETIONS_DEFAULT_MAX_TOKENS = 16      # OpenAI's default for /v1/completions
FINISH = {pb.STOP: "stop", pb.EOS: "stop", pb.LENGTH: "length", pb.ABORT: "abort"}
NO_LOGPROBS = "replicas sample on the mesh and return only token ids, never logits"


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 0                  # 0 = the server's default
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    structured_output: pb.StructuredOutput | None = None   # the output's grammar (None: free text)

    def to_proto(self, choice: int) -> pb.SamplingParams:
        """Choice ``i`` of ``n`` draws from seed + i, so seeded choices differ and repeat."""
        s = pb.SamplingParams(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, max_tokens=self.max_tokens,
            stop=self.stop, stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos,
        )
        if self.seed is not None:
            s.seed = (self.seed + choice) % MAX_SEED
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
    if not math.isfinite(value) or not lo <= value <= hi:
        raise bad_param(name, f"must be between {lo} and {hi}, got {value}")
    return float(value)


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
    return Sampling(
        max_tokens=max_tokens, temperature=_number(body, "temperature", 0, 2, 1.0),
        top_p=_number(body, "top_p", 0, 1, 1.0), top_k=max(0, _count(body, "top_k", -1, 2**31 - 1, 0)),
        seed=seed, stop=tuple(stop), stop_token_ids=tuple(stop_ids),
        ignore_eos=_get(body, "ignore_eos", bool, False), structured_output=parse_structured_output(body),
    )


def _common(body: dict) -> dict:
    for name in ("presence_penalty", "frequency_penalty"):
        if _get(body, name, (int, float), 0) != 0:
            raise unsupported(name, "the engine samples without penalties")
    if _get(body, "logit_bias", dict, {}):
        raise unsupported("logit_bias", "the engine samples without logit biases")
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
    if _get(body, "logprobs", int) is not None:
        raise unsupported("logprobs", NO_LOGPROBS)
    if _get(body, "echo", bool, False):
        raise unsupported("echo", "completions return only the generated text")
    if _get(body, "suffix", str):
        raise unsupported("suffix", "the served models have no fill-in-the-middle mode")
    common = _common(body)
    sampling = _sampling(body, "max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
    return ParsedRequest(kind="completion", prompts=_prompts(body["prompt"]), sampling=sampling, **common)


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
    if _get(body, "logprobs", bool, False) or _get(body, "top_logprobs", int) is not None:
        raise unsupported("logprobs", NO_LOGPROBS)
    tool_use = parse_tool_use(body)
    common = _common(body)
    field_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    if body.get(field_name) is None:
        sampling = _sampling(body, None, 0)
    else:
        sampling = _sampling(body, field_name, 0)
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


def models_object(model_id: str, max_context: int, created: int) -> dict:
    return {"object": "list", "data": [model_object(model_id, max_context, created)]}


def model_object(model_id: str, max_context: int, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "ttdist", "max_model_len": max_context}


def now() -> int:
    return int(time.time())
