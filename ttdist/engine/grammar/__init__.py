"""Structured outputs: a request's grammar (JSON schema, regex, choice, Lark) compiled with
llguidance, and the per-step token bitmask that keeps sampling inside it (plain numpy, no torch)."""

from ttdist.engine.grammar.compiler import GrammarCompiler, GrammarState, grammar_compiler
from ttdist.engine.grammar.spec import GrammarKind, StructuredOutput

__all__ = ["GrammarCompiler", "GrammarKind", "GrammarState", "StructuredOutput", "grammar_compiler"]
