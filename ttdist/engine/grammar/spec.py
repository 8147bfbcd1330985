"""What a request constrains its output to, and the llguidance grammar that says it.

``StructuredOutput(kind, value)``: ``json_schema`` (a JSON schema, as text), ``json_object``
(any JSON object; ``value`` empty), ``regex``, ``choice`` (a JSON array of strings: the output is
exactly one of them) or ``grammar`` (a Lark grammar, llguidance's dialect). JSON is generated
compact (no whitespace between tokens, as ``json.dumps(..., separators=(",", ":"))`` writes it):
the grammar then ends with the value's last character, so once the value is complete only an EOS
token is allowed and the output always terminates (given bounded strings and a ``max_tokens``).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

import llguidance

JSON_OPTIONS = {"whitespace_flexible": False}


class GrammarKind(enum.Enum):
    JSON_SCHEMA = "json_schema"
    JSON_OBJECT = "json_object"
    REGEX = "regex"
    CHOICE = "choice"
    GRAMMAR = "grammar"


class GrammarSyntaxError(ValueError):
    """A constraint that cannot become a grammar; the message says why."""


@dataclass(frozen=True)
class StructuredOutput:
    kind: GrammarKind
    value: str = ""

    def key(self) -> tuple[str, str]:
        return self.kind.value, self.value

    def to_llguidance(self) -> str:
        """The llguidance grammar (raises ``GrammarSyntaxError`` for text that is not its kind;
        whether the grammar compiles is checked by ``GrammarCompiler``)."""
        kind = self.kind
        if kind is GrammarKind.JSON_OBJECT:
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, overrides=JSON_OPTIONS)
        if kind is GrammarKind.JSON_SCHEMA:
            schema = _json(self.value, "a JSON schema")
            if not isinstance(schema, (dict, bool)):
                raise GrammarSyntaxError(f"a JSON schema must be an object, got {type(schema).__name__}")
            return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
        if kind is GrammarKind.REGEX:
            return llguidance.LLMatcher.grammar_from_regex(self.value)
        if kind is GrammarKind.CHOICE:
            choices = _json(self.value, "a JSON array of strings")
            if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
                raise GrammarSyntaxError("choices must be a non-empty array of non-empty strings")
            return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))
        return llguidance.LLMatcher.grammar_from_lark(self.value)


def _json(text: str, what: str):
    try:
        return json.loads(text)
    except ValueError as err:
        raise GrammarSyntaxError(f"not {what}: {err}") from None
