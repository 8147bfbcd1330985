"""Structured-output fields of an OpenAI request, as the proto's ``StructuredOutput``.

OpenAI's ``response_format`` (``text``, ``json_object``, ``json_schema`` with ``json_schema.schema``;
``strict`` is always honoured: the grammar enforces the schema) and vLLM's ``structured_outputs``
(``json``, ``json_object``, ``regex``, ``choice``, ``grammar``) and its older ``guided_json``,
``guided_regex``, ``guided_choice``, ``guided_grammar``. At most one constraint per request; a
form that cannot be a constraint is a 400 naming its field. Whether a grammar compiles is the
replica's check (a 400 naming ``sampling.structured_output`` and the compiler's words).
"""

from __future__ import annotations

import json

from ttdist.router.openai.errors import bad_param
from ttdist.v1 import generation_pb2 as pb

_VLLM_KEYS = {"json": "json_schema", "json_object": "json_object", "regex": "regex", "choice": "choice",
              "grammar": "grammar"}


def parse_structured_output(body: dict) -> pb.StructuredOutput | None:
    """The request's one constraint (None: free text)."""
    found: list[tuple[str, pb.StructuredOutput]] = []
    response_format = body.get("response_format")
    if response_format is not None:
        spec = _response_format(response_format)
        if spec is not None:
            found.append(("response_format", spec))
    outputs = body.get("structured_outputs")
    if outputs is not None:
        if not isinstance(outputs, dict):
            raise bad_param("structured_outputs", "must be an object")
        for key, value in outputs.items():
            if key in _VLLM_KEYS and value is not None and value is not False:
                found.append((f"structured_outputs.{key}", _constraint(f"structured_outputs.{key}", _VLLM_KEYS[key], value)))
    for key in ("guided_json", "guided_regex", "guided_choice", "guided_grammar"):
        value = body.get(key)
        if value is not None:
            kind = {"guided_json": "json_schema", "guided_regex": "regex", "guided_choice": "choice",
                    "guided_grammar": "grammar"}[key]
            found.append((key, _constraint(key, kind, value)))
    if len(found) > 1:
        raise bad_param(found[1][0], f"give one output constraint, not both {found[0][0]} and {found[1][0]}")
    return found[0][1] if found else None


def _response_format(value) -> pb.StructuredOutput | None:
    if not isinstance(value, dict):
        raise bad_param("response_format", "must be an object with a type")
    kind = value.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return pb.StructuredOutput(json_object=True)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise bad_param("response_format.json_schema", "is required: an object with name and schema")
        schema = spec.get("schema", {"type": "object"})
        if not isinstance(schema, (dict, bool)):
            raise bad_param("response_format.json_schema.schema", "must be a JSON schema object")
        return pb.StructuredOutput(json_schema=json.dumps(schema))
    raise bad_param("response_format.type", f"must be text, json_object or json_schema, got {kind!r}")


def _constraint(name: str, kind: str, value) -> pb.StructuredOutput:
    if kind == "json_schema":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as err:
                raise bad_param(name, f"not a JSON schema: {err}") from None
        if not isinstance(value, (dict, bool)):
            raise bad_param(name, "must be a JSON schema object")
        return pb.StructuredOutput(json_schema=json.dumps(value))
    if kind == "json_object":
        return pb.StructuredOutput(json_object=True)
    if kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise bad_param(name, "must be a non-empty array of non-empty strings")
        return pb.StructuredOutput(choice=pb.Choices(options=value))
    if not isinstance(value, str) or not value:
        raise bad_param(name, "must be a non-empty string")
    return pb.StructuredOutput(**{kind: value})
