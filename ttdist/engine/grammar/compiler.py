"""Grammars compiled against a tokenizer, and each request's matcher state.

``GrammarCompiler`` turns a ``StructuredOutput`` into an llguidance matcher for one tokenizer
(the tokenizer's llguidance form is built once, on first use, ~0.3 s for a 49k vocabulary).
Compiled matchers are cached by their constraint, so a request's compile is a copy when the
same schema was seen before; ``compile`` may run in any thread (llguidance drops the GIL while
it builds a grammar) and is what callers run off their event loop to check a request.

``GrammarState`` is one request's matcher: ``mask_into`` writes the allowed next tokens as a
bitmask row (bit ``t % 32`` of word ``t // 32``: token ``t`` may follow), ``advance`` consumes a
sampled token. EOS is allowed only where the grammar accepts; once it is complete, only EOS.
"""

from __future__ import annotations

import collections
import threading
import weakref

import llguidance
import numpy as np
from llguidance.numpy import fill_next_token_bitmask

from ttdist.engine.errors import InvalidRequestError
from ttdist.engine.grammar.spec import GrammarSyntaxError, StructuredOutput
from ttdist.engine.tokenizer import Tokenizer

FIELD = "sampling.structured_output"
CACHE_SIZE = 256


class GrammarState:
    """One request's position in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_words: int) -> None:
        self._matcher = matcher
        self._buffer = np.zeros((1, vocab_words), dtype=np.int32)

    def mask_into(self, row: np.ndarray, vocab_size: int) -> None:
        """Write the allowed next tokens into ``row`` (``ceil(vocab_size / 32)`` int32 words): ids the
        tokenizer lacks, and ids from ``vocab_size`` on, are never allowed."""
        fill_next_token_bitmask(self._matcher, self._buffer)
        n = min(row.shape[-1], self._buffer.shape[-1])
        row[:n] = self._buffer[0, :n]
        row[n:] = 0
        if vocab_size % 32 and vocab_size // 32 < row.shape[-1]:
            row[vocab_size // 32] &= np.int32((1 << (vocab_size % 32)) - 1)

    def advance(self, token: int) -> None:
        """Consume a sampled token; ``ValueError`` when the grammar does not allow it. Once the grammar
        is complete there is nothing left to consume (an ``ignore_eos`` request draws EOS until its end)."""
        if self._matcher.is_stopped():
            return
        if not self._matcher.consume_token(int(token)):
            raise ValueError(f"token {token} does not follow the request's grammar: {self._matcher.get_error()}")

    def accepting(self) -> bool:
        return self._matcher.is_accepting()

    def stopped(self) -> bool:
        """The grammar is complete: only EOS may follow."""
        return self._matcher.is_stopped()


class GrammarCompiler:
    """Compiles constraints for one tokenizer; thread-safe."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ll: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[tuple, llguidance.LLMatcher] = collections.OrderedDict()

    def _lltokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._ll is None:
                eos = list(self._tokenizer.eos_token_ids) or None
                self._ll = llguidance.LLTokenizer(self._tokenizer.to_json(), eos_token=eos)
            return self._ll

    def compile(self, spec: StructuredOutput) -> llguidance.LLMatcher:
        """The compiled matcher of ``spec`` (from the cache when seen before); raises
        ``InvalidRequestError`` naming the problem when it does not compile."""
        key = spec.key()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        tokenizer = self._lltokenizer()
        try:
            grammar = spec.to_llguidance()
        except (GrammarSyntaxError, ValueError) as err:
            raise InvalidRequestError(FIELD, f"{spec.kind.value}: {err}") from None
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(FIELD, f"{spec.kind.value} does not compile: {matcher.get_error().strip()}")
        with self._lock:
            self._cache[key] = matcher
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return matcher

    def start(self, spec: StructuredOutput) -> GrammarState:
        """A fresh state at the start of ``spec``'s grammar."""
        matcher = self.compile(spec).deep_copy()
        return GrammarState(matcher, -(-self._lltokenizer().vocab_size // 32))


_COMPILERS: "weakref.WeakKeyDictionary[Tokenizer, GrammarCompiler]" = weakref.WeakKeyDictionary()
_COMPILERS_LOCK = threading.Lock()


def grammar_compiler(tokenizer: Tokenizer) -> GrammarCompiler:
    """The one compiler of ``tokenizer`` (so a check off the event loop fills the cache the engine reads)."""
    with _COMPILERS_LOCK:
        compiler = _COMPILERS.get(tokenizer)
        if compiler is None:
            compiler = _COMPILERS[tokenizer] = GrammarCompiler(tokenizer)
        return compiler
