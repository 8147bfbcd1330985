"""vLLM's ``bad_words``: words the output may not contain, banned token by token.

Each word becomes up to two token sequences, as vLLM builds them: the word as written (leading
spaces stripped) and with one leading space, the second kept only when it is a different first
token of the same length (a tokenizer that marks word starts gives both spellings). At every step
the last token of a sequence is banned when the tokens generated just before it equal the rest
(a one-token sequence is always banned). Only generated tokens count, as in vLLM. The ban is
the grammar-mask path's: the step's allowed-token bitmask (``SamplingSpec.allowed``) with the
banned ids cleared, so each chip masks its vocab slice before sampling; a step where nothing is
banned and no grammar applies uploads no mask.
"""

from __future__ import annotations

import numpy as np

from ttdist.engine.errors import InvalidRequestError

FIELD = "sampling.bad_words"
MAX_BAD_WORDS = 128
MAX_WORD_CHARS = 256


def bad_word_ids(words, tokenizer, vocab_size: int) -> tuple[tuple[int, ...], ...]:
    """The token sequences of ``words`` (InvalidRequestError naming the field for bad input)."""
    if not words:
        return ()
    if tokenizer is None:
        raise InvalidRequestError(FIELD, "bad words need a tokenizer, and this engine has none")
    if isinstance(words, str) or len(words) > MAX_BAD_WORDS:
        raise InvalidRequestError(FIELD, f"must be a list of at most {MAX_BAD_WORDS} strings")
    out: list[tuple[int, ...]] = []
    for word in words:
        if not isinstance(word, str) or not word.strip() or len(word) > MAX_WORD_CHARS:
            raise InvalidRequestError(FIELD, f"each word must be a non-blank string of at most {MAX_WORD_CHARS} "
                                             f"characters, got {word!r}")
        plain = tuple(tokenizer.encode(word.lstrip(), add_special_tokens=False))
        spaced = tuple(tokenizer.encode(" " + word.lstrip(), add_special_tokens=False))
        out.append(plain)
        if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
            out.append(spaced)
    for ids in out:
        if any(not 0 <= t < vocab_size for t in ids):
            raise InvalidRequestError(FIELD, f"a word encodes to ids outside the vocabulary [0, {vocab_size})")
    return tuple(dict.fromkeys(out))


def banned_next(sequences: tuple[tuple[int, ...], ...], output: list[int]) -> list[int]:
    """The ids the next token may not be, given the tokens generated so far."""
    banned = []
    for ids in sequences:
        n = len(ids) - 1
        if n == 0 or (len(output) >= n and tuple(output[-n:]) == ids[:-1]):
            banned.append(ids[-1])
    return banned


def all_allowed(vocab_size: int) -> np.ndarray:
    """Bitmask words (llguidance's layout) allowing every id below ``vocab_size``."""
    words = np.full(-(-vocab_size // 32), -1, dtype=np.int32)
    if vocab_size % 32:
        words[-1] = np.int32((1 << (vocab_size % 32)) - 1)
    return words


def ban(words: np.ndarray, ids: list[int]) -> None:
    """Clear the bits of ``ids`` in bitmask ``words`` in place."""
    view = words.view(np.uint32)
    for t in ids:
        view[t // 32] &= np.uint32(~(1 << (t % 32)) & 0xFFFFFFFF)
