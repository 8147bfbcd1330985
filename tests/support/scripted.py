"""The scripted engine's output: its next token depends only on the sequence so far, so every
prompt has one exact continuation, whichever replica serves it and however often it moves."""

from __future__ import annotations

from ttdist.runtime.scripted_engine import next_token

VOCAB = 1000   # the vocabulary the scripted replicas of the suite use


def expected_tokens(prompt: list[int], n: int, vocab: int = VOCAB) -> list[int]:
    """The ``n`` tokens a scripted engine of vocabulary ``vocab`` generates after ``prompt``."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(next_token(seq, vocab))
    return seq[len(prompt):]
