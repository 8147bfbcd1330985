"""Tool calls in chat completions: ``tools`` / ``tool_choice`` checked, the output parsed.

The tools go to the model's chat template (``tools``), as transformers' ``apply_chat_template``
passes them. The model answers a call in Llama 3.x's JSON tool-call format: an optional
``<|python_tag|>``, then ``{"name": ..., "parameters": {...}}`` (``arguments`` is read too), several
calls separated by ``;``. ``tool_choice``: ``none`` (no tools rendered, nothing parsed), ``auto``
(the default with tools: an answer in that format becomes ``tool_calls``, anything else stays
content), ``required`` or a named function: the output is held to the call format by a JSON
schema (one call of any tool, or of the named one) and is always a tool call; a function's
parameters take no properties beyond those declared unless its schema says otherwise.

Assistant messages with ``tool_calls`` render with their calls' arguments as objects (what
Llama 3.x templates read) and, when they have no content, the calls in the format above as
content, so a template that knows nothing of tools still shows the model its own call.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from ttdist.router.openai.errors import bad_param

PYTHON_TAG = "<|python_tag|>"


@dataclass(frozen=True)
class ToolUse:
    """A chat request's tools: the OpenAI ``tools`` list as sent, and the choice."""

    tools: tuple = ()
    choice: str = "none"          # none, auto, required, or "function:<name>"

    @property
    def parses_calls(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    @property
    def forced(self) -> bool:
        return bool(self.tools) and (self.choice == "required" or self.choice.startswith("function:"))

    def template_tools(self) -> list | None:
        return list(self.tools) if self.parses_calls else None

    def call_schema(self) -> dict | None:
        """The JSON schema a forced choice holds the output to: one call of an allowed tool."""
        if not self.forced:
            return None
        names = [self.choice.removeprefix("function:")] if self.choice.startswith("function:") else None
        calls = [_call_schema(t["function"]) for t in self.tools if names is None or t["function"]["name"] in names]
        return calls[0] if len(calls) == 1 else {"anyOf": calls}


def _call_schema(function: dict) -> dict:
    parameters = dict(function.get("parameters") or {"type": "object", "properties": {}})
    parameters.setdefault("additionalProperties", False)   # the declared parameters only, as OpenAI's strict mode
    return {"type": "object", "properties": {"name": {"const": function["name"]}, "parameters": parameters},
            "required": ["name", "parameters"], "additionalProperties": False}


def parse_tool_use(body: dict) -> ToolUse:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise bad_param("tool_choice", "names a tool, but the request has no tools")
        return ToolUse()
    if not isinstance(tools, list):
        raise bad_param("tools", "must be an array of {type: function, function: {name, parameters}}")
    names = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise bad_param(f"tools[{i}]", "must be {\"type\": \"function\", \"function\": {name, parameters}}")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise bad_param(f"tools[{i}].function.name", "is required: a non-empty string")
        if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
            raise bad_param(f"tools[{i}].function.parameters", "must be a JSON schema object")
        names.append(function["name"])
    return ToolUse(tuple(tools), _choice(choice, names))


def _choice(choice, names: list[str]) -> str:
    if choice is None:
        return "auto"
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if choice.get("type") == "function" and isinstance(name, str):
            if name not in names:
                raise bad_param("tool_choice", f"names the function {name!r}, which is not among the tools "
                                               f"({', '.join(names)})")
            return f"function:{name}"
    raise bad_param("tool_choice", "must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}")


def template_message(message: dict) -> dict:
    """An assistant message's ``tool_calls`` as chat templates read them (arguments as objects)."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    out = dict(message)
    rendered = []
    for call in calls:
        function = dict(call.get("function") or {})
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                function["arguments"] = json.loads(arguments)
            except ValueError:
                pass
        rendered.append({**call, "function": function})
    out["tool_calls"] = rendered
    if not out.get("content"):
        out["content"] = "; ".join(json.dumps({"name": c["function"].get("name"), "parameters": c["function"].get("arguments", {})})
                                   for c in rendered)
    return out


def parse_calls(text: str) -> list[dict] | None:
    """The calls in ``text`` (Llama 3.x JSON format), or None when it is not one."""
    body = text.strip()
    if body.startswith(PYTHON_TAG):
        body = body[len(PYTHON_TAG):].lstrip()
    if not body.startswith("{"):
        return None
    decoder = json.JSONDecoder()
    calls, at = [], 0
    while at < len(body):
        try:
            obj, end = decoder.raw_decode(body, at)
        except ValueError:
            return None
        arguments = obj.get("parameters", obj.get("arguments")) if isinstance(obj, dict) else None
        if not isinstance(obj.get("name") if isinstance(obj, dict) else None, str) or not isinstance(arguments, dict):
            return None
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": obj["name"], "arguments": json.dumps(arguments, ensure_ascii=False)}})
        at = end
        while at < len(body) and body[at] in " \t\r\n;":
            at += 1
    return calls or None


def might_be_call(text: str) -> bool:
    """Whether streamed text so far may still turn out to be a tool call (held back until it is known)."""
    body = text.lstrip()
    return not body or body.startswith("{") or PYTHON_TAG.startswith(body[:len(PYTHON_TAG)]) or body.startswith(PYTHON_TAG)
