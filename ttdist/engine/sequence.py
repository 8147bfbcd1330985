"""One request's state inside the engine: its tokens, its pages and where it stands.

``token_ids`` is the prompt followed by every generated id. ``num_computed`` counts the
leading tokens whose K/V are in the cache; the last generated token is never computed until
the next decode step writes it. A preempted sequence drops its pages and computed count and is
prefilled again over all its tokens later (recompute).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ttdist.engine.grammar.compiler import GrammarState
from ttdist.engine.request import FinishReason, SamplingParams
from ttdist.engine.runner import PenaltySpec
from ttdist.engine.tokenizer import IncrementalDetokenizer


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    token_ids: list[int]
    sampling: SamplingParams
    max_tokens: int
    arrival_s: float
    detokenizer: IncrementalDetokenizer | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    num_prompt_tokens: int = 0
    num_computed: int = 0
    page_table: list[int] = field(default_factory=list)
    group: int | None = None                # the user group whose pages it holds (None while it holds none)
    block_hashes: list[int] = field(default_factory=list)   # hashes of the full pages in order
    token_hashes: list[int] = field(default_factory=list)   # chained hashes of full pages of token_ids, kept
    # across steps and preemptions (tokens are only ever appended), so a waiting prompt is hashed once
    num_cached_tokens: int | None = None    # prefix-cache hit at first admission
    num_preemptions: int = 0
    output_text: str = ""
    num_text_emitted: int = 0
    finish_reason: FinishReason | None = None
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    restored_s: float | None = None         # when pages restored from a KV tier were written (first admission)
    last_token_s: float | None = None
    prefill_chunks: list[tuple[float, float, int]] | None = None   # (start, end, tokens) on the clock, when traced
    prompt_logprobs: list = field(default_factory=list)   # TokenLogprob of prompt positions 1.. computed so far
    penalties: PenaltySpec | None = None    # the runner's penalties and biases (None: every setting neutral)
    grammar: GrammarState | None = None     # where the output stands in its structured-output grammar
    bad_words: tuple[tuple[int, ...], ...] = ()   # token sequences the output may not end in (``engine.bad_words``)
    restore: Any = None                     # kv_tiers.PendingRestore: prefix pages being read back from a KV tier

    @property
    def recomputes_prefix(self) -> bool:
        """Its prompt logprobs are asked and not all computed: cached prefix pages cannot give them."""
        return self.sampling.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens - 1

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def needs_prefill(self) -> bool:
        """Running with more than one uncomputed token (a prompt, or a recompute after preemption).

        With exactly one uncomputed token the sequence decodes: a decode step computes that token.
        """
        return self.status is SequenceStatus.RUNNING and len(self.token_ids) - self.num_computed > 1

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
