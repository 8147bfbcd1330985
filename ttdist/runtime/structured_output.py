"""A request's ``StructuredOutput`` from the proto to the engine (``request_checks`` checks its form).

``to_engine`` gives the engine's ``StructuredOutput``; ``compile_off_loop`` compiles it in a worker thread, so a grammar
that does not compile is refused before the request is queued and the engine's own compile is
a cache hit (compiling never holds up the event loop or the engine's step loop).
"""

from __future__ import annotations

import asyncio
import json

from ttdist.engine.grammar import GrammarKind, StructuredOutput, grammar_compiler
from ttdist.engine.tokenizer import Tokenizer
from ttdist.v1 import generation_pb2 as pb


def to_engine(s: pb.SamplingParams) -> StructuredOutput | None:
    if not s.HasField("structured_output"):
        return None
    spec = s.structured_output
    kind = spec.WhichOneof("kind")
    if kind == "json_object":
        return StructuredOutput(GrammarKind.JSON_OBJECT)
    if kind == "choice":
        return StructuredOutput(GrammarKind.CHOICE, json.dumps(list(spec.choice.options)))
    return StructuredOutput(GrammarKind(kind), getattr(spec, kind))


async def compile_off_loop(spec: StructuredOutput | None, tokenizer: Tokenizer | None) -> None:
    """Compile ``spec`` in a worker thread (raises the engine's ``InvalidRequestError`` when it does not)."""
    if spec is None or tokenizer is None:
        return
    await asyncio.to_thread(grammar_compiler(tokenizer).compile, spec)
